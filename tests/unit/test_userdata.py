"""Rendering of the instance-side scripts: every file for a Linux and a Windows role, checked for real.

Bash goes through ``shellcheck`` (zero findings), PowerShell through tree-sitter-powershell (no error
or missing node), catalogue values through the quoting filters with hostile strings that are then
executed (or parsed) to prove they stay inert. Execution against AWS doubles is in
``test_firstboot_linux.py``.
"""

from __future__ import annotations

import base64
import configparser
import copy
import gzip
import hashlib
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_powershell

from bakery_lib.catalog import RoleSpec, parse_catalog
from bakery_lib.errors import BakeryError, CatalogError
from bakery_lib.render import environment
from bakery_lib.userdata import (
    USERDATA_LIMIT,
    bake_script,
    bake_userdata,
    firstboot_trigger_userdata,
    generalize_script,
    instance_files,
    launch_userdata,
    node_name,
    render_role_scripts,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "support" / "scripts"
BAKE_ID = "20260101000000-abc123"

CATALOGUE: dict[str, Any] = {
    "defaults": {
        "region": "us-east-1",
        "runlist_bucket": "acme-bakery",
        "alert_topic_arn": "arn:aws:sns:eu-west-1:123456789012:bakery-alerts",
        "chef": {
            "server_url": "https://chef.example.com/organizations/acme",
            "validation_client_name": "acme-validator",
            "validation_key_s3": "s3://acme-bakery/chef/validator.pem",
        },
    },
    "roles": {
        "web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"},
        "reporting": {"platform": "windows", "base_ami": "ami-0123456789abcdef1",
                      "run_lists": {"ami": ["role[reporting_ami]", "recipe[iis::install]"]}},
    },
}

LINUX_FILES = ["userdata-bake.sh", "userdata-launch.sh", "userdata-from-ami.sh", "userdata-boot-test.sh", "bake.sh",
               "bakery-lib.sh",
               "firstboot.sh", "bakery-firstboot.init", "bakery-firstboot.service"]
WINDOWS_FILES = ["userdata-bake.ps1", "userdata-launch.ps1", "userdata-from-ami.ps1", "userdata-boot-test.ps1",
                 "bake.ps1", "generalize.ps1",
                 "bakery-lib.ps1",
                 "firstboot.ps1", "register-firstboot-task.ps1"]

# Metacharacters of both shells, quotes of both (typographic too), expansions, newlines.
HOSTILE = [
    "plain words with spaces",
    "it's \"quoted\" ‘typographic’ ’ ‚ ‛",
    "$(touch {marker})",
    "`touch {marker}`",
    "${{IFS}}; touch {marker}",
    "a\ntouch {marker}\n",
    "x'; touch {marker}; echo '",
    "x'; New-Item {marker}; '",
    "$env:PATH @(1) $(New-Item {marker}) `$x",
    "\\'\\\\'; touch {marker} #",
]


def role(name: str, data: dict[str, Any] | None = None) -> RoleSpec:
    return parse_catalog(data or CATALOGUE, "test.yaml").roles[name]


def unpacked(userdata: str) -> str:
    """The bake script inside a bake user data (the gzip+base64 blob), as the instance unpacks it."""
    if userdata.startswith("#!"):
        blob = userdata.split("<<'BAKERY_FILE_END'", 1)[1].split("\n", 1)[1].split("BAKERY_FILE_END", 1)[0]
    else:
        blob = userdata.split("$Packed = '", 1)[1].split("'", 1)[0]
    return gzip.decompress(base64.b64decode("".join(blob.split()))).decode("utf-8")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("render")
    for name in ("web", "reporting"):
        render_role_scripts(role(name), out, bake_id=BAKE_ID, release="3.1.0")
    return out


# --- the files ------------------------------------------------------------------------------------------


