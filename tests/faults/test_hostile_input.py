"""Hostile input: bad catalogues, bad names on the command line, bad environments, and properties of
the renderers for every value the catalogue accepts.

Refusals must be exit 2 (or 1 for a failed stage) with one paragraph naming the cause (file, role,
key), no traceback, and no side effect: no AWS call (the CLI's AWS endpoint is a counting proxy in
front of moto), no Chef call (same, in front of goiardi), nothing in the workspace, no resource in
moto, and no file an injected command would have made.

The property tests (hypothesis) build catalogues from the very patterns the catalogue accepts,
salted with shell metacharacters, and check that every Linux script renders to shell that
shellcheck accepts and that, executed, assigns each value verbatim and runs none of it; and that
every Jenkins job renders to XML that parses and carries each value back unchanged.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.bakes import Census, FaultTable, bakery, cli_env, run_in_process
from support.proxy import FaultProxy

from bakery_lib.catalog import (
    BUCKET_RE,
    JOB_NAME_RE,
    RUN_LIST_ITEM_RE,
    parse_catalog,
)
from bakery_lib.errors import CatalogError
from bakery_lib.jobs.render import render_items
from bakery_lib.stages.preflight import RELEASE_RE
from bakery_lib.userdata import render_role_scripts

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
CORPUS = sorted(HOSTILE_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def aws_gate(devstack) -> Iterator[FaultProxy]:
    """Counts every AWS call the CLI makes (none may happen for bad input)."""
    with FaultProxy(devstack.moto.url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def chef_gate(devstack) -> Iterator[FaultProxy]:
    """Counts every Chef API call the CLI makes."""
    with FaultProxy(devstack.goiardi.url) as proxy:
        yield proxy


@pytest.fixture()
def gated_env(devstack, aws_gate: FaultProxy, chef_gate: FaultProxy) -> Iterator[dict[str, str]]:
    aws_gate.reset()
    chef_gate.reset()
    yield cli_env(devstack, aws_gate.url, CHEF_SERVER_URL=chef_gate.url)


def assert_nothing_done(ws: Path, aws_gate: FaultProxy, chef_gate: FaultProxy, census: Census | None = None) -> None:
    assert aws_gate.calls_since() == [], f"AWS was called: {[c.operation for c in aws_gate.calls_since()]}"
    assert chef_gate.calls_since() == [], "the Chef server was called"
    assert not ws.exists() or not any(ws.iterdir()), f"the workspace was written: {list(ws.rglob('*'))}"
    if census is not None:
        assert census.leaks() == [] and census.new_available_images() == []


def expectations(path: Path) -> list[str]:
    """The ``# expect: TEXT`` lines of a corpus file (taken literally: ``\\n`` is how a name is quoted)."""
    return [line[len("# expect: "):] for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("# expect: ")]


# --- the corpus of bad catalogues ----------------------------------------------------------------------


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_bad_catalogue_is_refused_before_anything_happens(path: Path, tmp_path: Path, gated_env, aws_gate,
                                                          chef_gate, capsys, monkeypatch):
    ws = tmp_path / "ws"
    code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(path), "bake", "--all",
                                     "--release", "1.0"], gated_env, capsys, monkeypatch)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith(f"bakery: catalogue {path}")
    assert len(err.strip().splitlines()) == 1, "one paragraph"
    for expected in expectations(path):
        assert expected in err, f"{expected!r} not in {err!r}"
    assert_nothing_done(ws, aws_gate, chef_gate)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    said = "; ".join(f"“{e}”" for e in expectations(path)).replace("|", "\\|")
    FaultTable.add("hostile input", f"catalogue `{path.name}`", f"exit 2, one line naming the file: {said}",
                   "nothing (no AWS/Chef call, workspace untouched)")


