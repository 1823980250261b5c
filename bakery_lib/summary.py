"""Release summary: ``reports/summary.html`` and ``reports/summary.md`` for a workspace.

Built from the workspace's bake states (``.bakery/ROLE.json``) and, after ``bakery bake``, the
outcomes of that run: per role its status (succeeded, reused, failed, open), its AMI per region,
how long it took, a stage timeline and, for a failure, the reason.

summary.html is one self-contained file for Jenkins' HTML publisher: no script, no external URL,
every value HTML-escaped (Jinja2 autoescape). Jenkins serves published HTML under a strict Content
Security Policy that by default drops ``<style>`` and ``style=""``; so the timeline is inline SVG drawn
with presentation attributes (``x``, ``width``, ``fill``), which that policy leaves alone, and the
tables read well without any CSS. The ``<style>`` block only adds polish where the policy allows it.

summary.md is a Markdown table, one row per role, for a build description, a chat message or a PR.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from markupsafe import Markup

from .errors import BakeryError, UsageError
from .fsutil import atomic_write_text
from .inventory import Package, PackageDiff, load_package_diff
from .stages import ORDER  # unknown stage names are shown after these, by start time
from .state import BakeState, StageRecord, Workspace

if TYPE_CHECKING:
    from .bake import RoleOutcome

STATUS_MARK = {"succeeded": "✔", "reused": "↻", "failed": "✘", "open": "…", "unknown": "?"}
STAGE_MARK = {"succeeded": "✔", "failed": "✘", "skipped": "⤼", "running": "▶", "pending": "·"}
STAGE_FILL = {"succeeded": "#2e7d32", "failed": "#c62828", "running": "#1565c0", "skipped": "#9e9e9e",
              "pending": "#bdbdbd"}
STATUS_FILL = {"succeeded": "#2e7d32", "reused": "#6a1b9a", "failed": "#c62828", "open": "#1565c0",
               "unknown": "#616161"}

# Timeline geometry, in SVG user units (the SVG scales to the page width).
_LABEL_W = 230
_BAR_W = 760
_LANE_H = 16


@dataclass
class StageRow:
    name: str
    status: str
    offset: float | None  # seconds after the role's first stage started
    duration: float | None
    message: str

    @property
    def mark(self) -> str:
        return STAGE_MARK.get(self.status, "?")


@dataclass
class RoleRow:
    role: str
    status: str  # succeeded | reused | failed | open | unknown
    release: str = ""
    bake_id: str = ""
    amis: dict[str, str] = field(default_factory=dict)
    duration: float | None = None
    message: str = ""
    stages: list[StageRow] = field(default_factory=list)
    base_ami: str = ""
    platform: str = ""
    boot_test: str = ""  # passed | failed | disabled | "" (not run)
    reused: bool = False
    source: str = "workspace"  # workspace | this run | AMI tags (a bake of another workspace or process)
    packages: PackageDiff | None = None  # package changes against the role's previous AMI (attach_package_changes)

    @property
    def mark(self) -> str:
        return STATUS_MARK.get(self.status, "?")


def _stage_rows(state: BakeState) -> list[StageRow]:
    starts = [r.started_at for r in state.stages.values() if r.started_at is not None]
    t0 = min(starts) if starts else None

    def order(item: tuple[str, StageRecord]) -> tuple[int, float]:
        name, rec = item
        idx = ORDER.index(name) if name in ORDER else len(ORDER)
        return idx, rec.started_at or 0.0

    rows = []
    for name, rec in sorted(state.stages.items(), key=order):
        duration = rec.duration
        if duration is None and rec.started_at is not None and rec.finished_at is not None:
            duration = max(0.0, rec.finished_at - rec.started_at)
        offset = rec.started_at - t0 if (rec.started_at is not None and t0 is not None) else None
        rows.append(StageRow(name, rec.status, offset, duration, rec.message or ""))
    return rows


def _status(state: BakeState, failed: StageRow | None) -> str:
    if state.outcome in ("succeeded", "reused") and failed is None:
        return state.outcome
    if failed is not None or state.closed or state.outcome in ("failed", "cleaned"):
        return "failed"
    return "open"


def _message(state: BakeState, status: str, stages: list[StageRow], failed: StageRow | None) -> str:
    if status == "failed":
        return f"{failed.name}: {failed.message}" if failed else "the bake did not finish (cleaned up)"
    if status == "reused":
        return f"reused {state.image_id} (an available AMI with the same bake key); nothing was launched"
    if status == "open":
        running = next((s for s in stages if s.status == "running"), None)
        done = [s.name for s in stages if s.status in ("succeeded", "skipped")]
        return (f"stage {running.name} running (or its process was killed)" if running
                else f"in progress; last finished stage: {done[-1] if done else 'none'}")
    # Never an empty cell: a 200-row table with a blank column reads as missing data.
    return (f"published in {', '.join(sorted(state.amis))}" if state.amis else "baked") + fast_launch_note(state)


def fast_launch_note(state: BakeState) -> str:
    """Windows Fast Launch per region as publish last saw it ("" for a role without it)."""
    if not state.fast_launch:
        return ""
    return "; Windows Fast Launch " + ", ".join(f"{r} {s}" for r, s in sorted(state.fast_launch.items()))


def _from_state(state: BakeState) -> RoleRow:
    stages = _stage_rows(state)
    failed = next((s for s in stages if s.status == "failed"), None)
    status = _status(state, failed)
    spans = [(s.offset or 0.0) + (s.duration or 0.0) for s in stages if s.offset is not None]
    return RoleRow(state.role, status, state.release, state.bake_id, dict(state.amis),
                   max(spans) if spans else None, _message(state, status, stages, failed), stages,
                   base_ami=state.base_ami or "", platform=state.platform, boot_test=state.boot_test or "",
                   reused=state.reused)


def failures_first(rows: Sequence[RoleRow]) -> list[RoleRow]:
    """Failed (and unknown) roles first, then open, then the rest; by role name within each."""
    rank = {"failed": 0, "unknown": 1, "open": 2}
    return sorted(rows, key=lambda r: (rank.get(r.status, 3), r.role))


def release_rows(ws: Workspace, outcomes: Sequence[RoleOutcome] | None, release: str,
                 tagged: Sequence[RoleRow] = ()) -> list[RoleRow]:
    """Every bake of ``release`` known here: this run's roles, every other state of the workspace of that
    release (earlier runs, ``create-instance --bake``), and bakes of other workspaces or processes known
    from their AMIs' tags (``tagged``); the newest knowledge of a role wins, in that order."""
    rows = {r.role: r for r in collect(ws, outcomes)}
    for row in collect(ws):
        if row.release == release and row.role not in rows:
            rows[row.role] = row
    for row in tagged:
        if row.release == release and row.role not in rows:
            rows[row.role] = row
    return failures_first(list(rows.values()))


