"""Unit tests of the release summary (reports/summary.html and reports/summary.md).

The workspace is built from real bake state files; the HTML is read back with html.parser the way a
browser would see it (tags, attributes, text), not searched for substrings only.
"""

from __future__ import annotations

import fcntl
import html.parser
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from bakery_lib.bake import RoleOutcome, summary_lines
from bakery_lib.errors import UsageError
from bakery_lib.reports import write_artifacts
from bakery_lib.state import BakeState, StageRecord, Workspace
from bakery_lib.summary import write_summary
from devstack.samples import offline_catalog_data

T0 = 1_700_000_000.0
HOSTILE = '<script>alert("pwned")</script> & <img src=x onerror=alert(1)>'
STAGES = ("preflight", "security-groups", "iam-role", "launch", "bootstrap", "stop", "image",
          "wait-image", "terminate", "chef-cleanup", "publish")


def _state(role: str, bake_id: str, **kw) -> BakeState:
    return BakeState(role=role, bake_id=bake_id, release="2.4.0", region="us-east-1", **{"platform": "linux", **kw})


def _run(state: BakeState, durations: dict[str, float], *, fail: str | None = None, message: str = "") -> None:
    """Record stages run back to back from T0, as run_stage does."""
    t = T0
    for name in STAGES:
        if name not in durations:
            break
        d = durations[name]
        status = "failed" if name == fail else "succeeded"
        state.stages[name] = StageRecord(status, t, t + d, d, message if name == fail else f"{name} ok", 1)
        t += d
        if name == fail:
            break


def make_workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path)
    web = _state("web", "20240101000000-aaaaaa", outcome="succeeded", closed=True,
                 amis={"us-east-1": "ami-0aaa0000000000001", "eu-west-1": "ami-0aaa0000000000002"})
    _run(web, {s: 10.0 for s in STAGES} | {"bootstrap": 300.0, "wait-image": 100.0})
    ws.save(web)

    api = _state("api", "20240101000000-bbbbbb", outcome="reused", closed=True, reused=True,
                 image_id="ami-0bbb0000000000001", amis={"us-east-1": "ami-0bbb0000000000001"})
    api.stages["preflight"] = StageRecord("succeeded", T0, T0 + 2, 2.0, "reusing", 1)
    for name in STAGES[1:-1]:
        api.stages[name] = StageRecord("skipped", None, None, None, "reused ami-0bbb0000000000001 (same bake key)")
    api.stages["publish"] = StageRecord("succeeded", T0 + 2, T0 + 3, 1.0, "published", 1)
    ws.save(api)

    win = _state("win", "20240101000000-cccccc", outcome="cleaned", closed=True)
    _run(win, {"preflight": 5.0, "security-groups": 1.0, "iam-role": 1.0, "launch": 3.0, "bootstrap": 30.0},
         fail="bootstrap", message=f"chef-client failed: {HOSTILE}\nline two")
    ws.save(win)

    db = _state("db", "20240101000000-dddddd")
    _run(db, {"preflight": 4.0, "security-groups": 1.0, "iam-role": 1.0, "launch": 2.0})
    db.stages["bootstrap"] = StageRecord("running", T0 + 8, None, None, "", 1)
    ws.save(db)
    return ws