def test_bad_catalogue_through_the_real_console_entry(tmp_path: Path, gated_env, aws_gate, chef_gate):
    """The same as above in a subprocess, for the whole path (argv, imports, exit status)."""
    ws = tmp_path / "ws"
    path = HOSTILE_DIR / "role-name-subshell.yaml"
    proc = bakery(gated_env, ws, path, "stage", "preflight", "--role", "web", "--release", "1.0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid role name '$(touch PWNED)'" in proc.stderr
    assert_nothing_done(ws, aws_gate, chef_gate)


def test_ten_thousand_roles_are_refused_with_the_limit(tmp_path: Path, gated_env, aws_gate, chef_gate):
    data = {"defaults": yaml.safe_load((HOSTILE_DIR / "missing-platform.yaml").read_text())["defaults"],
            "roles": {f"role-{i:05d}": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"}
                      for i in range(10_000)}}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    ws = tmp_path / "ws"
    proc = bakery(gated_env, ws, path, "bake", "--all", "--release", "1.0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "key 'roles': 10000 roles; at most 5000 are supported in one catalogue" in proc.stderr
    assert_nothing_done(ws, aws_gate, chef_gate)
    FaultTable.add("hostile input", "catalogue with 10 000 roles", "exit 2: at most 5000 roles per catalogue",
                   "nothing")


def test_deeply_nested_yaml_is_a_clear_error_not_a_traceback(tmp_path: Path, capsys, monkeypatch, gated_env):
    path = tmp_path / "deep.yaml"
    path.write_text("roles: " + "[" * 5000 + "]" * 5000 + "\n")
    code, _out, err = run_in_process(["--workspace", str(tmp_path / "ws"), "--catalog", str(path), "bake", "--all",
                                      "--release", "1"], gated_env, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err


def test_duplicate_role_is_refused_not_silently_replaced(tmp_path: Path):
    from bakery_lib.catalog import load_catalog

    path = tmp_path / "dup.yaml"
    text = (HOSTILE_DIR / "missing-platform.yaml").read_text().split("roles:")[0]
    path.write_text(text + "roles:\n  web: {platform: linux, base_ami: ami-0123456789abcdef0}\n"
                           "  web: {platform: windows, base_ami: ami-0123456789abcdef0}\n")
    with pytest.raises(CatalogError, match="web"):
        load_catalog(path)


# --- names and releases on the command line ---------------------------------------------------------------

BAD_NAMES = ["web;reboot", "$(touch PWNED)", "`touch PWNED`", "../../etc/passwd", "web server", "<web>",
             "wéb", "", "web\ntouch PWNED", "WEB", "a" * 64]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[1:-1][:20] or "empty")
def test_bad_role_name_on_the_command_line_is_refused(name: str, devstack, tmp_path: Path, gated_env, aws_gate,
                                                       chef_gate, capsys, monkeypatch):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["web"])
    ws = tmp_path / "ws"
    out_dir = tmp_path / "rendered"
    for args in (["stage", "preflight", "--role", name, "--release", "1.0"], ["cleanup", "--role", name],
                 ["bake", "--role", name, "--release", "1.0"], ["render", "--role", name, "--output-dir", str(out_dir)],
                 ["status", "--role", name], ["prune", "--role", name]):
        code, _out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), *args], gated_env,
                                         capsys, monkeypatch)
        assert code == 2, (args, err)
        assert "invalid role name" in err and "Traceback" not in err, err
    assert not out_dir.exists()
    assert_nothing_done(ws, aws_gate, chef_gate)
    assert not Path("PWNED").exists()


def test_bad_role_name_for_create_instance(devstack, tmp_path: Path, gated_env, aws_gate, chef_gate):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["web"])
    proc = subprocess.run([sys.executable, "-c", "import sys; from bakery_lib.cli import create_instance_main as m; "
                           "sys.exit(m(sys.argv[1:]))", "../web;reboot", "--catalog", str(catalog),
                           "--workspace", str(tmp_path / "ws")],
                          env=gated_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid role name '../web;reboot'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_done(tmp_path / "ws", aws_gate, chef_gate)
    FaultTable.add("hostile input", "role names with `;` `$()` `` ` `` `../` spaces `<` unicode newline, upper "
                   "case, 64 chars, empty, on every command", "exit 2: invalid role name", "nothing")


@pytest.mark.parametrize("release", ["1.0;reboot", "$(id)", "../1", "1 0", "", "x" * 65, "-rf"])
def test_bad_release_is_refused(release: str, devstack, tmp_path: Path, gated_env, aws_gate, chef_gate, capsys,
                                monkeypatch):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["web"])
    ws = tmp_path / "ws"
    code, _out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "bake", "--role", "web",
                                      f"--release={release}"], gated_env, capsys, monkeypatch)
    assert code == 2 and ("invalid release" in err or "needs --release" in err), err
    assert_nothing_done(ws, aws_gate, chef_gate)


# --- bad environments ------------------------------------------------------------------------------------