def rows_from_images(images: Sequence[dict[str, object]]) -> list[RoleRow]:
    """One row per role from its bakery AMIs (DescribeImages with their tags): the newest AMI of each role."""
    newest: dict[str, dict[str, object]] = {}
    for image in images:
        tags = {t["Key"]: t["Value"] for t in image.get("Tags") or []}  # type: ignore[attr-defined]
        role = tags.get("bakery:role")
        if not role:
            continue
        if role not in newest or str(image.get("CreationDate") or "") > str(newest[role].get("CreationDate") or ""):
            newest[role] = image
    rows = []
    for role, image in sorted(newest.items()):
        tags = {t["Key"]: t["Value"] for t in image.get("Tags") or []}  # type: ignore[attr-defined]
        test = tags.get("bakery:boot-test", "")
        failed = test == "failed" or image.get("State") == "failed"
        region = str(image.get("Region") or "")
        rows.append(RoleRow(role, "failed" if failed else "succeeded", tags.get("bakery:release", ""),
                            tags.get("bakery:bake-id", ""), {region: str(image["ImageId"])} if region else {},
                            None, f"known from the tags of {image['ImageId']} (baked by another workspace or process)",
                            base_ami=tags.get("bakery:base-ami", ""), platform=str(image.get("PlatformDetails") or
                                                                                   image.get("Platform") or ""),
                            boot_test=test, source="AMI tags"))
    return rows


