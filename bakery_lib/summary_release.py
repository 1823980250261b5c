"""The release summary from AWS alone: ``bakery summary --release V --from-aws``.

For an operator on another machine, or after the workspace that baked the release is gone: every AMI
of release V, per role and region, found in the account and nowhere else, written to the same
``reports/summary.html`` and ``reports/summary.md`` as the workspace summary (:mod:`bakery_lib.summary`).

What belongs to release V, per region:

- the AMIs tagged ``bakery:release=V`` (and ``bakery:created-by=bakery``): baked for V (their copies in
  other regions carry the same tags);
- the AMIs that ``/bakery/ROLE/latest`` pointed at for V: a role whose inputs did not change reuses an
  older AMI, which keeps the release tag of the bake that made it. ``publish`` writes the parameter with
  the description "... (release V, bake ID)", so its history (GetParameterHistory; SSM keeps a
  parameter's last 100 versions, AWS Systems Manager User Guide, "Working with parameter versions")
  says which AMI each release published.

For each: its state, boot-test result, ``DeprecationTime``, ``DeregistrationProtection`` (both fields of
the EC2 API's ``Image`` shape, docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Image.html), its
launch permissions (``DescribeImageAttribute`` ``launchPermission``: accounts, organizations, OUs, or
public), its base AMI (``bakery:base-ami``), the Jenkins build that made it (``bakery:build``) and
whether it is the role's ``latest`` in that region now.

Read-only: DescribeImages (paged, ``IncludeDeprecated``/``IncludeDisabled``: an owner's deprecated AMIs
are listed anyway, per the DescribeImages reference, disabled ones only when asked), DescribeParameters
(paged), GetParameterHistory (paged), DescribeImageAttribute. Nothing in the account changes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jinja2

from .aws import Aws, tags_of
from .ec2.images import BUILD_TAG
from .errors import AwsError, UsageError
from .fsutil import atomic_write_text
from .stages.publish import _WRITER_RE as WRITER_RE
from .stages.publish import latest_parameter
from .state import Workspace
from .summary import _md_cell

MARK = {"failed": "✘", "missing": "?", "disabled": "⊘", "pending": "…", "baked": "✔", "reused": "↻"}
RANK = {"failed": 0, "missing": 1, "disabled": 1, "pending": 2}
_LATEST_RE = re.compile(r"^/bakery/(?P<role>[a-z][a-z0-9_-]{0,62})/latest$")


@dataclass
class ImageRow:
    """One AMI of the release: a role in a region."""

    role: str
    region: str
    image_id: str
    status: str  # baked | reused | failed | pending | disabled | missing
    state: str = ""  # EC2's image state
    made_for: str = ""  # the release whose bake made it (bakery:release)
    bake_id: str = ""
    boot_test: str = ""
    deprecation: str = ""  # DeprecationTime, "" when none is set
    protection: str = "disabled"  # DeregistrationProtection
    sharing: str = "private"
    base_ami: str = ""
    build: str = ""  # bakery:build: BUILD_URL or JOB#NUMBER
    latest: bool = False  # /bakery/ROLE/latest in this region points at it now
    name: str = ""
    created: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def mark(self) -> str:
        return MARK.get(self.status, "?")

    @property
    def build_label(self) -> str:
        """``JOB #N`` from a Jenkins build URL (``.../job/A/job/B/42/``), else the tag as it is."""
        parts = [p for p in urlparse(self.build).path.split("/") if p]
        if len(parts) >= 3 and parts[-1].isdigit() and "job" in parts:
            jobs = [parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "job"]
            return f"{'/'.join(jobs)} #{parts[-1]}"
        return self.build.replace("#", " #")

    @property
    def build_href(self) -> str:
        """A link only to an http(s) URL: a tag is anyone's text, and ``javascript:`` must not become a link."""
        return self.build if urlparse(self.build).scheme in ("http", "https") else ""