def test_no_aws_credentials(devstack, tmp_path: Path, gated_env, aws_gate, chef_gate):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["nocreds"])
    census = Census.take(devstack)
    env = {k: v for k, v in gated_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    ws = tmp_path / "ws"
    for args in (["stage", "preflight", "--role", "nocreds", "--release", "1.0"],
                 ["bake", "--role", "nocreds", "--release", "1.0"]):
        proc = bakery(env, ws, catalog, *args)
        assert proc.returncode == 2, proc.stderr
        assert "no AWS credentials found" in proc.stderr and "Traceback" not in proc.stderr
    assert aws_gate.calls_since() == []
    assert not (ws / ".bakery" / "nocreds.json").exists()  # no bake was opened
    assert census.leaks() == []
    FaultTable.add("hostile input", "no AWS credentials (stage and bake)",
                   "exit 2: no AWS credentials found (+ how to provide them)", "nothing; no bake opened")


def test_unknown_region(devstack, tmp_path: Path, gated_env, aws_gate, chef_gate):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"noregion": {"region": "xx-nowhere-1"}})
    census = Census.take(devstack)
    ws = tmp_path / "ws"
    proc = bakery(gated_env, ws, catalog, "stage", "preflight", "--role", "noregion", "--release", "1.0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "unknown AWS region 'xx-nowhere-1'" in proc.stderr
    assert aws_gate.calls_since() == []
    assert not (ws / ".bakery" / "noregion.json").exists()
    assert census.leaks() == []
    FaultTable.add("hostile input", "unknown region `xx-nowhere-1` in the catalogue",
                   "exit 2: unknown AWS region, before any AWS call", "nothing")


@pytest.mark.parametrize("problem", ["missing", "directory", "not-a-key", "public-key"])
def test_unreadable_chef_key(problem: str, devstack, tmp_path: Path, gated_env, aws_gate, chef_gate):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["web"])
    key = tmp_path / "client.pem"
    secret = "SECRET-PEM-BODY-0123456789"
    if problem == "directory":
        key.mkdir()
    elif problem == "not-a-key":
        key.write_text(f"-----BEGIN RSA PRIVATE KEY-----\n{secret}\n-----END RSA PRIVATE KEY-----\n")
    elif problem == "public-key":
        pub = subprocess.run(["openssl", "rsa", "-in", devstack.goiardi.admin_key_path, "-pubout"],
                             capture_output=True, text=True, check=True).stdout
        key.write_text(pub)
    env = dict(gated_env, CHEF_CLIENT_KEY=str(key))
    ws = tmp_path / "ws"
    proc = bakery(env, ws, catalog, "stage", "preflight", "--role", "web", "--release", "1.0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert str(key) in proc.stderr and ("CHEF_CLIENT_KEY" in proc.stderr or "Chef client key" in proc.stderr)
    assert secret not in proc.stdout + proc.stderr
    assert aws_gate.calls_since() == [] and chef_gate.calls_since() == []
    if problem == "missing":
        FaultTable.add("hostile input", "Chef key missing / a directory / not a PEM key / a public key",
                       "exit 2 naming the key file (never its content)", "nothing")


# --- properties of the renderers ----------------------------------------------------------------------------

# Pieces that would do something if a shell ever read them as code: each one writes a file PWNED.
SHELL_BAITS = [";touch>PWNED", "|touch>PWNED", "&touch>PWNED", "(touch>PWNED)", "&&touch>PWNED", ">PWNED", "<PWNED",
               "*", "?", "[a]", "!", "#", "~", "%", "{a,b}", "é", "\u202e"]
# The same for values that may also hold quotes, `$`, backticks and backslashes (an S3 key: any
# non-space character).
SHELL_SPECIALS = ["$(touch${IFS}PWNED)", "`touch>PWNED`", "${IFS}", "$((1))", "$HOME", "\\", "x\\';touch>PWNED;'"]
SHELL_BAITS_FULL = SHELL_BAITS + ["';touch>PWNED;'", "\";touch>PWNED;\"", "'", "\"", *SHELL_SPECIALS]
URL_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                          exclude_characters="'\"`$\\")


def _salted(baits: list[str], chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(baits), st.text(chars, min_size=1, max_size=6)),
                    min_size=1, max_size=5).map("".join)