def collect(ws: Workspace, outcomes: Sequence[RoleOutcome] | None = None) -> list[RoleRow]:
    """One row per role: the roles of ``outcomes`` when given (this run), else every state of the workspace."""
    by_outcome = {o.role: o for o in outcomes or ()}
    roles = sorted(by_outcome) if outcomes is not None else ws.roles_with_state()
    rows = []
    for role in roles:
        try:
            state = ws.load(role)
        except BakeryError as exc:
            state = None
            row = RoleRow(role, "unknown", message=str(exc))
        else:
            row = _from_state(state) if state is not None else RoleRow(role, "unknown", message="no bake state")
        outcome = by_outcome.get(role)
        if outcome is not None and outcome.refused and state is not None:
            # Refused (another process holds the role): its bake is the other process's to report.
            rows.append(row)
            continue
        if outcome is not None:
            # What this run saw wins over a state written before it (e.g. a lock held by another process).
            row.status = outcome.status if outcome.status in STATUS_MARK else "unknown"
            row.source = "this run"
            row.amis = dict(outcome.amis) or row.amis
            row.duration = outcome.duration
            if outcome.status == "failed":
                row.message = outcome.message + (f" (cleanup: {outcome.cleanup})" if outcome.cleanup else "")
            elif state is None:
                row.message = outcome.message
        rows.append(row)
    return rows


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@dataclass(frozen=True)
class Bar:
    stage: StageRow
    y: int
    x: float
    width: float
    fill: str