def test_render_writes_every_file_of_each_platform(tmp_path):
    linux = render_role_scripts(role("web"), tmp_path)
    windows = render_role_scripts(role("reporting"), tmp_path)

    assert sorted(p.name for p in linux) == sorted(LINUX_FILES)
    assert sorted(p.name for p in windows) == sorted(WINDOWS_FILES)
    assert all(p.parent == tmp_path / "web" for p in linux)
    assert all(p.parent == tmp_path / "reporting" for p in windows)
    for p in linux:
        executable = p.suffix in (".sh", ".init") and p.name != "bakery-lib.sh"
        assert bool(p.stat().st_mode & stat.S_IXUSR) == executable, p
    assert not list(tmp_path.rglob("*.tmp"))
    # The default bake id of `bakery render` makes a readable node name.
    assert "bake-web-render" in (tmp_path / "web" / "userdata-bake.sh").read_text()


def test_render_into_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BakeryError, match="cannot write the scripts of role 'web'"):
        render_role_scripts(role("web"), blocker)


def test_instance_files_are_what_the_bake_carries():
    linux = instance_files(role("web"))
    assert sorted(linux) == ["/etc/init.d/bakery-firstboot", "/etc/systemd/system/bakery-firstboot.service",
                             "/usr/local/lib/bakery/bakery-lib.sh", "/usr/local/sbin/bakery-firstboot"]
    windows = instance_files(role("reporting"))
    assert sorted(windows) == ["C:\\ProgramData\\bakery\\bakery-lib.ps1", "C:\\ProgramData\\bakery\\firstboot.ps1",
                               "C:\\ProgramData\\bakery\\register-firstboot-task.ps1"]
    for r, files in ((role("web"), linux), (role("reporting"), windows)):
        script = bake_script(r, bake_id=BAKE_ID, release="1")
        for path, content in files.items():
            assert content.rstrip("\n") in script, path
        # ...which the user data carries packed: unpacking gives that script back, byte for byte.
        assert unpacked(bake_userdata(r, bake_id=BAKE_ID, release="1")) == script