@st.composite
def linux_catalogues(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    role = draw(st.from_regex(r"\A[a-z][a-z0-9_-]{0,20}\Z"))
    bucket = draw(st.from_regex(BUCKET_RE, fullmatch=True).filter(lambda b: ".." not in b))
    data = {
        "defaults": {
            "region": "us-east-1",
            "runlist_bucket": bucket,
            "alert_topic_arn": "arn:aws:sns:eu-west-1:123456789012:" + draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,20}\Z")),
            "chef": {
                "server_url": "https://chef.example.com/" + draw(_salted(SHELL_BAITS, URL_CHARS)),
                "installer_url": "https://get.example.com/" + draw(_salted(SHELL_BAITS, URL_CHARS)),
                "validation_client_name": draw(st.from_regex(r"\A[A-Za-z0-9_.-]{1,30}\Z")),
                "validation_key_s3": f"s3://{bucket}/" + draw(_salted(SHELL_BAITS_FULL, URL_CHARS)),
                "client_version": draw(st.from_regex(r"\A[0-9][0-9.]{0,8}\Z")),
            },
        },
        "roles": {role: {"platform": "linux", "base_ami": "ami-0123456789abcdef0", "run_lists": {
            "ami": draw(st.lists(st.from_regex(RUN_LIST_ITEM_RE, fullmatch=True), min_size=1, max_size=3)),
            "launch": draw(st.lists(st.from_regex(RUN_LIST_ITEM_RE, fullmatch=True), min_size=1, max_size=3)),
        }}},
    }
    release = draw(st.from_regex(RELEASE_RE, fullmatch=True))
    return data, release


STUB_BIN = {"curl": "#!/bin/sh\nexit 7\n", "sleep": "#!/bin/sh\nexit 0\n", "aws": "#!/bin/sh\nexit 1\n"}
# Everything the catalogue's values land in.
CHECKED = ["userdata-bake.sh", "userdata-launch.sh", "userdata-from-ami.sh", "userdata-boot-test.sh", "bakery-lib.sh",
           "firstboot.sh",
           "bakery-firstboot.init"]


@settings(max_examples=15, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(linux_catalogues())
def test_any_accepted_catalogue_renders_to_clean_inert_shell(case: tuple[dict[str, Any], str]):
    data, release = case
    try:
        catalog = parse_catalog(data, "generated.yaml")
    except CatalogError as exc:  # the generator aims at accepted values: it must not miss often
        raise AssertionError(f"generated a catalogue the loader refuses: {exc}") from None
    (role,) = catalog.roles.values()
    with tempfile.TemporaryDirectory() as tmp:
        box = Path(tmp)
        scripts = box / "out" / role.name
        render_role_scripts(role, box / "out", bake_id="20260101000000-abcdef", release=release)
        proc = subprocess.run(["shellcheck", "-s", "bash", "-x", "-f", "gcc", *(str(scripts / n) for n in CHECKED)],
                              cwd=scripts, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr

        run = box / "run"
        (run / "root").mkdir(parents=True)
        stub = box / "bin"
        stub.mkdir()
        for name, text in STUB_BIN.items():
            (stub / name).write_text(text)
            (stub / name).chmod(0o755)
        env = {"PATH": f"{stub}:/usr/bin:/bin", "HOME": str(run), "BAKERY_ROOT": str(run / "root"),
               "BAKERY_IMDS_URL": "http://127.0.0.1:9", "LANG": "C.UTF-8"}
        names = ["CHEF_SERVER_URL", "CHEF_INSTALLER_URL", "CHEF_VALIDATOR_KEY_S3", "CHEF_VALIDATOR", "CHEF_VERSION",
                 "ALERT_TOPIC_ARN", "ROLE"]
        probe = f'. {scripts / "bakery-lib.sh"}; printf "%s\\0" ' + " ".join(f'"${n}"' for n in names)
        shown = subprocess.run(["bash", "-c", probe], cwd=run, env=env, capture_output=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.decode().split("\0")[:-1] == [
            role.chef.server_url, role.chef.installer_url, role.chef.validation_key_s3,
            role.chef.validation_client_name, role.chef.client_version, role.alert_topic_arn, role.name]
        # The bake user data runs its top level (every assignment of a catalogue value) until the
        # metadata service does not answer; the launch user data and first boot likewise.
        for name in ("userdata-bake.sh", "userdata-launch.sh", "firstboot.sh"):
            subprocess.run(["bash", str(scripts / name)], cwd=run, env=env, capture_output=True, timeout=60)
        made = sorted(p.name for p in box.rglob("PWNED*"))
        assert made == [], f"injected text ran: {made}"


JENKINS_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)


@st.composite
def jenkins_catalogues(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "defaults": {"region": "us-east-1", "runlist_bucket": "acme-bakery",
                     "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:t",
                     "chef": {"server_url": "https://chef.example.com", "validation_client_name": "v",
                              "validation_key_s3": "s3://acme-bakery/v.pem"}},
        "jenkins": {
            "scm_url": draw(JENKINS_TEXT),
            "scm_branch": draw(st.from_regex(r"\A[^\x00-\x20\x7f~^:?*\[\\]{1,20}\Z").filter(
                lambda b: not b.startswith(("refs/", "*/", "origin/")))),
            "scm_credentials_id": draw(JENKINS_TEXT),
            # one label name (jenkins/README.md: the Jenkinsfiles refuse label expressions and the controller)
            "agent_label": draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z").filter(
                lambda s: ".." not in s and s.lower() not in ("built-in", "master"))),
            "upstream_jobs": draw(st.lists(JENKINS_TEXT.filter(lambda s: "," not in s), min_size=1, max_size=3)),
            "job_prefix": draw(st.from_regex(r"\A[A-Za-z0-9_.-]{1,10}\Z")),
            "release_job": draw(st.from_regex(JOB_NAME_RE, fullmatch=True)),
        },
        "roles": {draw(st.from_regex(r"\A[a-z][a-z0-9_-]{0,20}\Z")): {
            "platform": "linux", "base_ami": "ami-0123456789abcdef0"}},
    }


