"""Everything that runs on the instances: user data and the first-boot mechanism, per platform.

Rendered from ``templates/linux/*.sh.j2`` (bash) and ``templates/windows/*.ps1.j2`` (PowerShell for
EC2Launch v2) with :func:`bakery_lib.render.environment`; every catalogue value passes through the
``sh``/``ps`` quoting filters, so it reaches the script as one inert word.

- :func:`bake_userdata` — the bake instance's user data: install the Chef client (Cinc or licensed
  Chef, per catalogue), run the role's ``ami`` run list as node ``bake-ROLE-BAKEID`` (a reboot it asks
  for, exit 35/37, is taken and the bake continues after it), install the first-boot files
  (:func:`instance_files`) and ``firstboot.txt``, remove the instance's Chef identity, leave only a
  short root/admin-only summary log, tag ``bakery:bootstrap=succeeded`` (Linux) or hand over to a
  second, detached phase that tags ``generalizing`` and runs EC2Launch v2 sysprep, which shuts the
  instance down (Windows, :func:`generalize_script`). The user data carries :func:`bake_script`
  gzip+base64 to stay under 16 KiB.
- :func:`launch_userdata` — ``create-instance`` without a baked image: Chef + the ``launch`` run list.
- :func:`firstboot_trigger_userdata` — instances launched from a baked image: the image does the work.
- :func:`boot_test_userdata` — the ``boot-test`` stage's instance: the image's first boot in test mode
  (``# bakery:boot-test`` lines the first-boot script reads through IMDSv2: Chef node, why-run, run list
  and health command, base64), tagging ``bakery:boot-test`` instead of alerting.
- :func:`render_role_scripts` — ``bakery render``: every file above, for review, into ``DIR/ROLE/``.

User data carries no secret (the validator key is fetched from S3 by the instance role) and must
stay under EC2's 16 KiB limit; both are checked here before anything is launched.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .catalog import S3_URL_RE, RoleSpec
from .errors import BakeryError
from .inventory import role_records_prefix

USERDATA_LIMIT = 16 * 1024  # EC2: raw user data, before base64
BAKE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Where each distribution's MSI puts its client on Windows (Linux: /opt/cinc/bin, /opt/chef/bin).
CHEF_WINDOWS_DIRS = {"cinc": "C:\\cinc-project\\cinc\\bin", "chef": "C:\\opscode\\chef\\bin"}
# Ends the quoted heredocs that carry the first-boot files inside the Linux bake user data.
HEREDOC_MARKER = "BAKERY_FILE_END"


@dataclass(frozen=True)
class InstanceFile:
    """A first-boot file: where it goes in the image, its template, its mode and its render name."""

    path: str
    template: str
    mode: int
    name: str


# The first file of each platform is the shared library: the bake user data writes it first and
# sources it, the first-boot script sources it from the image, so its code is in the user data once.
LINUX_FILES = (
    InstanceFile("/usr/local/lib/bakery/bakery-lib.sh", "linux/bakery-lib.sh.j2", 0o644, "bakery-lib.sh"),
    InstanceFile("/usr/local/sbin/bakery-firstboot", "linux/firstboot.sh.j2", 0o755, "firstboot.sh"),
    InstanceFile("/etc/init.d/bakery-firstboot", "linux/bakery-firstboot.init.j2", 0o755, "bakery-firstboot.init"),
    InstanceFile("/etc/systemd/system/bakery-firstboot.service", "linux/bakery-firstboot.service.j2", 0o644,
                 "bakery-firstboot.service"),
)
WINDOWS_FILES = (
    InstanceFile("C:\\ProgramData\\bakery\\bakery-lib.ps1", "windows/bakery-lib.ps1.j2", 0o644, "bakery-lib.ps1"),
    InstanceFile("C:\\ProgramData\\bakery\\firstboot.ps1", "windows/firstboot.ps1.j2", 0o644, "firstboot.ps1"),
    InstanceFile("C:\\ProgramData\\bakery\\register-firstboot-task.ps1", "windows/register-firstboot-task.ps1.j2",
                 0o644, "register-firstboot-task.ps1"),
)


# The Chef node (= client) a boot test registers: reap's ``bake-ROLE-BAKEID`` shape (the "role" part
# being ``ROLE-boot-test``), so an orphan left by a killed run is found like a bake's.
BOOT_TEST_NODE_INFIX = "boot-test"
CHEF_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


def boot_test_node_name(role: str, bake_id: str) -> str:
    """The boot test's Chef node (and client) name: ``bake-ROLE-boot-test-BAKEID``."""
    return node_name(f"{role}-{BOOT_TEST_NODE_INFIX}", bake_id)