def test_shellcheck_finds_nothing(rendered):
    files = [rendered / "web" / n for n in LINUX_FILES if not n.endswith(".service")]
    files += [SCRIPTS / "chef-client", SCRIPTS / "install-chef.sh"]
    # -x follows `source` directives into bakery-lib.sh, from the directory of the rendered files.
    proc = subprocess.run(["shellcheck", "-s", "bash", "-x", "-f", "gcc", *map(str, files)],
                          cwd=rendered / "web", capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_shellcheck_would_catch_a_bad_script(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $DIR/*\n")
    proc = subprocess.run(["shellcheck", "-s", "bash", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "SC2086" in proc.stdout


def test_systemd_unit_and_init_headers(rendered):
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((rendered / "web" / "bakery-firstboot.service").read_text())
    assert unit["Unit"]["After"].split()[0] == "network-online.target"
    assert unit["Unit"]["Wants"] == "network-online.target"
    assert unit["Unit"]["ConditionPathExists"] == "/firstboot.txt"
    assert dict(unit["Service"]) | {"TimeoutStartSec": "-"} == {
        "Type": "oneshot", "ExecStart": "/usr/local/sbin/bakery-firstboot", "RemainAfterExit": "no",
        "TimeoutStartSec": "-", "StandardOutput": "journal+console"}
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    init = (rendered / "web" / "bakery-firstboot.init").read_text()
    assert init.startswith("#!/bin/bash\n")
    assert "# chkconfig: 2345 99 01" in init
    header = init[init.index("### BEGIN INIT INFO"):init.index("### END INIT INFO")]
    for field in ("Provides:          bakery-firstboot", "Required-Start:    $network", "Default-Start:     2 3 4 5"):
        assert field in header


# --- PowerShell -------------------------------------------------------------------------------------------

_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def ps_problems(source: str) -> list[str]:
    tree = _PARSER.parse(source.encode("utf-8"))
    problems: list[str] = []

    def walk(node: tree_sitter.Node) -> None:
        if node.is_error or node.is_missing:
            kind = "missing" if node.is_missing else "error"
            problems.append(f"{kind} {node.type} at line {node.start_point[0] + 1}: "
                            f"{node.text.decode(errors='replace')[:60]!r}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    if tree.root_node.has_error and not problems:
        problems.append("tree has an error")
    return problems


def unwrap(userdata: str) -> str:
    assert userdata.startswith("<powershell>\n") and userdata.endswith("\n</powershell>\n")
    return userdata[len("<powershell>\n"):-len("</powershell>\n")]


def test_every_powershell_file_parses_cleanly(rendered):
    for name in WINDOWS_FILES:
        text = (rendered / "reporting" / name).read_text()
        if name.startswith("userdata-"):
            text = unwrap(text)
        assert ps_problems(text) == [], name


def test_the_powershell_check_would_catch_a_bad_script():
    assert ps_problems("function Broken {\n  if ($x) { (\n}\n")
    assert ps_problems("$s = @'\nnever closed\n")


def _code_only(text: str) -> str:
    """The script's own code, without the files it carries in here-strings."""
    return re.sub(r"@'\n.*?\n'@", "@''@", text, flags=re.S)


def test_windows_bake_phase_one_converges_attached_and_maps_reboots_to_3010():
    userdata = bake_userdata(role("reporting"), bake_id=BAKE_ID, release="1")
    # Attached: no <detach> (EC2Launch v2 would detach the whole user data, and ignore exit 3010).
    assert "<detach>" not in userdata and "<persist>" not in userdata
    wrapper = unwrap(userdata)
    assert wrapper.rstrip().endswith("& $BakeScript\nexit $LASTEXITCODE")  # the bake's exit code is EC2Launch's
    body = _code_only(bake_script(role("reporting"), bake_id=BAKE_ID, release="1"))
    body = body[body.index("\ntry {"):]
    try_block, catch_block = body.split("\n} catch {", 1)
    reboot = try_block[try_block.index("if ($rc -eq 35 -or $rc -eq 37)"):]
    assert reboot.index("exit 3010") < reboot.index("if ($rc -ne 0) { throw")
    # Phase 1 never runs sysprep and never reports success: it hands over to the detached task.
    assert "$ec2launch" not in try_block and "sysprep --" not in try_block
    assert "Set-BootstrapTag 'succeeded'" not in body
    assert try_block.index("Invoke-Chef") < try_block.index("Start-ScheduledTask -TaskName 'bakery-generalize'")
    assert "Start-ScheduledTask" not in catch_block and "Set-BootstrapTag 'failed'" in catch_block


def test_windows_bake_phase_two_tags_generalizing_then_sysprep_without_block():
    text = generalize_script(role("reporting"), bake_id=BAKE_ID)
    assert ps_problems(text) == []
    try_block, catch_block = text[text.index("\ntry {"):].split("\n} catch {", 1)
    sysprep = "& $ec2launch sysprep --clean --shutdown\n"
    assert sysprep in try_block and "--block" not in text.replace("No --block", "")
    # Tag order: generalizing right before sysprep (sysprep shuts the instance down), never succeeded.
    assert try_block.index("Set-BootstrapTag 'generalizing'") < try_block.index(sysprep)
    assert try_block.index("Write-BakeSummary") < try_block.index("Set-BootstrapTag 'generalizing'")
    assert "if ($LASTEXITCODE -ne 0) { throw \"ec2launch sysprep exited" in try_block
    assert "Set-BootstrapTag 'failed'" in catch_block and "succeeded" not in text
    # What the image keeps of the bake: a summary in an admin-only folder; EC2Launch v2's copies go.
    summary = text[text.index("function Write-BakeSummary"):text.index("\ntry {")]
    assert "Set-Content -Path $LogFile" in summary
    assert "'Windows\\System32\\config\\systemprofile\\AppData\\Local\\Temp'" in summary
    assert "-Filter 'EC2Launch*' | Remove-Item -Recurse -Force" in summary
    lib = instance_files(role("reporting"))["C:\\ProgramData\\bakery\\bakery-lib.ps1"]
    assert "foreach ($dir in @($ChefDir, $ChefDataDir, $BakeryDir) | Select-Object -Unique) {" in lib
    assert "icacls.exe $dir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F'" in lib
    # It waits for phase 1 (the user data process) to return before anything else.
    assert try_block.index("Wait-Process -Id $WaitPid") < try_block.index("Read-Metadata")


def test_windows_first_boot_enforces_its_own_timeout_before_the_task_backstop():
    files = instance_files(role("reporting"))
    firstboot = files["C:\\ProgramData\\bakery\\firstboot.ps1"]
    lib = files["C:\\ProgramData\\bakery\\bakery-lib.ps1"]
    task = files["C:\\ProgramData\\bakery\\register-firstboot-task.ps1"]
    assert "$ChefTimeoutSeconds = 2700" in firstboot  # the role's bootstrap_timeout (45 min)
    assert "$chefArgs = @('-c', $ClientRb, '-j', $RunListJson)" in firstboot
    assert "Invoke-ChefWithin $chefArgs $ChefTimeoutSeconds" in firstboot
    within = lib[lib.index("function Invoke-ChefWithin"):]
    assert "$p.WaitForExit($Seconds * 1000)" in within and "taskkill.exe /PID $p.Id /T /F" in within
    assert within.index("taskkill.exe") < within.index("throw")  # killed, then the caller's catch alerts
    catch, final = firstboot.rsplit("} catch {", 1)[1].split("} finally {", 1)  # the main run's
    assert "Send-Alert" in catch and "Remove-Item -Force -ErrorAction SilentlyContinue -Path $ValidatorPem" in final
    assert "-ExecutionTimeLimit (New-TimeSpan -Seconds 4500)" in task  # 30 min after our own deadline


# --- quoting: hostile values stay inert -----------------------------------------------------------------


@pytest.mark.parametrize("template", HOSTILE)
def test_sh_filter_keeps_hostile_text_one_inert_word(tmp_path, template):
    marker = tmp_path / "PWNED"
    value = template.format(marker=marker)
    script = environment().from_string("V={{ v|sh }}\nprintf '%s' \"$V\"\nprintf '%s' {{ v|sh }} >second\n")
    proc = subprocess.run(["bash", "-c", script.render(v=value)], cwd=tmp_path, capture_output=True, text=True)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == value
    assert (tmp_path / "second").read_text() == value
    assert not marker.exists()


@pytest.mark.parametrize("template", HOSTILE)
def test_ps_filter_keeps_hostile_text_one_verbatim_string(template):
    value = template.format(marker="C:\\PWNED")
    source = environment().from_string("$v = {{ v|ps }}\nWrite-Host $v\n").render(v=value)

    assert ps_problems(source) == []
    tree = _PARSER.parse(source.encode("utf-8"))
    strings = []

    def walk(node: tree_sitter.Node) -> None:
        if node.type in ("sub_expression", "expandable_string_literal", "command") and b"PWNED" in node.text:
            raise AssertionError(f"{node.type} would run: {node.text!r}")
        if node.type == "verbatim_string_characters":
            strings.append(node.text.decode())
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    assert len(strings) == 1
    # PowerShell's own reading of a verbatim string: drop the outer quotes, each doubled quote is one.
    inner = strings[0][1:-1]
    for q in ("'", "\u2018", "\u2019", "\u201a", "\u201b"):
        inner = inner.replace(q + q, q)
    assert inner == value


@pytest.mark.parametrize(("key", "value"), [
    ("chef.server_url", "https://chef.example.com/$(touch /tmp/x)"),
    ("chef.server_url", "https://chef.example.com/`id`"),
    ("chef.server_url", "https://chef.example.com/a b"),
    ("chef.server_url", "https://chef.example.com/'x'"),
    ("chef.server_url", 'https://chef.example.com/"x"'),
    ("chef.server_url", "https://chef.example.com/\ntouch /tmp/x"),
    ("chef.installer_url", "https://x.example.com/i.sh\\"),
    ("chef.windows_installer_url", "https://x.example.com/$env:x"),
    ("chef.validation_client_name", "acme;touch"),
    ("chef.validation_key_s3", "s3://acme-bakery/a b.pem"),
    ("chef.client_version", "18; touch /tmp/x"),
    ("runlist_bucket", "acme bakery"),
    ("alert_topic_arn", "arn:aws:sns:us-east-1:123456789012:x;y"),
    ("region", "us-east-1; touch /tmp/x"),
])
def test_catalogue_refuses_values_that_could_break_out(key, value):
    data = copy.deepcopy(CATALOGUE)
    node = data["defaults"]
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(CatalogError, match=key.split(".")[-1]):
        parse_catalog(data, "test.yaml")


@pytest.mark.parametrize("run_list_item", ["recipe[a];touch", "recipe[$(x)]", "recipe[a b]", "role[`x`]"])
def test_catalogue_refuses_hostile_run_list_items(run_list_item):
    data = copy.deepcopy(CATALOGUE)
    data["roles"]["web"]["run_lists"] = {"ami": [run_list_item]}
    with pytest.raises(CatalogError, match="run_lists.ami"):
        parse_catalog(data, "test.yaml")


def hostile_catalogue(marker: Path) -> dict[str, Any]:
    """Values the catalogue accepts that still carry shell metacharacters: ; | > & ( ) < * ? ! #."""
    data = copy.deepcopy(CATALOGUE)
    data["defaults"]["chef"].update(
        server_url=f"https://chef.example.com/o;touch>{marker}|(touch>{marker})&<x*?!#",
        installer_url=f"https://get.example.com/i.sh;touch>{marker}",
        windows_installer_url=f"https://get.example.com/i.ps1;New-Item>{marker}|&(x)",
    )
    return data


def test_hostile_urls_stay_inert_in_the_linux_scripts(tmp_path):
    marker = tmp_path / "PWNED"
    web = role("web", hostile_catalogue(marker))
    out = tmp_path / "out"
    render_role_scripts(web, out)
    scripts = out / "web"
    root = tmp_path / "root"
    root.mkdir()
    env = {"PATH": "/usr/bin:/bin", "BAKERY_ROOT": str(root), "HOME": str(tmp_path)}

    # Sourcing the library defines every catalogue value: each must come out exactly as written.
    probe = f'. {scripts / "bakery-lib.sh"}; printf "%s\\n" "$CHEF_SERVER_URL" "$CHEF_INSTALLER_URL"'
    proc = subprocess.run(["bash", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [web.chef.server_url, web.chef.installer_url]
    # The first-boot script and the trigger user data run their top level (no sentinel: nothing else).
    lib_dir = root / "usr/local/lib/bakery"
    lib_dir.mkdir(parents=True)
    (lib_dir / "bakery-lib.sh").write_text((scripts / "bakery-lib.sh").read_text())
    for name in ("firstboot.sh", "userdata-from-ami.sh"):
        proc = subprocess.run(["bash", str(scripts / name)], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
    assert not marker.exists()
    # Still shellcheck-clean with those values in.
    proc = subprocess.run(["shellcheck", "-s", "bash", "-x", *LINUX_FILES[:-1]], cwd=scripts,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def verbatim_spans(source: str) -> list[tuple[int, int]]:
    """Byte ranges of the single-quoted strings and here-strings: text PowerShell never evaluates."""
    spans: list[tuple[int, int]] = []

    def walk(node: tree_sitter.Node) -> None:
        if node.type in ("verbatim_string_characters", "verbatim_here_string_characters"):
            spans.append((node.start_byte, node.end_byte))
        for child in node.children:
            walk(child)

    walk(_PARSER.parse(source.encode("utf-8")).root_node)
    return spans


def test_hostile_urls_stay_verbatim_strings_in_the_windows_scripts(tmp_path):
    reporting = role("reporting", hostile_catalogue(tmp_path / "PWNED"))
    out = tmp_path / "out"
    render_role_scripts(reporting, out)
    for name in WINDOWS_FILES:
        text = (out / "reporting" / name).read_text()
        if name.startswith("userdata-"):
            text = unwrap(text)
        assert ps_problems(text) == [], name
        spans = verbatim_spans(text)
        data = text.encode("utf-8")
        for needle in (reporting.chef.server_url, reporting.chef.windows_installer_url):
            start = data.find(needle.encode())
            while start != -1:
                assert any(a <= start and start + len(needle) <= b for a, b in spans), (name, needle)
                start = data.find(needle.encode(), start + 1)


# --- user data rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web", "reporting"])
def test_userdata_is_small_and_carries_no_key_material(name):
    r = role(name)
    bake = bake_userdata(r, bake_id=BAKE_ID, release="2026.01.1")
    for what, text in (("bake", bake), ("bake script", unpacked(bake)),
                       ("launch", launch_userdata(r)), ("from-ami", firstboot_trigger_userdata(r))):
        size = len(text.encode())
        # Room left for the role's own run lists (the limit itself is enforced by the module).
        assert what == "bake script" or size < USERDATA_LIMIT - 1500, (what, size)
        assert "PRIVATE KEY" not in text
        assert "validator.pem" in text or what in ("from-ami", "bake")  # fetched, never embedded


def test_userdata_too_big_for_ec2_is_refused_before_launch():
    data = copy.deepcopy(CATALOGUE)
    # Names that do not compress (the bake script travels gzipped): 100 distinct base64-like words.
    words = [base64.b64encode(hashlib.sha512(str(i).encode()).digest()).decode().rstrip("=").replace("+", "_")
             .replace("/", "-")[:70] for i in range(100)]
    data["roles"]["web"]["run_lists"] = {"ami": [f"recipe[c{w}]" for w in words]}
    with pytest.raises(BakeryError, match=r"role 'web': the bake user data is \d+ bytes; EC2 accepts at most 16384"):
        bake_userdata(role("web", data), bake_id=BAKE_ID, release="1")


def test_userdata_shapes():
    web, reporting = role("web"), role("reporting")
    assert bake_userdata(web, bake_id=BAKE_ID, release="1").startswith("#!/bin/bash\n")
    assert "'recipe[roles::web_ami]'" in unpacked(bake_userdata(web, bake_id=BAKE_ID, release="1"))
    assert unwrap(bake_userdata(reporting, bake_id=BAKE_ID, release="1"))
    assert "'role[reporting_ami],recipe[iis::install]'" in unpacked(
        bake_userdata(reporting, bake_id=BAKE_ID, release="1"))
    assert unwrap(launch_userdata(reporting))
    # SNS is called in the topic's region (eu-west-1 here), not the instance's.
    assert "ALERT_REGION='eu-west-1'" in launch_userdata(web)
    assert "$AlertRegion = 'eu-west-1'" in launch_userdata(reporting)
    # Instances from a baked image: the image does the work, the user data only says so.
    trigger = firstboot_trigger_userdata(web)
    assert "chef-client" not in trigger and "bakery-firstboot" in trigger
    proc = subprocess.run(["bash", "-c", trigger], capture_output=True, text=True)
    assert proc.returncode == 0 and "role web" in proc.stdout
    assert ps_problems(unwrap(firstboot_trigger_userdata(reporting))) == []


def test_node_name():
    assert node_name("web", BAKE_ID) == f"bake-web-{BAKE_ID}"
    with pytest.raises(BakeryError, match="invalid bake id"):
        node_name("web", "x; rm -rf /")


# --- the Chef client as a catalogue choice (issue 12) ---------------------------------------------------


def chef_catalogue(**chef: Any) -> dict[str, Any]:
    data = copy.deepcopy(CATALOGUE)
    data["roles"]["web"]["chef"] = chef
    return data


def test_default_client_is_cinc_from_its_public_omnitruck():
    web = role("web")
    assert (web.chef.distribution, web.chef.preinstalled) == ("cinc", False)
    assert web.chef.installer_url == "https://omnitruck.cinc.sh/install.sh"
    assert web.chef.windows_installer_url == "https://omnitruck.cinc.sh/install.ps1"
    script = bake_script(web, bake_id=BAKE_ID, release="1")
    assert "omnitruck.chef.io" not in script and "CHEF_BIN='cinc-client'" in script
    assert "/opt/$CHEF_DISTRIBUTION/bin" in script and "-P \"$CHEF_DISTRIBUTION\"" in script


def test_licensed_chef_takes_its_installers_and_key_source():
    web = role("web", chef_catalogue(distribution="chef", license_key_ssm="/acme/chef-license"))
    assert web.chef.installer_url == "https://chefdownload-commercial.chef.io/install.sh"
    assert web.chef.license_key_ssm == "/acme/chef-license"
    assert "CHEF_BIN='chef-client'" in bake_script(web, bake_id=BAKE_ID, release="1")
    # A role's own installer URL wins over the distribution's.
    own = role("web", chef_catalogue(distribution="chef", license_key_s3="s3://acme-bakery/chef/license",
                                     installer_url="https://mirror.example.com/install.sh"))
    assert own.chef.installer_url == "https://mirror.example.com/install.sh"


@pytest.mark.parametrize(("chef", "key", "message"), [
    ({"distribution": "chef"}, "chef.license_key_s3", "need a license key"),
    ({"distribution": "chef", "license_key_s3": "s3://b-b/k", "license_key_ssm": "/k"}, "chef.license_key_ssm",
     "not both"),
    ({"license_key_s3": "s3://acme-bakery/license"}, "chef.license_key_s3", "Cinc needs no license key"),
    ({"distribution": "opscode"}, "chef.distribution", "expected one of cinc, chef"),
    ({"preinstalled": "yes"}, "chef.preinstalled", "expected true or false"),
    ({"license_key_ssm": "bad name; rm"}, "chef.license_key_ssm", "SSM parameter name"),
    ({"distribution": "chef", "license_key_s3": "https://x.example.com/key"}, "chef.license_key_s3", "s3://"),
    ({"distrbution": "cinc"}, "chef.distrbution", "did you mean 'distribution'"),
])
def test_chef_client_keys_are_validated_naming_file_role_and_key(chef, key, message):
    with pytest.raises(CatalogError) as caught:
        parse_catalog(chef_catalogue(**chef), "bakery.yaml")
    text = str(caught.value)
    assert "bakery.yaml" in text and "'web'" in text and key in text and message in text, text


def test_licensed_chef_preinstalled_needs_no_key():
    web = role("web", chef_catalogue(distribution="chef", preinstalled=True))
    assert web.chef.preinstalled and web.chef.license_key_s3 is None


def test_bad_chef_key_in_the_cli_exits_2_with_nothing_done(tmp_path):
    import yaml  # only this test writes a catalogue file

    catalogue = tmp_path / "bakery.yaml"
    catalogue.write_text(yaml.safe_dump(chef_catalogue(distribution="chef")))
    proc = subprocess.run([str(Path(sys.executable).parent / "bakery"), "--catalog", str(catalogue),
                           "--workspace", str(tmp_path), "render", "--role", "web", "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "chef.license_key_s3" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("platform", ["linux", "windows"])
def test_license_key_location_is_in_user_data_never_a_key(platform):
    """The user data names where the key is (S3/SSM); the key itself is fetched by the instance."""
    data = chef_catalogue(distribution="chef", license_key_s3="s3://acme-bakery/chef/license-key.txt")
    data["roles"]["web"]["platform"] = platform
    web = role("web", data)
    texts = [bake_userdata(web, bake_id=BAKE_ID, release="1"), launch_userdata(web),
             firstboot_trigger_userdata(web), bake_script(web, bake_id=BAKE_ID, release="1"),
             *instance_files(web).values()]
    assert any("s3://acme-bakery/chef/license-key.txt" in t for t in texts)
    for text in texts:
        for line in text.splitlines():
            low = line.lower()
            # Only the variables holding the fetched key, never a literal value.
            if "license_key" in low and "=" in low and "s3://" not in low and "ssm" not in low:
                assert re.search(r"(\$\w*license\w*|\"\$|=\s*''$|=\"\"$|\$\(|LicenseKey)", line, re.I), line


def test_a_cinc_role_does_not_inherit_the_defaults_license_key():
    data = copy.deepcopy(CATALOGUE)
    data["defaults"]["chef"].update(distribution="chef", license_key_ssm="/acme/chef-license")
    data["roles"]["web"]["chef"] = {"distribution": "cinc"}
    web, reporting = role("web", data), role("reporting", data)
    assert (web.chef.distribution, web.chef.license_key_ssm) == ("cinc", None)
    assert (reporting.chef.distribution, reporting.chef.license_key_ssm) == ("chef", "/acme/chef-license")
