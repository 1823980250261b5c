"""Rendering of the instance-side scripts: every file for a Linux and a Windows role, checked for real.

Bash goes through ``shellcheck`` (zero findings), PowerShell through tree-sitter-powershell (no error
or missing node), catalogue values through the quoting filters with hostile strings that are then
executed (or parsed) to prove they stay inert. Execution against AWS doubles is in
``test_firstboot_linux.py``.
"""

from __future__ import annotations

import configparser
import copy
import re
import stat
import subprocess
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
    bake_userdata,
    firstboot_trigger_userdata,
    instance_files,
    launch_userdata,
    node_name,
    render_role_scripts,
)

SCRIPTS = Path(__file__).resolve().parent / "scripts"
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

LINUX_FILES = ["userdata-bake.sh", "userdata-launch.sh", "userdata-from-ami.sh", "bakery-lib.sh",
               "firstboot.sh", "bakery-firstboot.init", "bakery-firstboot.service"]
WINDOWS_FILES = ["userdata-bake.ps1", "userdata-launch.ps1", "userdata-from-ami.ps1", "bakery-lib.ps1",
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
        userdata = bake_userdata(r, bake_id=BAKE_ID, release="1")
        for path, content in files.items():
            assert content.rstrip("\n") in userdata, path


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


def test_windows_bake_userdata_generalizes_only_after_success():
    text = unwrap(bake_userdata(role("reporting"), bake_id=BAKE_ID, release="1"))
    # The bake's own code, without the files it carries in here-strings.
    text = re.sub(r"@'\n.*?\n'@", "@''@", text, flags=re.S)
    body = text[text.index("\ntry {"):]
    # In the try block: chef, then sysprep, then the success tag; the catch tags failure, no sysprep.
    try_block, catch_block = body.split("\n} catch {", 1)
    assert try_block.index("Invoke-Chef") < try_block.index("sysprep --clean --block") \
        < try_block.index("Set-BootstrapTag 'succeeded'")
    assert "sysprep" not in catch_block and "Set-BootstrapTag 'failed'" in catch_block


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
    for what, text in (("bake", bake_userdata(r, bake_id=BAKE_ID, release="2026.01.1")),
                       ("launch", launch_userdata(r)), ("from-ami", firstboot_trigger_userdata(r))):
        size = len(text.encode())
        # Room left for the role's own run lists (the limit itself is enforced by the module).
        assert size < USERDATA_LIMIT - 1500, (what, size)
        assert "PRIVATE KEY" not in text
        assert "validator.pem" in text or what == "from-ami"  # fetched, never embedded


def test_userdata_too_big_for_ec2_is_refused_before_launch():
    data = copy.deepcopy(CATALOGUE)
    data["roles"]["web"]["run_lists"] = {"ami": [f"recipe[cookbook_{i:03d}::{'x' * 40}]" for i in range(100)]}
    with pytest.raises(BakeryError, match=r"role 'web': the bake user data is \d+ bytes; EC2 accepts at most 16384"):
        bake_userdata(role("web", data), bake_id=BAKE_ID, release="1")


def test_userdata_shapes():
    web, reporting = role("web"), role("reporting")
    assert bake_userdata(web, bake_id=BAKE_ID, release="1").startswith("#!/bin/bash\n")
    assert "'recipe[roles::web_ami]'" in bake_userdata(web, bake_id=BAKE_ID, release="1")
    assert unwrap(bake_userdata(reporting, bake_id=BAKE_ID, release="1"))
    assert "'role[reporting_ami],recipe[iis::install]'" in bake_userdata(reporting, bake_id=BAKE_ID, release="1")
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