def node_name(role: str, bake_id: str) -> str:
    """The bake's Chef node (and client) name: ``bake-ROLE-BAKEID``."""
    if not BAKE_ID_RE.match(bake_id):
        raise BakeryError(f"invalid bake id {bake_id!r}: expected {BAKE_ID_RE.pattern}")
    return f"bake-{role}-{bake_id}"


def _platform_files(role: RoleSpec) -> tuple[InstanceFile, ...]:
    if role.platform == "linux":
        return LINUX_FILES
    if role.platform == "windows":
        return WINDOWS_FILES
    raise BakeryError(f"role {role.name!r}: unknown platform {role.platform!r} (linux or windows)")


def _split_s3(url: str) -> tuple[str, str]:
    m = S3_URL_RE.match(url)
    if not m:
        raise BakeryError(f"{url!r} is not an s3://BUCKET/KEY URL")
    return m.group(1), m.group(2)


def _context(role: RoleSpec, **extra: Any) -> dict[str, Any]:
    """What every template sees (plus ``extra``); values are quoted in the templates, never here."""
    _platform_files(role)
    validator_bucket, validator_key = _split_s3(role.chef.validation_key_s3)
    return {
        "role": role,
        "runlist_s3": f"s3://{role.runlist_bucket}/{role.runlist_key}",
        "runlist_key": role.runlist_key,
        # SNS must be called in the topic's region, which need not be the instance's.
        "alert_region": role.alert_topic_arn.split(":")[3],
        "validator_bucket": validator_bucket,
        "validator_key": validator_key,
        "run_list_ami": ",".join(role.run_list_ami),
        "run_list_launch_doc": {"run_list": list(role.run_list_launch)},
        "chef_windows_dir": CHEF_WINDOWS_DIRS[role.chef.distribution],
        "records_prefix": role_records_prefix(role.name),
        **extra,
    }


def _render(template: str, context: dict[str, Any]) -> str:
    # Jinja2 where a script is rendered, not with this module: the publish stage and a teardown use its
    # names and run-list document only, and a `bakery stage` process pays for each import.
    from .render import environment

    return environment().get_template(template).render(**context)


def _checked(role: RoleSpec, what: str, text: str) -> str:
    """Refuse user data EC2 would refuse, or that would carry key material."""
    size = len(text.encode("utf-8"))
    if size >= USERDATA_LIMIT:
        raise BakeryError(
            f"role {role.name!r}: the {what} user data is {size} bytes; EC2 accepts at most {USERDATA_LIMIT} "
            "(shorten the role's run lists)"
        )
    if "PRIVATE KEY" in text:
        raise BakeryError(f"role {role.name!r}: the {what} user data would contain key material")
    return text


def _wrap_powershell(script: str) -> str:
    # EC2Launch v2 runs a <powershell> block attached (it waits for the script; <detach>true</detach>
    # would detach the whole user data), once; on exit 3010 it reboots and runs the script again.
    if "</powershell>" in script.lower():
        raise BakeryError("a PowerShell user data script must not contain '</powershell>'")
    return f"<powershell>\n{script.rstrip()}\n</powershell>\n"


