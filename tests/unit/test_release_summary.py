"""The release summary: every bake of the release (this run, earlier runs in the workspace, other
workspaces and processes known from their AMIs' tags), failures first, with boot-test, base AMI,
platform and reuse columns; at 200 roles it stays readable in a real browser (headless Chromium):
no id wraps, no column is empty. The same holds for the page built from AWS alone
(``bakery summary --from-aws``, :mod:`bakery_lib.summary_release`): 200 roles in two regions.
"""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess

import pytest

from bakery_lib.bake import RoleOutcome
from bakery_lib.state import BakeState, StageRecord, Workspace
from bakery_lib.summary import rows_from_images, write_summary
from bakery_lib.summary_release import ImageRow, _row, render_html, render_markdown

T0 = 1_700_000_000.0
RELEASE = "7.1.0"


def _state(role: str, i: int, **kw) -> BakeState:
    s = BakeState(role=role, bake_id=f"20260101{i:06d}-{i:06x}", release=RELEASE, region="us-east-1",
                  platform="windows" if i % 10 == 3 else "linux", base_ami=f"ami-0{i:016x}", **kw)
    s.stages["preflight"] = StageRecord("succeeded", T0, T0 + 2, 2.0, "ok", 1)
    return s


def _image(role: str, image_id: str, boot_test: str) -> dict:
    tags = {"bakery:role": role, "bakery:release": RELEASE, "bakery:bake-id": "20260101000000-0f0f0f",
            "bakery:base-ami": "ami-0123456789abcdef0", "bakery:boot-test": boot_test}
    return {"ImageId": image_id, "State": "available", "CreationDate": "2026-01-01T00:00:00Z", "Region": "eu-west-1",
            "PlatformDetails": "Linux/UNIX", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def md_rows(ws: Workspace) -> list[list[str]]:
    lines = (ws.reports_dir / "summary.md").read_text().splitlines()[4:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if line.startswith("| ")]


def test_the_release_page_accumulates_every_bake_of_the_release(tmp_path):
    ws = Workspace(tmp_path)
    ws.save(_state("web", 1, outcome="succeeded", closed=True, amis={"us-east-1": "ami-0aaa0000000000001"},
                   boot_test="passed"))  # an earlier `bakery bake` of the release
    ws.save(BakeState(role="old", bake_id="20250101000000-000001", release="7.0.0", region="us-east-1",
                      platform="linux"))  # another release: not on this page
    billing = _state("billing", 3, outcome="failed", closed=True)
    billing.stages["bootstrap"] = StageRecord("failed", T0 + 2, T0 + 40, 38.0, "chef-client exited 1", 1)
    ws.save(billing)
    # `create-instance billing --bake` ran now: its outcome, and the other bakes of the release stay.
    outcomes = [RoleOutcome("billing", "failed", "bootstrap: chef-client exited 1", 40.0)]
    tagged = rows_from_images([_image("reporting", "ami-0ccc0000000000001", "passed"),
                               _image("web", "ami-0ddd0000000000001", "passed")])
    write_summary(ws, outcomes, release=RELEASE, tagged=tagged)
    rows = md_rows(ws)
    assert [r[0] for r in rows] == ["billing", "reporting", "web"]  # failures first; 7.0.0 left out
    by_role = {r[0]: r for r in rows}
    assert by_role["web"][3] == "us-east-1: ami-0aaa0000000000001"  # the workspace's own record wins
    assert by_role["web"][2] == "passed" and by_role["web"][4] == "ami-00000000000000001"
    assert by_role["billing"][5] == "windows"
    assert by_role["reporting"][3] == "eu-west-1: ami-0ccc0000000000001"  # another workspace's bake
    assert "another workspace or process" in by_role["reporting"][8]


MEASURE = """<script>
window.addEventListener('load', () => {
  const wrapped = [];
  for (const el of document.querySelectorAll('table.overview code')) {
    if (el.getClientRects().length > 1) wrapped.push(el.textContent);
  }
  const table = document.querySelector('table.overview');
  const heads = [...table.querySelectorAll('thead th')].map(th => th.textContent);
  const filled = heads.map(() => false);
  for (const tr of table.querySelectorAll('tbody tr')) {
    [...tr.children].forEach((td, i) => { const t = td.textContent.trim(); if (t && t !== '–') filled[i] = true; });
  }
  const out = document.createElement('pre');
  out.id = 'measured';
  out.textContent = JSON.stringify({wrapped, empty: heads.filter((h, i) => !filled[i]), rows: table.tBodies[0].rows.length});
  document.body.appendChild(out);
});
</script>"""


class _Measured(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.inside = self.inside or dict(attrs).get("id") == "measured"

    def handle_endtag(self, tag):
        if tag == "pre":
            self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


def _workspace_page(tmp_path) -> str:
    ws = Workspace(tmp_path / "ws")
    for i in range(200):
        state = _state(f"service-{i:03d}", i, outcome="succeeded", closed=True, boot_test="passed",
                       amis={"us-east-1": f"ami-0{i:016x}", "eu-west-1": f"ami-1{i:016x}"})
        state.reused = i % 4 == 0
        ws.save(state)
    html_path, _ = write_summary(ws, release=RELEASE)
    return html_path.read_text()


def _aws_row(i: int, region: str) -> ImageRow:
    status = "failed" if i % 50 == 7 else "reused" if i % 4 == 0 else "baked"
    return ImageRow(f"service-{i:03d}", region, f"ami-{i % 2}{i:016x}", status, state="available",
                    made_for="7.0.9" if status == "reused" else RELEASE, bake_id=f"20260101{i:06d}-{i:06x}",
                    boot_test="failed" if status == "failed" else "passed",
                    deprecation="2026-04-01T00:00:00.000Z", latest=i % 3 != 0,
                    protection="enabled-with-cooldown" if i % 3 else "disabled",
                    sharing="account 111122223333, 444455556666" if i % 5 == 0 else "private",
                    base_ami="ami-0123456789abcdef0", build=f"https://jenkins.example.com/job/ami-bake-service-{i:03d}/{i}/",
                    name=f"bakery-service-{i:03d}-{RELEASE}-20260101{i:06d}-{i:06x}", created="2026-01-01T00:00:00.000Z",
                    notes=["superseded: latest is ami-0ffffffffffffffff"] if i % 3 == 0 else [])


def _aws_page(tmp_path) -> str:
    rows = [_aws_row(i, region) for i in range(200) for region in ("us-east-1", "eu-west-1")]
    return render_html(rows, release=RELEASE, regions=["us-east-1", "eu-west-1"])


@pytest.mark.parametrize(("shape", "expected_rows"), [("workspace", 200), ("from-aws", 400)])
def test_a_200_role_summary_reads_well_in_headless_chromium(tmp_path, shape, expected_rows):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (apt-get install chromium): the summary's layout cannot be checked")
    text = _workspace_page(tmp_path) if shape == "workspace" else _aws_page(tmp_path)
    page = tmp_path / "measure.html"
    page.write_text(text.replace("</body>", MEASURE + "</body>"))
    profile = tmp_path / "profile"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--window-size=1280,900", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    parser = _Measured()
    parser.feed(proc.stdout)
    assert parser.text, f"no measurement from chromium: {proc.stderr[-2000:]}"
    measured = json.loads(parser.text)
    assert measured["rows"] == expected_rows
    assert measured["wrapped"] == [], f"ids wrap: {measured['wrapped'][:5]}"
    assert measured["empty"] == [], f"empty columns: {measured['empty']}"



def test_the_page_from_aws_escapes_tags_and_links_only_http_builds():
    """Tags are anyone's text: escaped everywhere, and a ``javascript:`` "build" is never a link."""
    hostile = _aws_row(1, "us-east-1")
    hostile.build = "javascript:alert(1)"
    hostile.notes = ["<script>x</script> | pipe"]
    page = render_html([hostile, _aws_row(2, "us-east-1")], release="<b>", regions=["us-east-1"])
    assert "<script>x" not in page and "&lt;script&gt;x" in page and "<b>" not in page
    assert 'href="javascript:' not in page
    assert 'href="https://jenkins.example.com/job/ami-bake-service-002/2/">ami-bake-service-002 #2</a>' in page
    md = render_markdown([hostile], release="7.1")
    assert "&lt;script&gt;x&lt;/script&gt; \\| pipe" in md
    assert md.splitlines()[2].count("|") == md.splitlines()[4].count("|") - 1  # one escaped pipe in the row


@pytest.mark.parametrize(("state", "tags", "status"), [
    ("available", {"bakery:release": RELEASE}, "baked"), ("available", {"bakery:release": "7.0.9"}, "reused"),
    ("failed", {"bakery:release": RELEASE}, "failed"),
    ("available", {"bakery:release": RELEASE, "bakery:boot-test": "failed"}, "failed"),
    ("pending", {"bakery:release": RELEASE}, "pending"), ("disabled", {"bakery:release": "7.0.9"}, "disabled"),
    ("deregistered", {"bakery:release": RELEASE}, "missing")])
def test_the_status_of_an_ami_of_the_release(state, tags, status):
    image = {"ImageId": "ami-0123456789abcdef0", "State": state,
             "Tags": [{"Key": k, "Value": v} for k, v in {"bakery:role": "web", **tags}.items()]}
    assert _row("us-east-1", image, RELEASE, "private").status == status