def sharing_text(image: dict[str, Any], permissions: list[dict[str, Any]]) -> str:
    """What ``launchPermission`` says, shortest first: public, organizations, OUs, accounts; else private."""
    if image.get("Public") or any(p.get("Group") == "all" for p in permissions):
        return "public"
    parts = []
    for key, label in (("OrganizationArn", "org"), ("OrganizationalUnitArn", "OU"), ("UserId", "account")):
        values = sorted(str(p[key]).rsplit("/", 1)[-1] for p in permissions if p.get(key))
        if values:
            parts.append(f"{label} {', '.join(values)}")
    return "; ".join(parts) or "private"


def _status(image: dict[str, Any], tags: dict[str, str], release: str) -> str:
    state = image.get("State", "")
    if state in ("failed", "invalid", "error") or tags.get("bakery:boot-test") == "failed":
        return "failed"
    if state in ("pending", "disabled"):
        return state  # disabled: DisableImage made it unlaunchable (EC2 API reference, API_Image: State)
    if state == "deregistered":  # listed for a short while after DeregisterImage (DescribeImages reference)
        return "missing"
    return "baked" if tags.get("bakery:release") == release else "reused"


def _row(region: str, image: dict[str, Any], release: str, sharing: str) -> ImageRow:
    tags = tags_of(image)
    return ImageRow(
        role=tags.get("bakery:role", "?"), region=region, image_id=str(image["ImageId"]),
        status=_status(image, tags, release), state=str(image.get("State", "")),
        made_for=tags.get("bakery:release", ""), bake_id=tags.get("bakery:bake-id", ""),
        boot_test=tags.get("bakery:boot-test", ""), deprecation=str(image.get("DeprecationTime") or ""),
        protection=str(image.get("DeregistrationProtection") or "disabled"), sharing=sharing,
        base_ami=tags.get("bakery:base-ami", ""), build=tags.get(BUILD_TAG, ""),
        name=str(image.get("Name", "")), created=str(image.get("CreationDate", "")))


@dataclass
class _Published:
    """What ``/bakery/ROLE/latest``'s history says of one role in one region."""

    for_release: list[str] = field(default_factory=list)  # AMIs written for the release, oldest first
    current: str = ""


class _RegionSurvey:
    def __init__(self, aws: Aws, region: str, release: str):
        self.aws, self.region, self.release = aws, region, release

    def tagged(self) -> list[dict[str, Any]]:
        return self.aws.describe_images(self.region, Owners=["self"], IncludeDeprecated=True, IncludeDisabled=True,
                                        Filters=[{"Name": "tag:bakery:release", "Values": [self.release]},
                                                 {"Name": "tag:bakery:created-by", "Values": ["bakery"]}])

    def published(self) -> dict[str, _Published]:
        params = self.aws.paginate("ssm", self.region, "DescribeParameters", "Parameters", ParameterFilters=[
            {"Key": "Name", "Option": "BeginsWith", "Values": ["/bakery/"]}])
        out: dict[str, _Published] = {}
        for name in sorted({str(p["Name"]) for p in params}):
            match = _LATEST_RE.match(name)
            if not match:
                continue
            history = self.aws.paginate("ssm", self.region, "GetParameterHistory", "Parameters", Name=name)
            history.sort(key=lambda h: int(h.get("Version", 0)))
            mine = out.setdefault(match.group("role"), _Published())
            for version in history:
                writer = WRITER_RE.search(str(version.get("Description") or ""))
                if writer and writer.group("release") == self.release:
                    mine.for_release.append(str(version["Value"]))
            mine.current = str(history[-1]["Value"]) if history else ""
        return out

    def by_ids(self, ids: list[str]) -> list[dict[str, Any]]:
        """Reused AMIs (tagged with the release that made them), by an ``image-id`` filter: asked by
        ``ImageIds``, one deregistered AMI would make EC2 answer ``InvalidAMIID.NotFound`` for them all.
        At most 200 values per filter (EC2 API reference, "Filter")."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), 200):
            found += self.aws.describe_images(self.region, Owners=["self"], IncludeDeprecated=True,
                                              IncludeDisabled=True,
                                              Filters=[{"Name": "image-id", "Values": ids[start:start + 200]}])
        return found

    def sharing(self, image: dict[str, Any]) -> str:
        try:
            found = self.aws.call("ec2", self.region, "DescribeImageAttribute", ImageId=image["ImageId"],
                                  Attribute="launchPermission")
        except AwsError as exc:  # a report: one unreadable attribute is said, not fatal
            return f"unknown ({exc.code})"
        return sharing_text(image, list(found.get("LaunchPermissions") or []))

    def rows(self) -> list[ImageRow]:
        tagged = self.tagged()
        published = self.published()
        by_id = {str(i["ImageId"]): i for i in tagged}
        wanted = {ami for p in published.values() for ami in p.for_release if ami not in by_id}
        by_id.update({str(i["ImageId"]): i for i in self.by_ids(sorted(wanted))})
        per_role: dict[str, list[dict[str, Any]]] = {}
        for image in by_id.values():
            per_role.setdefault(tags_of(image).get("bakery:role", "?"), []).append(image)
        rows = [self._role_row(role, images, published.get(role, _Published()))
                for role, images in per_role.items()]
        for role, pub in published.items():  # published for the release, and gone since
            if role not in per_role and pub.for_release:
                rows.append(ImageRow(role, self.region, pub.for_release[-1], "missing", notes=[
                    f"/bakery/{role}/latest pointed at {pub.for_release[-1]} for release {self.release}; "
                    "that AMI no longer exists (deregistered)"]))
        return rows

    def _role_row(self, role: str, images: list[dict[str, Any]], pub: _Published) -> ImageRow:
        """The role's AMI of the release here: the one published for it last, else the newest."""
        images.sort(key=lambda i: str(i.get("CreationDate", "")))
        chosen = next((i for ami in reversed(pub.for_release) for i in images if i["ImageId"] == ami), images[-1])
        row = _row(self.region, chosen, self.release, self.sharing(chosen))
        row.latest = pub.current == row.image_id
        others = [str(i["ImageId"]) for i in images if i is not chosen]
        if row.status == "reused":
            row.notes.append(f"reused: baked for release {row.made_for or '?'} (same bake inputs)")
        if others:
            row.notes.append(f"also of this release here: {', '.join(others)}")
        if pub.current and not row.latest:
            row.notes.append(f"superseded: latest is {pub.current}")
        return row