def _bars(row: RoleRow, scale: float) -> list[Bar]:
    """One lane per stage; x and width proportional to start offset and duration (all roles one scale)."""
    bars = []
    for lane, stage in enumerate(row.stages):
        y = lane * _LANE_H
        if stage.offset is None or stage.duration is None or scale <= 0:
            width, x = 0.0, float(_LABEL_W)
        else:
            x = _LABEL_W + stage.offset / scale * _BAR_W
            width = stage.duration / scale * _BAR_W
        bars.append(Bar(stage, y, round(x, 2), round(width, 2), STAGE_FILL.get(stage.status, "#757575")))
    return bars


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AMI Bakery summary{% if release %} — release {{ release }}{% endif %}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 1.5em; color: #212121; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin: 1.6em 0 .4em; border-bottom: 1px solid #e0e0e0; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #e0e0e0; padding: .25em .6em; text-align: left; vertical-align: top; font-size: .92em; }
th { background: #f5f5f5; }
.status { font-weight: bold; white-space: nowrap; }
.succeeded { color: #2e7d32; } .reused { color: #6a1b9a; } .failed { color: #c62828; }
.open { color: #1565c0; } .unknown { color: #616161; } .skipped { color: #757575; } .running { color: #1565c0; }
pre.failure { background: #ffebee; border-left: 4px solid #c62828; padding: .6em; white-space: pre-wrap; word-break: break-word; }
code { font-family: Menlo, Consolas, monospace; font-size: .95em; }
td.ids, td.ids code { white-space: nowrap; }
.meta { color: #616161; }
svg.timeline { width: 100%; max-width: 1100px; height: auto; }
</style>
</head>
<body>
<h1>AMI Bakery summary{% if release %} — release {{ release }}{% endif %}</h1>
<p class="meta">Generated {{ generated }} · {{ rows|length }} role(s){% for status, n in counts %} · {{ n }} {{ status }}{% endfor %}</p>

<table class="overview">
<thead><tr><th>Role</th><th>Status</th><th>Boot test</th><th>AMI per region</th><th>Base AMI</th><th>Platform</th><th>Reused</th><th>Duration</th><th>Details</th></tr></thead>
<tbody>
{% for row in rows %}
<tr id="row-{{ row.role }}">
<td><a href="#role-{{ row.role }}">{{ row.role }}</a></td>
<td class="status {{ row.status }}">{{ row.mark }} {{ row.status }}</td>
<td>{{ row.boot_test or "–" }}</td>
<td class="ids">{% for region, ami in row.amis|dictsort %}<code>{{ region }}</code>: <code>{{ ami }}</code>{% if not loop.last %}<br>{% endif %}{% else %}–{% endfor %}</td>
<td class="ids"><code>{{ row.base_ami or "–" }}</code></td>
<td>{{ row.platform or "–" }}</td>
<td>{{ "yes" if row.reused else "no" }}</td>
<td class="ids">{{ fmt(row.duration) }}</td>
<td>{{ row.message.splitlines()[0][:200] if row.message else "" }}</td>
</tr>
{% endfor %}
</tbody>
</table>

{% for row in rows %}
<section id="role-{{ row.role }}">
<h2>{{ row.role }} <span class="status {{ row.status }}">{{ row.mark }} {{ row.status }}</span></h2>
<p class="meta">release {{ row.release or "–" }} · bake {{ row.bake_id or "–" }} · {{ fmt(row.duration) }}</p>
{% if row.status == "failed" or row.status == "unknown" %}<pre class="failure">{{ row.message }}</pre>
{% elif row.message %}<p>{{ row.message }}</p>
{% endif %}
{% if row.packages %}{{ packages_html(row.packages) }}{% endif %}
{% set bars = bars_of(row) %}
{% if bars %}
<svg class="timeline" role="img" aria-label="stage timeline of {{ row.role }}" viewBox="0 0 {{ width }} {{ bars|length * lane + 4 }}" width="{{ width }}" height="{{ bars|length * lane + 4 }}">
{% for bar in bars %}
<g data-stage="{{ bar.stage.name }}">
<text x="0" y="{{ bar.y + 12 }}" font-size="11" font-family="sans-serif" fill="#424242">{{ bar.stage.mark }} {{ bar.stage.name }} {{ fmt(bar.stage.duration) if bar.stage.duration is not none else bar.stage.status }}</text>
<rect x="{{ label_w }}" y="{{ bar.y + 2 }}" width="{{ bar_w }}" height="{{ lane - 4 }}" fill="#f5f5f5"></rect>
{% if bar.width > 0 %}<rect class="bar" data-stage="{{ bar.stage.name }}" data-duration="{{ bar.stage.duration }}" x="{{ bar.x }}" y="{{ bar.y + 2 }}" width="{{ [bar.width, 1.5]|max }}" height="{{ lane - 4 }}" fill="{{ bar.fill }}"><title>{{ bar.stage.name }}: {{ bar.stage.status }}, {{ fmt(bar.stage.duration) }}</title></rect>{% endif %}
</g>
{% endfor %}
</svg>
<table class="stages">
<thead><tr><th>Stage</th><th>Status</th><th>Started</th><th>Duration</th><th>Message</th></tr></thead>
<tbody>
{% for stage in row.stages %}
<tr><td>{{ stage.name }}</td><td class="{{ stage.status }}">{{ stage.mark }} {{ stage.status }}{% if stage.status == "skipped" %} (reused AMI){% endif %}</td>
<td>{{ "+" ~ fmt(stage.offset) if stage.offset is not none else "–" }}</td><td>{{ fmt(stage.duration) }}</td>
<td>{{ stage.message.splitlines()[0][:300] if stage.message else "" }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}
</section>
{% endfor %}
</body>
</html>
"""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals["fmt"] = fmt_duration
    return env


def render_html(rows: Sequence[RoleRow], *, release: str | None, generated: float | None = None) -> str:
    spans = [r.duration for r in rows if r.stages and r.duration]
    scale = max(spans) if spans else 0.0

    def bars_of(row: RoleRow) -> list[Bar]:
        return _bars(row, scale)

    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    template = _environment().from_string(_TEMPLATE)
    return template.render(
        rows=list(rows), release=release, counts=sorted(counts.items()), bars_of=bars_of, packages_html=packages_html,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated if generated is not None else time.time())),
        width=_LABEL_W + _BAR_W + 10, label_w=_LABEL_W, bar_w=_BAR_W, lane=_LANE_H,
    )


def _md_cell(text: str) -> str:
    """One table cell: a single line, pipes escaped, HTML neutralised (Markdown renders inline HTML)."""
    text = " ".join(str(text).split())
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("\\", "\\\\"), ("|", "\\|"), ("`", "\\`")):
        text = text.replace(raw, escaped)
    return text


def render_markdown(rows: Sequence[RoleRow], *, release: str | None) -> str:
    lines = [f"# AMI Bakery summary{f' — release {_md_cell(release)}' if release else ''}", ""]
    lines.append("| Role | Status | Boot test | AMI per region | Base AMI | Platform | Reused | Duration | Details |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        amis = "<br>".join(f"{_md_cell(r)}: {_md_cell(a)}" for r, a in sorted(row.amis.items())) or "–"
        lines.append(
            f"| {_md_cell(row.role)} | {row.mark} {row.status} | {_md_cell(row.boot_test or '–')} | {amis} "
            f"| {_md_cell(row.base_ami or '–')} | {_md_cell(row.platform or '–')} | {'yes' if row.reused else 'no'} "
            f"| {fmt_duration(row.duration)} | {_md_cell(row.message.splitlines()[0][:300] if row.message else '')} |"
        )
    lines += packages_markdown(rows)
    return "\n".join(lines) + "\n"


def _release_of(rows: Sequence[RoleRow], release: str | None) -> str | None:
    if release:
        return release
    releases = {r.release for r in rows if r.release}
    return releases.pop() if len(releases) == 1 else None


def write_summary(ws: Workspace, outcomes: Sequence[RoleOutcome] | None = None, *,
                  release: str | None = None, now: float | None = None,
                  tagged: Sequence[RoleRow] = ()) -> tuple[Path, Path]:
    """Write ``reports/summary.html`` and ``reports/summary.md`` (atomically); returns their paths.

    ``release``: only the roles whose bake is of that release; none -> UsageError (exit 2), nothing written.
    After a bake (``outcomes`` and ``release``): the release's page, this run's roles and every earlier bake
    of the release (``release_rows``). Failures first."""
    if release and outcomes is not None:
        rows = release_rows(ws, outcomes, release, tagged)
    else:
        rows = failures_first(collect(ws, outcomes))
    if release and outcomes is None:
        here = sorted({r.release for r in rows if r.release})
        rows = [r for r in rows if r.release == release]
        if not rows:
            raise UsageError(f"no bake of release {release!r} in workspace {ws.root} "
                             f"(releases here: {', '.join(here) or 'none'}); nothing written")
    attach_package_changes(ws, rows)
    title = _release_of(rows, release)
    html_path = ws.reports_dir / "summary.html"
    md_path = ws.reports_dir / "summary.md"
    atomic_write_text(html_path, render_html(rows, release=title, generated=now))
    atomic_write_text(md_path, render_markdown(rows, release=title))
    return html_path, md_path


# --- Package changes per role against its previous AMI (artifacts/ROLE.packages.json, bakery_lib.inventory) ---

# Entries shown per list (added, removed, changed) and role: the page stays readable for large images.
PACKAGE_LIST_LIMIT = 50


def attach_package_changes(ws: Workspace, rows: Sequence[RoleRow]) -> None:
    """Give each row the package diff its bake wrote (bootstrap), when it is of that very bake."""
    for row in rows:
        diff = load_package_diff(ws.artifacts_dir, row.role)
        if diff is not None and row.bake_id and diff.bake_id == row.bake_id:
            row.packages = diff


def _change_lists(diff: PackageDiff) -> list[tuple[str, list[str]]]:
    def label(p: Package) -> str:
        arch = f" ({p.arch})" if p.arch and p.arch not in ("all", "noarch") else ""
        return f"{p.name}{arch}{' [hotfix]' if p.kind == 'hotfix' else ''}"

    return [("added", [f"{label(p)} {p.version}".rstrip() for p in diff.added]),
            ("removed", [f"{label(p)} {p.version}".rstrip() for p in diff.removed]),
            ("changed", [f"{label(a)} {a.version} → {b.version}" for a, b in diff.changed])]


def _package_headline(diff: PackageDiff) -> str:
    if not diff.compared:
        return f"{diff.packages} packages; {diff.note}"
    return (f"{diff.packages} packages; against {diff.previous_ami} (release {diff.previous_release or '?'}): "
            f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed")


_PACKAGES_TEMPLATE = """<div class="packages">
<h3>Packages</h3>
<p class="meta">{{ headline }} · SBOM <code>{{ diff.sbom }}</code></p>
{% for kind, items in lists if items %}
<details{% if items|length <= 20 %} open{% endif %}><summary>{{ items|length }} {{ kind }}</summary>
<ul class="packages-{{ kind }}">{% for item in items[:limit] %}<li><code>{{ item }}</code></li>{% endfor %}{% if items|length > limit %}<li>… and {{ items|length - limit }} more (artifacts/{{ diff.role }}.packages.json)</li>{% endif %}</ul>
</details>
{% endfor %}
</div>
"""


def packages_html(diff: PackageDiff) -> Markup:
    """The per-role "Packages" block of summary.html (HTML-escaped like the rest of the page)."""
    html = _environment().from_string(_PACKAGES_TEMPLATE).render(
        diff=diff, headline=_package_headline(diff), lists=_change_lists(diff), limit=PACKAGE_LIST_LIMIT)
    return Markup(html)


def packages_markdown(rows: Sequence[RoleRow]) -> list[str]:
    """summary.md's "Package changes" section: one paragraph per role that has a package diff."""
    with_diff = [r for r in rows if r.packages is not None]
    if not with_diff:
        return []
    lines = ["", "## Package changes against each role's previous AMI", ""]
    for row in with_diff:
        diff = row.packages
        assert diff is not None
        lines.append(f"**{_md_cell(row.role)}**: {_md_cell(_package_headline(diff))}")
        for kind, items in _change_lists(diff):
            if items:
                shown = ", ".join(_md_cell(i) for i in items[:PACKAGE_LIST_LIMIT])
                more = f" … and {len(items) - PACKAGE_LIST_LIMIT} more" if len(items) > PACKAGE_LIST_LIMIT else ""
                lines.append(f"- {kind}: {shown}{more}")
        lines.append("")
    return lines