def instance_files(role: RoleSpec) -> dict[str, str]:
    """Path in the image -> content of the role's first-boot files (what the bake installs)."""
    context = _context(role)
    return {f.path: _render(f.template, context) for f in _platform_files(role)}


def _embedded_files(role: RoleSpec) -> list[dict[str, Any]]:
    files = []
    for f in _platform_files(role):
        content = _render(f.template, _context(role))
        if not content.endswith("\n"):
            content += "\n"
        lines = content.splitlines()
        # A line that ends the heredoc / here-string early would turn file content into script.
        if role.platform == "linux" and HEREDOC_MARKER in lines:
            raise BakeryError(f"{f.template}: a line equals the heredoc marker {HEREDOC_MARKER}")
        if role.platform == "windows" and any(line.lstrip().startswith("'@") for line in lines):
            raise BakeryError(f"{f.template}: a line starts with '@ and would end the here-string")
        files.append({"path": f.path, "mode": f"{f.mode:o}", "content": content, "name": f.name})
    return files


def _packed(content: str) -> str:
    """gzip + base64 in 76-column lines, byte-for-byte reproducible (no name, no time in the header).

    The Linux bake user data carries its bake script this way: plain, the script and the image's files
    it installs no longer fit in EC2's 16 KiB (``bakery render`` writes it out plain for review)."""
    raw = gzip.compress(content.encode("utf-8"), compresslevel=9, mtime=0)
    text = base64.b64encode(raw).decode("ascii")
    return "\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + "\n"


def _image_info(role: RoleSpec, bake_id: str, release: str, node: str) -> dict[str, Any]:
    return {
        "role": role.name,
        "release": release,
        "bake_id": bake_id,
        "chef_node": node,
        "bakery_version": __version__,
    }


def bake_userdata(role: RoleSpec, *, bake_id: str, release: str) -> str:
    """User data of the bake instance: a bash script, or a ``<powershell>`` block for EC2Launch v2,
    that unpacks :func:`bake_script` (gzip+base64, to stay under EC2's 16 KiB) and runs it."""
    node = node_name(role.name, bake_id)
    script = bake_script(role, bake_id=bake_id, release=release)
    if "PRIVATE KEY" in script:  # packed, the check below could not see it
        raise BakeryError(f"role {role.name!r}: the bake user data would contain key material")
    wrapper = {"role": role, "node": node, "marker": HEREDOC_MARKER, "packed": _packed(script)}
    if role.platform == "linux":
        return _checked(role, "bake", _render("linux/userdata-bake.sh.j2", wrapper))
    return _checked(role, "bake", _wrap_powershell(_render("windows/userdata-bake.ps1.j2", wrapper)))


def generalize_script(role: RoleSpec, *, bake_id: str) -> str:
    """Windows: phase 2 of the bake (``generalize.ps1``): tag ``generalizing``, then EC2Launch v2 sysprep."""
    text = _render("windows/generalize.ps1.j2", _context(role, node=node_name(role.name, bake_id)))
    if any(line.lstrip().startswith("'@") for line in text.splitlines()):
        raise BakeryError("windows/generalize.ps1.j2: a line starts with '@ and would end the here-string")
    return text


def bake_script(role: RoleSpec, *, bake_id: str, release: str) -> str:
    """The bake script the user data unpacks and runs, plain (``bake.sh`` / ``bake.ps1``)."""
    node = node_name(role.name, bake_id)
    lib, *files = _embedded_files(role)
    context = _context(
        role, node=node, marker=HEREDOC_MARKER, lib=lib, files=files,
        image_info=_image_info(role, bake_id, release, node), bake_id=bake_id,
    )
    if role.platform == "linux":
        return _render("linux/bake.sh.j2", context)
    context["generalize"] = generalize_script(role, bake_id=bake_id)
    return _render("windows/bake.ps1.j2", context)