def survey(aws: Aws, regions: Sequence[str], release: str,
           log: Callable[[str], None] = lambda m: None) -> list[ImageRow]:
    """Every AMI of ``release`` in ``regions``, failures first, then by role and region."""
    rows: list[ImageRow] = []
    for region in sorted(set(regions)):
        found = _RegionSurvey(aws, region, release).rows()
        log(f"{region}: {len(found)} AMI(s) of release {release}")
        rows += found
    return sorted(rows, key=lambda r: (RANK.get(r.status, 3), r.role, r.region))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AMI Bakery summary — release {{ release }} (from AWS)</title>
<style>
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 1.5em; color: #212121; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin: 1.6em 0 .4em; border-bottom: 1px solid #e0e0e0; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #e0e0e0; padding: .25em .6em; text-align: left; vertical-align: top; font-size: .92em; }
th { background: #f5f5f5; }
.status { font-weight: bold; white-space: nowrap; }
.baked { color: #2e7d32; } .reused { color: #6a1b9a; } .failed { color: #c62828; } .missing { color: #616161; }
.pending { color: #1565c0; } .disabled { color: #616161; }
code { font-family: Menlo, Consolas, monospace; font-size: .95em; }
td.ids, td.ids code, td.when { white-space: nowrap; }
.meta { color: #616161; }
</style>
</head>
<body>
<h1>AMI Bakery summary — release {{ release }} (from AWS)</h1>
<p class="meta">Generated {{ generated }} · {{ roles }} role(s), {{ rows|length }} AMI(s) in {{ regions|join(", ") }}{% for status, n in counts %} · {{ n }} {{ status }}{% endfor %} · from the AMIs' tags and the history of <code>/bakery/ROLE/latest</code></p>

<table class="overview">
<thead><tr><th>Role</th><th>Region</th><th>Status</th><th>AMI</th><th>Baked for</th><th>Boot test</th><th>Latest</th><th>Deprecation</th><th>Deregistration protection</th><th>Sharing</th><th>Base AMI</th><th>Jenkins build</th><th>Details</th></tr></thead>
<tbody>
{% for row in rows %}
<tr id="row-{{ row.role }}-{{ row.region }}">
<td><a href="#role-{{ row.role }}">{{ row.role }}</a></td>
<td class="ids"><code>{{ row.region }}</code></td>
<td class="status {{ row.status }}">{{ row.mark }} {{ row.status }}</td>
<td class="ids"><code>{{ row.image_id }}</code></td>
<td>{{ row.made_for or "–" }}</td>
<td>{{ row.boot_test or "–" }}</td>
<td>{{ "yes" if row.latest else "no" }}</td>
<td class="when">{{ row.deprecation or "none" }}</td>
<td>{{ row.protection }}</td>
<td>{{ row.sharing }}</td>
<td class="ids"><code>{{ row.base_ami or "–" }}</code></td>
<td>{% if row.build_href %}<a href="{{ row.build_href }}">{{ row.build_label }}</a>{% else %}{{ row.build_label or "–" }}{% endif %}</td>
<td>{{ row.notes|join("; ") if row.notes else (row.state or "–") }}</td>
</tr>
{% endfor %}
</tbody>
</table>

{% for role, items in by_role %}
<section id="role-{{ role }}">
<h2>{{ role }}</h2>
<table class="images">
<thead><tr><th>Region</th><th>AMI</th><th>Name</th><th>Created</th><th>State</th><th>Bake</th></tr></thead>
<tbody>
{% for row in items %}
<tr><td><code>{{ row.region }}</code></td><td><code>{{ row.image_id }}</code></td><td>{{ row.name or "–" }}</td>
<td class="when">{{ row.created or "–" }}</td><td>{{ row.state or row.status }}</td><td><code>{{ row.bake_id or "–" }}</code></td></tr>
{% endfor %}
</tbody>
</table>
</section>
{% endfor %}
</body>
</html>
"""


def render_html(rows: Sequence[ImageRow], *, release: str, regions: Sequence[str], generated: float | None = None) -> str:
    counts: dict[str, int] = {}
    by_role: dict[str, list[ImageRow]] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
        by_role.setdefault(row.role, []).append(row)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(_TEMPLATE).render(
        rows=list(rows), release=release, regions=sorted(set(regions)), counts=sorted(counts.items()),
        roles=len(by_role), by_role=list(by_role.items()),
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated if generated is not None else time.time())))


def render_markdown(rows: Sequence[ImageRow], *, release: str) -> str:
    lines = [f"# AMI Bakery summary — release {_md_cell(release)} (from AWS)", "",
             "| Role | Region | Status | AMI | Baked for | Boot test | Latest | Deprecation | Deregistration protection "
             "| Sharing | Base AMI | Jenkins build | Details |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r.role, r.region, f"{r.mark} {r.status}", r.image_id, r.made_for or "–", r.boot_test or "–",
                 "yes" if r.latest else "no", r.deprecation or "none", r.protection, r.sharing, r.base_ami or "–",
                 r.build or "–", "; ".join(r.notes) or r.state or "–"]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_release_summary(ws: Workspace, aws: Aws, regions: Sequence[str], release: str, *,
                          now: float | None = None, log: Callable[[str], None] = lambda m: None) -> tuple[Path, Path]:
    """Write ``reports/summary.html`` and ``reports/summary.md`` of ``release`` from AWS alone.

    No AMI of the release in ``regions``: UsageError (exit 2, as ``bakery summary --release`` without a bake
    of it), nothing written."""
    if not regions:
        raise UsageError("--from-aws needs a region: give --region REGION (or a catalogue whose roles name them)")
    rows = survey(aws, regions, release, log)
    if not rows:
        raise UsageError(f"no AMI of release {release!r} in {', '.join(sorted(set(regions)))}: none is tagged "
                         f"bakery:release={release} and no {latest_parameter('ROLE')} parameter was written for it; "
                         "nothing written")
    html_path = ws.reports_dir / "summary.html"
    md_path = ws.reports_dir / "summary.md"
    atomic_write_text(html_path, render_html(rows, release=release, regions=regions, generated=now))
    atomic_write_text(md_path, render_markdown(rows, release=release))
    return html_path, md_path
