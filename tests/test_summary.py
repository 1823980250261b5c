"""Unit tests of the release summary (reports/summary.html and reports/summary.md).

The workspace is built from real bake state files; the HTML is read back with html.parser the way a
browser would see it (tags, attributes, text), not searched for substrings only.
"""

from __future__ import annotations

import html.parser
import re

import pytest

from bakery_lib.bake import RoleOutcome
from bakery_lib.state import BakeState, StageRecord, Workspace
from bakery_lib.summary import write_summary

T0 = 1_700_000_000.0
HOSTILE = '<script>alert("pwned")</script> & <img src=x onerror=alert(1)>'
STAGES = ("preflight", "security-groups", "iam-role", "launch", "bootstrap", "stop", "image",
          "wait-image", "terminate", "chef-cleanup", "publish")


def _state(role: str, bake_id: str, **kw) -> BakeState:
    return BakeState(role=role, bake_id=bake_id, release="2.4.0", region="us-east-1", platform="linux", **kw)


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
    assert [r[0] for r in rows] == ["api", "db", "web", "win"]
    by_role = {r[0]: r for r in rows}
    assert all(len(r) == 6 for r in rows)
    assert by_role["web"][1].endswith("succeeded")
    assert "us-east-1: ami-0aaa0000000000001" in by_role["web"][3] and "eu-west-1: ami-0aaa0000000000002" in by_role["web"][3]
    assert by_role["api"][1].endswith("reused") and by_role["win"][1].endswith("failed")
    assert by_role["db"][1].endswith("open")
    # A pipe in a message cannot break the table.
    assert "\\|" not in by_role["web"][5]


def test_outcomes_of_the_run_win_and_limit_the_roles(tmp_path):
    ws = make_workspace(tmp_path)
    outcomes = [
        RoleOutcome("web", "succeeded", "succeeded", 470.0, amis={"us-east-1": "ami-0aaa0000000000001"}),
        # Never got a state: e.g. its workspace lock was held by another process.
        RoleOutcome("batch", "failed", "another bakery process is working on role 'batch' | lock", 0.1,
                    exit_code=2),
    ]
    html_path, md_path = write_summary(ws, outcomes, release="2.4.0")
    rows = {r[0]: r for r in md_rows(md_path.read_text())}
    assert set(rows) == {"web", "batch"}
    assert rows["batch"][1].endswith("failed") and "another bakery process" in rows["batch"][5]
    assert "'batch' \\| lock" in rows["batch"][5]
    assert rows["web"][4] == "7 min 50 s"
    page, _ = parse(html_path)
    assert "another bakery process is working on role 'batch' | lock" in page.all_text()


def test_empty_workspace_still_writes_both(tmp_path):
    html_path, md_path = write_summary(Workspace(tmp_path), release="1.0")
    page, raw = parse(html_path)
    assert "0 role(s)" in page.all_text()
    assert md_rows(md_path.read_text()) == []