def launch_userdata(role: RoleSpec) -> str:
    """User data of ``create-instance`` from the base AMI: Chef with the role's launch run list."""
    context = _context(role)
    if role.platform == "linux":
        return _checked(role, "launch", _render("linux/userdata-launch.sh.j2", context))
    return _checked(role, "launch", _wrap_powershell(_render("windows/userdata-launch.ps1.j2", context)))


def firstboot_trigger_userdata(role: RoleSpec) -> str:
    """User data of an instance launched from a baked AMI: the image's first-boot mechanism does
    the work (it runs while ``firstboot.txt`` exists), so this only says so in the console output."""
    context = _context(role)
    if role.platform == "linux":
        return _checked(role, "first-boot", _render("linux/userdata-from-ami.sh.j2", context))
    return _checked(role, "first-boot", _wrap_powershell(_render("windows/userdata-from-ami.ps1.j2", context)))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def boot_test_userdata(role: RoleSpec, *, node: str) -> str:
    """User data of the boot-test instance: marks the first boot as a test (see the module docstring).

    Only ``# bakery:boot-test...`` comment lines carry settings, base64 where free text goes, so no
    catalogue value is ever shell or PowerShell code here; the image's first-boot script reads them."""
    if not CHEF_NAME_RE.match(node):
        raise BakeryError(f"role {role.name!r}: invalid boot-test Chef node name {node!r}")
    test = role.boot_test
    context = _context(role, node=node, why_run=test.why_run, run_list_b64=_b64(",".join(test.run_list)),
                       command_b64=_b64(test.command or ""))
    if role.platform == "linux":
        return _checked(role, "boot-test", _render("linux/userdata-boot-test.sh.j2", context))
    return _checked(role, "boot-test", _wrap_powershell(_render("windows/userdata-boot-test.ps1.j2", context)))


def render_role_scripts(
    role: RoleSpec, output_dir: Path, *, bake_id: str = "render", release: str = "unreleased"
) -> list[Path]:
    """``bakery render``: write the role's instance-side scripts to ``output_dir/ROLE/``.

    Linux: userdata-bake.sh, userdata-launch.sh, userdata-from-ami.sh, userdata-boot-test.sh (user data), and the image's
    bakery-lib.sh, firstboot.sh, bakery-firstboot.init, bakery-firstboot.service. Windows:
    userdata-bake.ps1, userdata-launch.ps1, userdata-from-ami.ps1, bakery-lib.ps1, firstboot.ps1,
    register-firstboot-task.ps1 (and userdata-boot-test.ps1). Returns the paths written.
    """
    ext = "sh" if role.platform == "linux" else "ps1"
    outputs: list[tuple[str, str, int]] = [
        (f"userdata-bake.{ext}", bake_userdata(role, bake_id=bake_id, release=release), 0o755),
        (f"userdata-launch.{ext}", launch_userdata(role), 0o755),
        (f"userdata-from-ami.{ext}", firstboot_trigger_userdata(role), 0o755),
        (f"userdata-boot-test.{ext}", boot_test_userdata(role, node=boot_test_node_name(role.name, bake_id)), 0o755),
    ]
    context = _context(role)
    outputs.append((f"bake.{ext}", bake_script(role, bake_id=bake_id, release=release), 0o700))
    if role.platform == "windows":
        outputs.append(("generalize.ps1", generalize_script(role, bake_id=bake_id), 0o644))
    outputs += [(f.name, _render(f.template, context), f.mode) for f in _platform_files(role)]
    target = Path(output_dir) / role.name
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text, mode in outputs:
            path = target / name
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(mode)
            tmp.replace(path)
            written.append(path)
    except OSError as exc:
        raise BakeryError(f"cannot write the scripts of role {role.name!r} to {target}: {exc.strerror}") from None
    return written


def runlist_document(run_list: tuple[str, ...]) -> bytes:
    """The role's first-boot run list as the instance reads it from S3 (publish writes it, the boot test too)."""
    return (json.dumps({"run_list": list(run_list)}, indent=2) + "\n").encode()