@settings(max_examples=40, derandomize=True, deadline=None)
@given(jenkins_catalogues())
def test_any_accepted_catalogue_renders_to_job_xml_that_round_trips(data: dict[str, Any]):
    try:
        catalog = parse_catalog(copy.deepcopy(data), "generated.yaml")
        items = render_items(catalog)
    except CatalogError as exc:
        # The only refusals allowed: characters XML cannot carry, and a release job named like a role job.
        assert re.search("XML cannot carry|is also the job of role", str(exc)), exc
        return
    jenkins = data["jenkins"]
    (role,) = data["roles"]
    for item in items:
        root = ET.fromstring(item.xml.encode("utf-8"))
        if item.kind != "job":
            continue
        assert root.findtext(".//scm/userRemoteConfigs/hudson.plugins.git.UserRemoteConfig/url") == jenkins["scm_url"]
        assert root.findtext(".//credentialsId") == jenkins["scm_credentials_id"]
        assert root.findtext(".//branches/hudson.plugins.git.BranchSpec/name") == "*/" + jenkins["scm_branch"]
        params = {p.findtext("name"): p.findtext("defaultValue") or ""
                  for p in root.iter("hudson.model.StringParameterDefinition")}
        assert params["AGENT_LABEL"] == jenkins["agent_label"]
        if item.role is not None:
            assert params["ROLE"] == role
            assert root.findtext(".//upstreamProjects") == ", ".join(jenkins["upstream_jobs"])


def _render_with_s3_key(key: str, out: Path) -> Path:
    data = {
        "defaults": {"region": "us-east-1", "runlist_bucket": "acme-bakery",
                     "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:t",
                     "chef": {"server_url": "https://chef.example.com", "validation_client_name": "v",
                              "validation_key_s3": f"s3://acme-bakery/{key}"}},
        "roles": {"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"}},
    }
    role = parse_catalog(data, "generated.yaml").roles["web"]
    render_role_scripts(role, out)
    return out / "web"


@pytest.mark.parametrize("bait", SHELL_SPECIALS)
def test_s3_key_with_shell_specials_stays_inert(bait: str, tmp_path: Path):
    """The catalogue accepts ``$``, backticks and backslashes in an S3 key (``\\S+``): they must stay text."""
    scripts = _render_with_s3_key(f"chef/{bait}.pem", tmp_path / "out")
    probe = f'. {scripts / "bakery-lib.sh"}; printf "%s" "$CHEF_VALIDATOR_KEY_S3"'
    shown = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "BAKERY_ROOT": str(tmp_path / "root")})
    assert shown.returncode == 0 and shown.stdout == f"s3://acme-bakery/chef/{bait}.pem"
    assert not list(tmp_path.rglob("PWNED*"))


@pytest.mark.parametrize("bait", [*SHELL_SPECIALS, "x\\"])
def test_s3_key_with_shell_specials_renders_shellcheck_clean(bait: str, tmp_path: Path):
    """Not only inert: no shellcheck note either (a literal '$(...)' or a trailing backslash in single
    quotes draws SC2016/SC1003, which is why such values are double-quoted and escaped)."""
    scripts = _render_with_s3_key(f"chef/{bait}", tmp_path / "out")
    proc = subprocess.run(["shellcheck", "-s", "bash", "-x", "-f", "gcc", str(scripts / "bakery-lib.sh")],
                          cwd=scripts, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