class Page(html.parser.HTMLParser):
    """Collects what a browser would build: start tags with attributes, and the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all_text(self) -> str:
        return "".join(self.text)


def parse(path) -> tuple[Page, str]:
    raw = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(raw)
    page.close()
    return page, raw


def md_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows[1].startswith("|---"), rows
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in rows[2:]]


def test_html_is_self_contained_and_shows_every_role(tmp_path):
    ws = make_workspace(tmp_path)
    html_path, md_path = write_summary(ws, release="2.4.0")
    assert html_path == tmp_path / "reports" / "summary.html" and md_path == tmp_path / "reports" / "summary.md"
    page, raw = parse(html_path)
    text = page.all_text()

    for role in ("web", "api", "win", "db"):
        assert any(t == "section" and a.get("id") == f"role-{role}" for t, a in page.tags), role
    for ami in ("ami-0aaa0000000000001", "ami-0aaa0000000000002", "ami-0bbb0000000000001"):
        assert ami in text
    assert "release 2.4.0" in text

    # Status per role, in the overview table row of that role.
    overview = raw.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    statuses = dict(re.findall(r'<tr id="row-(\w+)">.*?class="status (\w+)"', overview, re.S))
    assert statuses == {"web": "succeeded", "api": "reused", "win": "failed", "db": "open"}

    # Nothing loads or runs anything: no script element, no event handler, no external reference.
    assert not any(t in ("script", "link", "iframe", "img", "object") for t, _ in page.tags)
    assert not any(k.startswith("on") for _, a in page.tags for k in a)
    assert not re.search(r"https?://", raw)
    assert not any((a.get("src") or a.get("href") or "#").startswith(("//", "http")) for _, a in page.tags
                   if "src" in a or "href" in a)


def test_hostile_failure_message_is_escaped(tmp_path):
    ws = make_workspace(tmp_path)
    html_path, md_path = write_summary(ws, release=None)
    page, raw = parse(html_path)
    assert "<script>" not in raw and "<img" not in raw
    assert "&lt;script&gt;" in raw
    # The reader still sees the message as text, whole, with the failing stage named.
    assert f"bootstrap: chef-client failed: {HOSTILE}" in page.all_text()
    assert "line two" in page.all_text()  # the full message is in the role section
    md = md_path.read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md


def test_timeline_bars_are_proportional_and_skips_marked(tmp_path):
    ws = make_workspace(tmp_path)
    html_path, _ = write_summary(ws, release="2.4.0")
    page, _ = parse(html_path)
    bars: dict[tuple[str, str], dict] = {}
    section = None
    for tag, attrs in page.tags:
        if tag == "section":
            section = attrs["id"].removeprefix("role-")
        if tag == "rect" and attrs.get("class") == "bar":
            bars[(section, attrs["data-stage"])] = {k: float(attrs[k]) for k in ("x", "width")}
    web_boot, web_launch = bars[("web", "bootstrap")], bars[("web", "launch")]
    assert web_boot["width"] / web_launch["width"] == pytest.approx(30.0, rel=1e-3)  # 300 s against 10 s
    # Each bar starts where the previous stage ended (stages ran back to back).
    assert abs(web_launch["x"] + web_launch["width"] - web_boot["x"]) < 0.05
    # All roles share one scale: the failed role's 30 s bootstrap is a tenth of web's.
    assert abs(bars[("win", "bootstrap")]["width"] * 10 - web_boot["width"]) < 0.1
    # A reused role: its skipped stages have no bar but are marked as skipped.
    assert ("api", "launch") not in bars and ("api", "preflight") in bars
    text = page.all_text()
    assert "⤼ skipped (reused AMI)" in text
    assert "stage bootstrap running" in text  # the open bake says where it is


def test_markdown_has_one_row_per_role(tmp_path):
    ws = make_workspace(tmp_path)
    _, md_path = write_summary(ws, release="2.4.0")
    md = md_path.read_text()
    assert md.splitlines()[0] == "# AMI Bakery summary — release 2.4.0"
    rows = md_rows(md)
    assert [r[0] for r in rows] == ["win", "db", "api", "web"]  # failures first, then open, then the rest
    by_role = {r[0]: r for r in rows}
    assert all(len(r) == 9 for r in rows)
    assert by_role["web"][1].endswith("succeeded")
    assert "us-east-1: ami-0aaa0000000000001" in by_role["web"][3] and "eu-west-1: ami-0aaa0000000000002" in by_role["web"][3]
    assert by_role["api"][1].endswith("reused") and by_role["win"][1].endswith("failed")
    assert by_role["db"][1].endswith("open")
    assert by_role["api"][6] == "yes" and by_role["web"][6] == "no"  # reused
    # A pipe in a message cannot break the table.
    assert "\\|" not in by_role["web"][8]


def test_outcomes_of_the_run_win_and_the_release_page_keeps_every_bake_of_the_release(tmp_path):
    ws = make_workspace(tmp_path)
    outcomes = [
        RoleOutcome("web", "succeeded", "succeeded", 470.0, amis={"us-east-1": "ami-0aaa0000000000001"}),
        # Never got a state: e.g. its workspace lock was held by another process.
        RoleOutcome("batch", "failed", "another bakery process is working on role 'batch' | lock", 0.1,
                    exit_code=2),
    ]
    html_path, md_path = write_summary(ws, outcomes, release="2.4.0")
    rows = {r[0]: r for r in md_rows(md_path.read_text())}
    # This run's two roles, and the earlier bakes of release 2.4.0 in this workspace: the release's page.
    assert set(rows) == {"web", "batch", "api", "db", "win"}
    assert list(rows)[:2] == ["batch", "win"]  # failures first
    assert rows["batch"][1].endswith("failed") and "another bakery process" in rows["batch"][8]
    assert "'batch' \\| lock" in rows["batch"][8]
    assert rows["web"][7] == "7 min 50 s"
    page, _ = parse(html_path)
    assert "another bakery process is working on role 'batch' | lock" in page.all_text()


def test_empty_workspace_still_writes_both(tmp_path):
    html_path, md_path = write_summary(Workspace(tmp_path))
    page, raw = parse(html_path)
    assert "0 role(s)" in page.all_text()
    assert md_rows(md_path.read_text()) == []


# --- outputs that never lie: release filter, amis.json/properties, refused runs, console lines ---------



def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    catalog = tmp_path / "bakery.yaml"
    if not catalog.exists():
        catalog.write_text(yaml.safe_dump(offline_catalog_data(["web", "api", "win"])))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHEF_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL="http://127.0.0.1:9")  # nothing listens: these commands must not call AWS
    return subprocess.run([sys.executable, "-m", "bakery_lib.cli", "--workspace", str(tmp_path), "--catalog",
                           str(catalog), *args], capture_output=True, text=True, timeout=120, env=env)


def test_summary_release_filters_roles(tmp_path):
    ws = make_workspace(tmp_path)
    other = _state("batch", "20240102000000-dddddd", outcome="succeeded", closed=True,
                   amis={"us-east-1": "ami-0ddd0000000000001"})
    other.release = "2.5.0"
    ws.save(other)
    _, md_path = write_summary(ws, release="2.5.0")
    assert [r[0] for r in md_rows(md_path.read_text())] == ["batch"]
    _, md_path = write_summary(ws, release="2.4.0")
    assert sorted(r[0] for r in md_rows(md_path.read_text())) == ["api", "db", "web", "win"]


def test_summary_unknown_release_exit_2_and_nothing_written(tmp_path):
    ws = make_workspace(tmp_path)
    with pytest.raises(UsageError, match=r"no bake of release '9\.9' .*releases here: 2\.4\.0"):
        write_summary(ws, release="9.9")
    assert not (tmp_path / "reports" / "summary.html").exists()
    proc = _cli(tmp_path, "summary", "--release", "9.9")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no bake of release '9.9'" in proc.stderr and not (tmp_path / "reports" / "summary.md").exists()


def _bake_state(role: str, release: str, amis: dict[str, str]) -> BakeState:
    state = _state(role, "20240101000000-" + role[:6].ljust(6, "x"), outcome="succeeded", closed=True, amis=amis)
    state.release = release
    return state


def test_amis_json_release_is_null_when_roles_differ_and_properties_unique(tmp_path):
    ws = Workspace(tmp_path)
    write_artifacts(ws, _bake_state("web", "2.4.0", {"us-east-1": "ami-0aaa0000000000001"}))
    one = json.loads((tmp_path / "artifacts" / "amis.json").read_text())
    assert one["release"] == "2.4.0"
    write_artifacts(ws, _bake_state("api", "2.10.0", {"us-east-1": "ami-0bbb0000000000001",
                                                     "eu-west-1": "ami-0bbb0000000000002"}))
    both = json.loads((tmp_path / "artifacts" / "amis.json").read_text())
    assert both["release"] is None  # not "2.4.0" (lexically last): the roles are of two releases
    assert both["releases"] == {"api": "2.10.0", "web": "2.4.0"}
    assert both["amis"]["api"] == {"us-east-1": "ami-0bbb0000000000001", "eu-west-1": "ami-0bbb0000000000002"}
    props = (tmp_path / "artifacts" / "amis.properties").read_text().splitlines()
    assert props == ["AMI_API=ami-0bbb0000000000001", "AMI_API_EU_WEST_1=ami-0bbb0000000000002",
                     "AMI_API_US_EAST_1=ami-0bbb0000000000001", "AMI_WEB=ami-0aaa0000000000001",
                     "AMI_WEB_US_EAST_1=ami-0aaa0000000000001"]


def test_refused_bake_leaves_summary_alone(tmp_path):
    ws = make_workspace(tmp_path)
    running = _state("web", "20240103000000-eeeeee")
    running.stages["preflight"] = StageRecord("succeeded", T0, T0 + 1, 1.0, "opened", 1)
    running.stages["security-groups"] = StageRecord("running", T0 + 1, None, None, "", 1)
    ws.save(running)
    html_path, md_path = write_summary(ws, release="2.4.0")
    before = (html_path.read_bytes(), md_path.read_bytes())
    lock = os.open(ws.state_dir / "web.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process is baking web
        proc = _cli(tmp_path, "bake", "--role", "web", "--release", "2.4.0")
    finally:
        os.close(lock)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert re.search(r"^web\s+refused\s.*another bakery process is working on role 'web'", proc.stdout, re.M)
    assert "summary: not written" in proc.stdout
    assert (html_path.read_bytes(), md_path.read_bytes()) == before
    assert ws.load("web").stages["security-groups"].status == "running"


def test_reused_stage_is_junit_skipped_and_printed_once(tmp_path):
    ws = Workspace(tmp_path)
    state = _state("web", "20240104000000-ffffff", reused=True, image_id="ami-0fff0000000000001",
                   amis={"us-east-1": "ami-0fff0000000000001"})
    state.stages["preflight"] = StageRecord("succeeded", T0, T0 + 1, 1.0, "reusing", 1)
    for name in STAGES[1:-1]:
        state.stages[name] = StageRecord("skipped", None, None, None, "reused ami-0fff0000000000001 (same bake key)")
    ws.save(state)
    proc = _cli(tmp_path, "stage", "security-groups", "--role", "web")
    assert proc.returncode == 0, proc.stderr
    console = proc.stdout + proc.stderr
    assert console.count("already done: stage security-groups") == 1, console
    case = ET.parse(tmp_path / "reports" / "web-security-groups.xml").getroot().find(".//testcase")
    skipped = case.find("skipped")
    assert skipped is not None and case.find("failure") is None
    assert "reused ami-0fff0000000000001" in skipped.get("message", "")


def test_bake_result_line_keeps_the_advice():
    advice = "then run `bakery --workspace /w cleanup --role web` to remove it"
    long_message = "bootstrap: " + "x" * 300 + "\n" + advice
    lines = summary_lines([RoleOutcome("web", "failed", long_message, 12.0)])
    assert "x" * 300 in lines[0] and any(advice in line for line in lines)


def test_the_summary_shows_fast_launch_per_region(tmp_path):
    ws = Workspace(tmp_path)
    win = _state("win", "20240101000000-eeeeee", outcome="succeeded", closed=True, platform="windows",
                 amis={"us-east-1": "ami-0eee0000000000001", "eu-west-1": "ami-0eee0000000000002"},
                 fast_launch={"us-east-1": "enabled", "eu-west-1": "enabled"})
    _run(win, {s: 10.0 for s in STAGES})
    ws.save(win)
    _, md_path = write_summary(ws, release="2.4.0")
    [row] = md_rows(md_path.read_text())
    assert row[8].endswith("Windows Fast Launch eu-west-1 enabled, us-east-1 enabled"), row
