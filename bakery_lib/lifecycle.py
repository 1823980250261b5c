"""AMI lifecycle: ``bakery prune`` (old AMIs of a role) and ``bakery reap`` (what killed runs left behind).

Both decide first and act second: every removal goes through one executor (``CleanupReport``), which
carries it out or, with ``dry_run``, only shows it; every resource looked at gets one report line with
the action taken (or that would be taken) and the reason. A dry run makes only Describe/Get/List calls.

prune, per region of the role:
  DescribeImages (Owners=self, tags ``bakery:role`` and ``bakery:created-by=bakery``), then for the
  candidates: DescribeInstances (filter image-id; an AMI that an existing instance runs is kept),
  DescribeLaunchTemplateVersions ($Default and $Latest of ``launch_template``; a missing template is
  fine), SSM GetParameter ``/bakery/ROLE/latest``. The newest ``keep`` *available* AMIs are kept (a
  failed AMI is never a rollback target, so it does not use up a place); pending ones belong to a bake
  in progress and are left to that bake or to ``reap``. Deleting is DeregisterImage, then
  DeleteSnapshot for each snapshot of the image's block device mappings.
  When any protection cannot be checked in a region, nothing is deleted there.

reap: look, decide, then act.
  1. Look (Describe/List calls only), per region: live instances tagged ``bakery:bake-id`` (any purpose
     but ``launch``: the bake instance, a boot test's), bakery images (``bakery:created-by=bakery``),
     snapshots tagged ``bakery:bake-id`` and the images that use them; then the Chef nodes and clients.
  2. Decide per bake and region. A bake stays when a workspace state of it is open, when one of its
     instances is alive and not expired (``bakery:expires-at`` + ``older_than``), when it has an
     available AMI and a pending one (a copy in progress), when another image uses one of its
     snapshots, or, once it has no instance, when its leftovers are younger than ``older_than``.
     Every resource of a bake that stays gets a "kept" line with the reason.
  3. Act: each abandoned bake goes through the same teardown loop as ``bakery cleanup``
     (``bakery_lib.cleanup.teardown``: every stage's cleanup, in reverse), on a record built from its
     tags (``TagContext``: no state file is written). Its stages' cleanups find what they made by the
     bake id, so a new stage's leftovers (a boot test's instance) are reaped as soon as it is registered.
     ``--dry-run`` runs the same loop with a display-only executor.
  Chef: names ``bake-ROLE-BAKEID`` (the bakery's own naming) go with their bake's teardown, or on their
  own when nothing of the bake is left in AWS; a name a live instance is tagged with
  (``bakery:chef-node``), or of a bake that stays, is kept. Chef unreachable: the AWS part still runs,
  the report says why Chef was skipped, and the exit code is 1.
  Instances of purpose ``launch``, available AMIs (except one that failed its boot test, or whose bake
  was stopped during it: nothing may use those) and anything without the bakery's tags are never
  touched. Every removal tolerates "already gone", so reap is idempotent and safe in a cron job.
  ``bake_id`` (``bakery reap --bake-id ID``): only that bake, whatever its expiry and age (the operator
  says the bake is abandoned), from any workspace.
  Not yet listed (EC2 eventual consistency: an instance launched seconds ago is missing from filtered
  describes and answers NotFound by id): an instance a workspace state records but the survey did not
  list is looked up by id (found: it joins the survey); one not found, or a ``--bake-id`` bake started
  less than ``ABSENT_GRACE`` ago of which nothing is listed (no instance, not even a terminated one), is
  an error (exit 1, "run reap again"): reap never calls such a bake clean, and a later run gets it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .aws import Aws, tags_of
from .catalog import RoleSpec
from .cleanup import TagContext, teardown
from .errors import AwsError, BakeryError, UsageError
from .resources import deregister_with_snapshots, snapshot_ids
from .stages.base import CleanupReport, Removal
from .state import BakeState
from .waits import ABSENT_GRACE

if TYPE_CHECKING:
    from .chef import ChefClient

Log = Callable[[str], None]

# Instance states in which an instance still exists (and may be started again from its AMI).
EXISTING_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
# States of a bake instance that reap may terminate, and that keep a Chef node alive.
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
UNFINISHED_IMAGE_STATES = {"pending"}
BROKEN_IMAGE_STATES = {"failed", "invalid", "error"}
# ``bake-ROLE-BAKEID`` with the bake id of ``state.new_bake_id`` (UTC stamp + 6 hex digits). Only names of
# exactly this shape are the bakery's: a hand-made node called ``bake-server-01`` is never deleted.
CHEF_NODE_RE = re.compile(r"^bake-(?P<role>[a-z][a-z0-9_-]{0,62})-(?P<bake>(?P<stamp>\d{14})-[0-9a-f]{6})$")
_CHUNK = 195  # DescribeInstances accepts at most 200 values per filter


def _quiet(_: str) -> None:
    pass


# --- shared helpers --------------------------------------------------------------------------------


def parse_duration(text: str, *, option: str = "--older-than") -> float:
    """``90s``, ``45m``, ``2h``, ``3d``, ``1w`` or combinations like ``1h30m`` -> seconds.

    A bare number is refused (except ``0``): in the catalogue a bare number means minutes, so on the
    command line it would be ambiguous, and a cron job deleting things must not guess.
    """
    value = text.strip().lower()
    if value == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", value)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw])", "", value).strip():
        raise UsageError(f"{option} {text!r}: expected a duration such as 90s, 45m, 2h, 3d, 1w or 1h30m")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return float(sum(float(n) * unit[u] for n, u in parts))


def parse_time(value: Any) -> float | None:
    """An AWS/ISO 8601 time (``2024-05-01T12:00:00Z``, ``...000Z``, a datetime) -> epoch seconds (UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _newest_first_key(image: dict[str, Any]) -> tuple[str, str, str]:
    # CreationDate has a resolution of one second; the bake id (a UTC stamp first) breaks ties.
    return (image.get("CreationDate") or "", tags_of(image).get("bakery:bake-id", ""), image["ImageId"])


# --- the executor's pacing --------------------------------------------------------------------------


@dataclass
class _Pace:
    """What the removal executor (``CleanupReport.attempt``) needs from prune: a log and a paced sleep."""

    log_fn: Log
    sleep_fn: Callable[[float], None]
    poll: float

    @property
    def poll_interval(self) -> float:
        return self.poll

    def log(self, message: str) -> None:
        self.log_fn(message)

    def sleep(self, seconds: float | None = None) -> None:
        self.sleep_fn(self.poll if seconds is None else seconds)


# --- prune -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmiDecision:
    """What prune did (or would do) with one AMI, and why."""

    region: str
    image_id: str
    name: str
    created: str
    state: str
    action: str  # kept | deleted | would delete | failed
    reason: str
    snapshots: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.region} {self.image_id} {self.name} ({self.state}, {self.created or '?'}): {self.action}: {self.reason}"


@dataclass
class PruneReport:
    role: str
    keep: int
    dry_run: bool
    decisions: list[AmiDecision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def deleted(self) -> list[AmiDecision]:
        return [d for d in self.decisions if d.action in ("deleted", "would delete")]

    @property
    def kept(self) -> list[AmiDecision]:
        return [d for d in self.decisions if d.action == "kept"]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def lines(self) -> list[str]:
        out = [d.line() for d in self.decisions]
        verb = "would delete" if self.dry_run else "deleted"
        out.append(f"prune of role {self.role} (keep {self.keep}{', dry run' if self.dry_run else ''}): "
                   f"{len(self.deleted)} AMI(s) {verb}, {len(self.kept)} kept"
                   + (f", {len(self.errors)} error(s)" if self.errors else ""))
        out += [f"ERROR: {e}" for e in self.errors]
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def _decision(region: str, image: dict[str, Any], action: str, reason: str) -> AmiDecision:
    return AmiDecision(region, image["ImageId"], image.get("Name") or "-", image.get("CreationDate") or "",
                       image.get("State") or "?", action, reason, tuple(snapshot_ids(image)))


def _why_delete(image: dict[str, Any], protected: dict[str, list[str]] | None, keep: int) -> tuple[bool, str]:
    """The decision for one candidate: (delete?, why)."""
    if protected is None:
        return False, "what uses it could not be checked (see the errors)"
    why = protected.get(image["ImageId"])
    if why:
        return False, "; ".join(why)
    return True, f"older than the newest {keep}" if image.get("State") == "available" else f"{image.get('State')} image"


def _delete_ami(aws: Aws, region: str, role: RoleSpec, image: dict[str, Any], why: str, *, executor: CleanupReport,
                pace: _Pace, report: PruneReport) -> AmiDecision:
    """Hand one decided deletion to the executor (which carries it out, or only shows it)."""
    image_id = image["ImageId"]
    snaps = snapshot_ids(image)

    def remove() -> str:
        gone = deregister_with_snapshots(aws, region, image, pace.sleep_fn)
        pace.log(f"prune {role.name}: {region} deregistered {image_id} ({image.get('Name')}), "
                 f"snapshots {', '.join(gone) or 'none'}")
        return f"snapshots deleted: {', '.join(gone) or 'none'}"

    manual = (f"aws ec2 deregister-image --region {region} --image-id {image_id}"
              + "".join(f" && aws ec2 delete-snapshot --region {region} --snapshot-id {s}" for s in snaps))
    errors_before = len(executor.errors)
    executor.attempt(pace, Removal("image", image_id, region, "deregister", "deregistered", manual, remove))
    outcome = executor.outcomes[-1]
    if outcome.status == "would":
        return _decision(region, image, "would delete", f"{why}; snapshots {', '.join(snaps) or 'none'}")
    if outcome.status == "failed":
        report.errors.extend(f"{region} {e}" for e in executor.errors[errors_before:])
        return _decision(region, image, "failed", outcome.detail)
    return _decision(region, image, "deleted", f"{why}; {outcome.detail}")


def _protections(aws: Aws, region: str, role: RoleSpec, candidates: list[dict[str, Any]]) -> dict[str, list[str]]:
    """image id -> reasons it must stay. Raises BakeryError when a protection cannot be checked."""
    reasons: dict[str, list[str]] = {}
    ids = [i["ImageId"] for i in candidates]

    # Existing instances (any purpose, any owner tag): they may be started, stopped, or replaced by
    # an Auto Scaling group from the same AMI; deregistering would break that.
    for chunk in _chunks(ids):
        for inst in aws.describe_instances(region, filters=[
                {"Name": "image-id", "Values": chunk},
                {"Name": "instance-state-name", "Values": EXISTING_STATES}]):
            reasons.setdefault(inst["ImageId"], []).append(
                f"in use by instance {inst['InstanceId']} ({inst.get('State', {}).get('Name', '?')})")

    ssm_names = [f"/bakery/{role.name}/latest"]
    if role.launch_template:
        try:
            versions = aws.call("ec2", region, "DescribeLaunchTemplateVersions",
                                LaunchTemplateName=role.launch_template,
                                Versions=["$Default", "$Latest"]).get("LaunchTemplateVersions", [])
        except AwsError as exc:
            if not (exc.code.startswith("InvalidLaunchTemplate") and "NotFound" in exc.code):
                raise
            versions = []
        for version in versions:
            image_id = (version.get("LaunchTemplateData") or {}).get("ImageId") or ""
            which = "default" if version.get("DefaultVersion") else "latest"
            if image_id.startswith("resolve:ssm:"):
                # The template resolves its AMI from an SSM parameter at launch: protect that value.
                ssm_names.append(image_id[len("resolve:ssm:"):].split(":")[0])
            elif image_id:
                reasons.setdefault(image_id, []).append(
                    f"{which} version {version.get('VersionNumber')} of launch template {role.launch_template}")

    for name in dict.fromkeys(ssm_names):
        try:
            value = aws.call("ssm", region, "GetParameter", Name=name)["Parameter"]["Value"]
        except AwsError as exc:
            if exc.code != "ParameterNotFound":
                raise
            continue
        reasons.setdefault(value, []).append(f"value of SSM parameter {name}")
    return reasons


def _rank(region: str, images: list[dict[str, Any]], keep: int) -> tuple[dict[str, AmiDecision], list[dict[str, Any]]]:
    """First decision, from the listing alone (newest first): what is kept, and the candidates to delete."""
    decisions: dict[str, AmiDecision] = {}
    candidates: list[dict[str, Any]] = []
    available = 0
    for image in images:
        state = image.get("State")
        if state == "available":
            available += 1
            if available <= keep:
                decisions[image["ImageId"]] = _decision(
                    region, image, "kept", f"one of the newest {keep} available (#{available})")
                continue
            candidates.append(image)
        elif state in BROKEN_IMAGE_STATES:
            candidates.append(image)  # never usable: does not take one of the `keep` places
        elif state in UNFINISHED_IMAGE_STATES:
            decisions[image["ImageId"]] = _decision(
                region, image, "kept", "pending: a bake in progress owns it (`bakery reap` removes abandoned ones)")
        else:
            decisions[image["ImageId"]] = _decision(region, image, "kept", f"state {state}: left alone")
    return decisions, candidates


def prune(aws: Aws, role: RoleSpec, keep: int, *, dry_run: bool, log: Log = _quiet,
          sleep: Callable[[float], None] = time.sleep, poll_interval: float = 2.0) -> PruneReport:
    """Deregister the role's bakery AMIs older than the newest ``keep`` (per region) and their snapshots.

    Decides first (listing and protections: Describe/Get calls only), then hands each deletion to the
    executor; ``dry_run`` makes that a display-only executor."""
    if keep < 1:
        raise UsageError(f"--keep {keep}: at least 1 (the newest AMI of role {role.name} is never pruned)")
    report = PruneReport(role.name, keep, dry_run)
    executor, pace = CleanupReport(dry_run=dry_run), _Pace(log, sleep, poll_interval)
    for region in role.regions:
        try:
            images = aws.describe_images(region, Owners=["self"], Filters=[
                {"Name": "tag:bakery:role", "Values": [role.name]},
                {"Name": "tag:bakery:created-by", "Values": ["bakery"]}])
        except BakeryError as exc:
            report.errors.append(f"{region}: cannot list the AMIs of role {role.name}: {exc}")
            continue
        images = sorted((i for i in images if i.get("State") != "deregistered"), key=_newest_first_key, reverse=True)
        decisions, candidates = _rank(region, images, keep)
        protected: dict[str, list[str]] | None = {}
        if candidates:
            try:
                protected = _protections(aws, region, role, candidates)
            except BakeryError as exc:
                report.errors.append(f"{region}: cannot check what still uses the AMIs of role {role.name}, "
                                     f"so none was deleted there: {exc}")
                protected = None
        for image in candidates:
            delete, why = _why_delete(image, protected, keep)
            decisions[image["ImageId"]] = (
                _delete_ami(aws, region, role, image, why, executor=executor, pace=pace, report=report)
                if delete else _decision(region, image, "kept", why))
        # Report in the order the images were listed: newest first.
        report.decisions.extend(decisions[i["ImageId"]] for i in images if i["ImageId"] in decisions)
    return report


# --- reap ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReapLine:
    kind: str  # instance | image | snapshot | copy | chef-node | chef-client (or a later stage's kind)
    resource: str
    region: str  # "" for Chef objects
    action: str  # terminated | deregistered | deleted | would terminate | would deregister | would delete | kept | failed
    reason: str

    def line(self) -> str:
        where = f"{self.region} " if self.region else ""
        return f"{where}{self.kind} {self.resource}: {self.action}: {self.reason}"


@dataclass
class ReapReport:
    dry_run: bool
    lines: list[ReapLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    chef_skipped: str | None = None  # why the Chef part did not run
    chef_failed: bool = False  # it was wanted but could not run: exit 1

    @property
    def exit_code(self) -> int:
        return 1 if self.errors or self.chef_failed else 0

    @property
    def removed(self) -> list[ReapLine]:
        return [r for r in self.lines if r.action not in ("kept", "failed")]

    def add(self, kind: str, resource: str, region: str, action: str, reason: str, log: Log) -> None:
        entry = ReapLine(kind, resource, region, action, reason)
        self.lines.append(entry)
        if action != "kept":
            log(f"reap: {entry.line()}")

    def text(self) -> str:
        out = [r.line() for r in self.lines]
        if self.chef_skipped:
            out.append(f"Chef SKIPPED: {self.chef_skipped}")
        verb = "to remove" if self.dry_run else "removed"
        out.append(f"reap{' (dry run)' if self.dry_run else ''}: {len(self.removed)} resource(s) {verb}, "
                   f"{sum(1 for r in self.lines if r.action == 'kept')} kept"
                   + (f", {len(self.errors)} error(s)" if self.errors else ""))
        out += [f"ERROR: {e}" for e in self.errors]
        return "\n".join(out)


@dataclass
class _BakeHere:
    """What the survey found of one bake in one region."""

    bake_id: str
    region: str
    instances: list[dict[str, Any]] = field(default_factory=list)  # live, of any purpose but launch
    unfinished: list[dict[str, Any]] = field(default_factory=list)  # pending or broken images
    available: list[str] = field(default_factory=list)  # its good AMIs here: prune's, never reap's
    orphans: list[dict[str, Any]] = field(default_factory=list)  # its snapshots whose image is gone
    held: list[str] = field(default_factory=list)  # its snapshots another image uses

    @property
    def candidate(self) -> bool:
        """Something here may be a leftover (a bake with only good AMIs here is not reap's business)."""
        return bool(self.instances or self.unfinished or self.orphans)

    def tags(self) -> dict[str, str]:
        for resource in (*self.instances, *self.unfinished, *self.orphans):
            return tags_of(resource)
        return {}

    def bake_instance(self) -> dict[str, Any] | None:
        return next((i for i in self.instances if tags_of(i).get("bakery:purpose") == "bake"), None)


@dataclass
class _Survey:
    """Everything reap looked at (Describe/List calls only), before it decides anything."""

    bakes: dict[tuple[str, str], _BakeHere] = field(default_factory=dict)  # (bake id, region)
    finished: set[str] = field(default_factory=set)  # bakes with an available AMI in some region
    chef_tagged: list[tuple[str, str]] = field(default_factory=list)  # (instance id, node) of live instances
    unnamed: list[ReapLine] = field(default_factory=list)  # bakery images without a bake id: left alone

    def here(self, bake_id: str, region: str) -> _BakeHere:
        return self.bakes.setdefault((bake_id, region), _BakeHere(bake_id, region))

    def merge(self, other: _Survey) -> None:
        self.bakes.update(other.bakes)
        self.finished |= other.finished
        self.chef_tagged += other.chef_tagged
        self.unnamed += other.unnamed


@dataclass
class _Reap:
    """One reap run: its inputs, and what it decided."""

    aws: Aws
    report: ReapReport
    older_than: float
    now: float
    open_bakes: dict[str, BakeState]
    sleep: Callable[[float], None]
    log: Log
    poll_interval: float
    bake_id: str | None = None  # --bake-id: only this bake, whatever its expiry
    regions: Sequence[str] = ()

    def mine(self, bake_id: str) -> bool:
        return self.bake_id is None or bake_id == self.bake_id

    def young(self, created: float | None) -> str | None:
        # Without --older-than age does not matter, and clock skew between this host and AWS cannot keep anything.
        if self.bake_id is None and self.older_than and created is not None and self.now - created < self.older_than:
            return f"created {_age(self.now - created)} ago, within --older-than"
        return None

    def keep(self, kind: str, resource: str, region: str, reason: str) -> None:
        self.report.add(kind, resource, region, "kept", reason, self.log)


def reap(
    aws: Aws,
    regions: Sequence[str],
    chef: ChefClient | None,
    *,
    older_than: float = 0.0,
    workspace_states: Sequence[BakeState] = (),
    now: float | None = None,
    dry_run: bool,
    log: Log = _quiet,
    chef_error: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    bake_id: str | None = None,
    poll_interval: float = 2.0,
) -> ReapReport:
    """Remove what killed bakes left behind. See the module docstring for exactly what and when.

    ``chef`` None with ``chef_error`` (why the client could not be made) skips Chef and exits 1;
    ``chef`` None without it skips Chef on purpose (``--no-chef``). ``bake_id``: only that bake's
    resources, removed whatever their expiry (the operator says it is abandoned), from any workspace.
    """
    report = ReapReport(dry_run)
    run = _Reap(aws, report, max(0.0, float(older_than)), time.time() if now is None else now,
                # Bakes a workspace state still has open: their resources are not leftovers.
                {s.bake_id: s for s in workspace_states if not s.closed and s.bake_id != bake_id},
                sleep, log, poll_interval, bake_id, list(dict.fromkeys(regions)))
    # 1. Look (Describe/List only).
    survey, aws_complete = _Survey(), True
    for region in dict.fromkeys(regions):
        seen = _Survey()
        try:
            _survey_region(aws, region, seen)
        except BakeryError as exc:
            # Nothing is decided on half a look: that region's bakes wait for the next run.
            aws_complete = False
            report.errors.append(f"{region}: {exc}")
            continue
        survey.merge(seen)
    if aws_complete:
        try:
            _not_yet_listed(run, survey, workspace_states)
        except BakeryError as exc:
            report.errors.append(f"looking up instances not listed yet: {exc}")
    # 2. Decide.
    abandoned, kept_why = _decide_aws(run, survey)
    names = _chef_names(run, chef, chef_error, aws_complete)
    records = [(_record(here), _why_abandoned(run, here)) for here in abandoned]
    if names is not None:
        records += _decide_chef(run, survey, names, abandoned, records, kept_why, regions)
    if report.chef_skipped:
        log(f"reap: Chef skipped: {report.chef_skipped}")
    # 3. Act: each abandoned bake through the stages' teardown loop (display-only in a dry run).
    for record, reason in records:
        _tear_down(run, record, reason, chef)
    return report


def _bake_started(bake_id: str, state: BakeState | None) -> float | None:
    """When the bake started (its launch, when the state has it; else the bake id's UTC stamp)."""
    launch = state.stages.get("launch") if state is not None else None
    if launch is not None and launch.started_at:
        return launch.started_at
    try:
        return datetime.strptime(bake_id[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _not_listed_yet(run: _Reap, bake_id: str, what: str, started: float | None) -> None:
    age = f"started {_age(run.now - started)} ago" if started is not None else "of unknown age"
    run.report.errors.append(
        f"bake {bake_id} ({age}): {what} not listed by EC2 yet (a new instance can take seconds to minutes "
        f"to appear): the bake is not declared clean; run reap again in a minute")


def _not_yet_listed(run: _Reap, survey: _Survey, states: Sequence[BakeState]) -> None:
    """Evidence of an instance the tag survey could not show yet (see the module docstring)."""
    recorded = {s.bake_id: s for s in states if s.instance_id and not s.instance_terminated and not s.closed
                and s.bake_id not in run.open_bakes and run.mine(s.bake_id)}
    _recorded_by_id(run, survey, list(recorded.values()))
    bake_id = run.bake_id
    if bake_id is not None and bake_id not in recorded and not any(k[0] == bake_id for k in survey.bakes):
        _young_and_unseen(run, survey, bake_id)


def _recorded_by_id(run: _Reap, survey: _Survey, recorded: list[BakeState]) -> None:
    """The recorded instances the survey did not list, looked up by id."""
    listed = {i["InstanceId"] for here in survey.bakes.values() for i in here.instances}
    for s in recorded:
        if s.instance_id in listed:
            continue
        found = run.aws.describe_instances(s.region, [s.instance_id or ""])
        started = _bake_started(s.bake_id, s)
        if found and found[0].get("State", {}).get("Name") in LIVE_STATES:
            survey.here(s.bake_id, s.region).instances.append(found[0])
        elif not found and started is not None and run.now - started < ABSENT_GRACE:
            _not_listed_yet(run, s.bake_id, f"its instance {s.instance_id} (recorded by the workspace state "
                                            f"of role {s.role}) is", started)


def _young_and_unseen(run: _Reap, survey: _Survey, bake_id: str) -> None:
    """A --bake-id bake of which nothing is listed: an error while it is young, unless an instance of it is seen."""
    started = _bake_started(bake_id, None)
    if started is None or run.now - started >= ABSENT_GRACE:
        return
    # Nothing of a young bake: proven clean only if one of its instances is seen gone.
    regions = sorted({r for _, r in survey.bakes} | set(run.regions))
    ended = [i for r in regions for i in run.aws.describe_instances(r, filters=[
        {"Name": "tag:bakery:bake-id", "Values": [bake_id]}])]
    if not ended:
        _not_listed_yet(run, bake_id, "nothing of it is", started)


def _survey_region(aws: Aws, region: str, survey: _Survey) -> None:
    """Instances, images and snapshots of one region, by bake id; and the Chef node names live there."""
    for inst in aws.describe_instances(region, filters=[
            {"Name": "tag-key", "Values": ["bakery:bake-id"]},
            {"Name": "instance-state-name", "Values": LIVE_STATES}]):
        tags = tags_of(inst)
        # A bake's own instances (its bake instance, a boot test's): never create-instance's launch ones.
        if tags.get("bakery:purpose") and tags.get("bakery:purpose") != "launch" and tags.get("bakery:bake-id"):
            survey.here(tags["bakery:bake-id"], region).instances.append(inst)
    # Any live instance carrying a Chef node name keeps that node (launch instances too).
    survey.chef_tagged += [(i["InstanceId"], tags_of(i).get("bakery:chef-node", "")) for i in aws.describe_instances(
        region, filters=[{"Name": "tag-key", "Values": ["bakery:chef-node"]},
                         {"Name": "instance-state-name", "Values": LIVE_STATES}])]
    _survey_images(aws, region, survey)
    _survey_snapshots(aws, region, survey)


def _survey_images(aws: Aws, region: str, survey: _Survey) -> None:
    """The bakery's images of the region: good AMIs apart from the leftovers (unfinished or untested)."""
    for image in aws.describe_images(region, Owners=["self"], Filters=[
            {"Name": "tag:bakery:created-by", "Values": ["bakery"]}]):
        state, image_bake = image.get("State"), tags_of(image).get("bakery:bake-id", "")
        if state == "available" and image_bake and _untested(image, survey.here(image_bake, region)):
            # Never published or reused (only a passed boot test does that): a leftover like a failed image.
            survey.here(image_bake, region).unfinished.append(image)
        elif state == "available" and image_bake:
            survey.here(image_bake, region).available.append(image["ImageId"])
            survey.finished.add(image_bake)
        elif state in UNFINISHED_IMAGE_STATES | BROKEN_IMAGE_STATES:
            if image_bake:
                survey.here(image_bake, region).unfinished.append(image)
            else:
                survey.unnamed.append(ReapLine("image", image["ImageId"], region, "kept",
                                               f"{state}, without a bakery:bake-id tag: remove it by hand if abandoned"))


def _survey_snapshots(aws: Aws, region: str, survey: _Survey) -> None:
    """Snapshots tagged with a bake id: orphans (no image uses them) and those another image holds."""
    snapshots = aws.paginate("ec2", region, "DescribeSnapshots", "Snapshots", OwnerIds=["self"],
                             Filters=[{"Name": "tag-key", "Values": ["bakery:bake-id"]}])
    if snapshots:
        # Any image of this account counts, bakery or not; disabled AMIs are listed only on request.
        users = {s: i for i in aws.describe_images(region, Owners=["self"], IncludeDisabled=True,
                                                   IncludeDeprecated=True)
                 if i.get("State") != "deregistered" for s in snapshot_ids(i)}
        for snap in snapshots:
            snap_bake, user = tags_of(snap).get("bakery:bake-id", ""), users.get(snap["SnapshotId"])
            if not snap_bake:
                continue  # an empty tag names no bake: nothing to tear down by it
            if user is None:
                survey.here(snap_bake, region).orphans.append(snap)
            elif tags_of(user).get("bakery:bake-id") != snap_bake:
                survey.here(snap_bake, region).held.append(
                    f"its snapshot {snap['SnapshotId']} is used by image {user['ImageId']}")


def _untested(image: dict[str, Any], here: _BakeHere) -> bool:
    """An available AMI whose boot test failed, or whose bake was stopped during its boot test.

    Instances are surveyed before images, so ``here`` already holds the bake's live instances. An AMI
    with no ``bakery:boot-test`` tag and no boot-test instance is an AMI of a bakery from before the
    boot test (or of a role that opted out before the tag existed): a good AMI, prune's business.
    """
    verdict = tags_of(image).get("bakery:boot-test")
    if verdict in ("passed", "disabled"):
        return False
    if verdict == "failed":
        return True
    return any(tags_of(i).get("bakery:purpose") == "boot-test" for i in here.instances)


def _instance_keep_reason(run: _Reap, inst: dict[str, Any]) -> str | None:
    tags = tags_of(inst)
    bake_id, expires_raw = tags.get("bakery:bake-id", ""), tags.get("bakery:expires-at", "")
    if run.bake_id is not None:
        return None  # --bake-id: the operator says this bake is abandoned
    expires = parse_time(expires_raw)
    if expires is None:
        return f"no valid bakery:expires-at tag ({expires_raw!r}); remove it by hand if it is abandoned"
    if run.now - expires <= run.older_than:
        left = f"expires {expires_raw}" if expires > run.now else f"expired {_age(run.now - expires)} ago, within --older-than"
        return f"bake {bake_id or '?'}: {left}"
    return None


def _running(run: _Reap, survey: _Survey) -> dict[str, str]:
    """Bake id -> why it is still running: one of its instances (any region) is alive and not expired."""
    running: dict[str, str] = {}
    for here in survey.bakes.values():
        for inst in here.instances:
            why = _instance_keep_reason(run, inst)
            if why is not None:
                running.setdefault(here.bake_id, f"its {tags_of(inst).get('bakery:purpose')} instance "
                                                  f"{inst['InstanceId']} is alive ({why})")
    return running


def _keep_reason(run: _Reap, here: _BakeHere, running: dict[str, str], finished: set[str]) -> str | None:
    """Why nothing of this bake goes in this region (None: abandoned, tear it down)."""
    bake_id = here.bake_id
    if bake_id in run.open_bakes:
        return f"bake {bake_id} of role {run.open_bakes[bake_id].role} is open in the workspace"
    if bake_id in running:
        return f"bake {bake_id} is still running: {running[bake_id]}"
    pending = [i for i in here.unfinished if i.get("State") in UNFINISHED_IMAGE_STATES]
    if pending and bake_id in finished:
        return f"bake {bake_id} has an available AMI: its pending image {pending[0]['ImageId']} is a copy in progress"
    if here.held:
        return f"bake {bake_id}: {'; '.join(here.held)}"
    creating = [s["SnapshotId"] for s in here.orphans if s.get("State") == "pending"]
    if creating:
        return f"its snapshot {creating[0]} is still being created"
    if here.instances:
        return None  # its instances expired: that is the bake's deadline, whatever the age of the rest
    created = [parse_time(i.get("CreationDate")) for i in here.unfinished]
    created += [parse_time(s.get("StartTime")) for s in here.orphans]
    return run.young(max((c for c in created if c is not None), default=None))


def _report_kept(run: _Reap, here: _BakeHere, why: str) -> None:
    for inst in here.instances:
        run.keep("instance", inst["InstanceId"], here.region, _instance_keep_reason(run, inst) or why)
    for image in here.unfinished:
        run.keep("image", image["ImageId"], here.region, f"{image.get('State')}: {why}")
    for snap in here.orphans:
        run.keep("snapshot", snap["SnapshotId"], here.region, f"image gone but {why}")


def _decide_aws(run: _Reap, survey: _Survey) -> tuple[list[_BakeHere], dict[str, str]]:
    """The bakes (per region) to tear down, and why the others stay (bake id -> reason)."""
    running = _running(run, survey)
    abandoned: list[_BakeHere] = []
    kept_why: dict[str, str] = {}
    for key in sorted(survey.bakes):
        here = survey.bakes[key]
        if not here.candidate or not run.mine(here.bake_id):
            continue
        why = _keep_reason(run, here, running, survey.finished)
        if why is None:
            abandoned.append(here)
        else:
            _report_kept(run, here, why)
            kept_why.setdefault(here.bake_id, why)
    for line in survey.unnamed:
        if run.bake_id is None:
            run.report.lines.append(line)
    return abandoned, kept_why


def _why_abandoned(run: _Reap, here: _BakeHere) -> str:
    named = "named by --bake-id; " if run.bake_id is not None else ""
    inst = here.bake_instance() or (here.instances[0] if here.instances else None)
    if inst is not None:
        expires_raw = tags_of(inst).get("bakery:expires-at", "")
        expires = parse_time(expires_raw)
        age = (f"expired {_age(run.now - expires)} ago ({expires_raw})" if expires is not None and not named
               else "named by --bake-id")
        return f"bake {here.bake_id} {age}, {inst['State']['Name']}"
    if here.unfinished:
        image = here.unfinished[0]
        created = parse_time(image.get("CreationDate"))
        when = f"{_age(run.now - created)} ago" if created is not None else "at an unknown time"
        return f"{named}{image.get('State')} image of bake {here.bake_id} ({image.get('Name')}), created {when}"
    return f"{named}of bake {here.bake_id}, its image is gone"


def _record(here: _BakeHere, chef_node: str | None = None) -> BakeState:
    """The record of a bake that lives in no workspace, built from its tags: what its stages' cleanups read."""
    tags = here.tags()
    inst = here.bake_instance()
    image = here.unfinished[0] if here.unfinished else None
    windows = any(r.get("Platform") == "windows" for r in (*here.instances, *here.unfinished))
    return BakeState(role=tags.get("bakery:role") or "?", bake_id=here.bake_id, release=tags.get("bakery:release", ""),
                     region=here.region, platform="windows" if windows else "linux", chef_node=chef_node,
                     instance_id=inst["InstanceId"] if inst else None,
                     image_id=image["ImageId"] if image else None, image_state=image.get("State") if image else None,
                     snapshot_ids=sorted(s["SnapshotId"] for s in here.orphans),
                     amis={here.region: here.available[0]} if here.available else {})


def _chef_names(run: _Reap, chef: ChefClient | None, chef_error: str | None,
                aws_complete: bool) -> dict[str, set[str]] | None:
    """Bakery-looking Chef names -> kinds present (chef-client, chef-node); None when Chef is skipped."""
    report = run.report
    if chef is None:
        report.chef_skipped = chef_error or "not asked to (--no-chef)"
        report.chef_failed = chef_error is not None
        return None
    if not aws_complete:
        report.chef_skipped = ("the live bake instances could not be listed in every region, so no Chef node "
                               "can be proven orphaned")
        report.chef_failed = True
        return None
    try:
        nodes, clients = set(chef.list_nodes()), set(chef.list_clients())
    except BakeryError as exc:
        report.chef_skipped, report.chef_failed = str(exc), True
        return None
    return {n: {k for k, present in (("chef-client", n in clients), ("chef-node", n in nodes)) if present}
            for n in sorted(nodes | clients) if n.startswith("bake-")}


def _chef_keep_reason(run: _Reap, name: str, live: set[str], kept_why: dict[str, str],
                      ending: Container[str]) -> str | None:
    m = CHEF_NODE_RE.match(name)
    if m is None:
        return "not a bakery bake name (bake-ROLE-YYYYMMDDHHMMSS-xxxxxx)"
    if name in live:
        return "a live instance is tagged with it"
    if m.group("bake") in ending:
        return None  # its bake is torn down in this run: the identity goes with it, whatever its age
    if m.group("bake") in kept_why:
        return f"kept with the rest of its bake: {kept_why[m.group('bake')]}"
    try:
        made = datetime.strptime(m.group("stamp"), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        made = None
    young = run.young(made)
    return young.replace("created", "bake started") if young else None


def _decide_chef(run: _Reap, survey: _Survey, names: dict[str, set[str]], abandoned: list[_BakeHere],
                 records: list[tuple[BakeState, str]], kept_why: dict[str, str],
                 regions: Sequence[str]) -> list[tuple[BakeState, str]]:
    """Give each abandoned bake its Chef identity; the identities of bakes with nothing left in AWS
    become records of their own. Returns those new records."""
    ending, live, other_stages = _chef_in_use(run, survey, abandoned)
    by_bake = _identities_of_instances(records, ending, names, live)
    taken = {r.chef_node for r in by_bake.values()}
    chef_only: list[tuple[BakeState, str]] = []
    for name, kinds in names.items():
        m = CHEF_NODE_RE.match(name)
        if name in taken or name in other_stages or (m is not None and not run.mine(m.group("bake"))):
            continue
        why = _chef_keep_reason(run, name, live, kept_why, by_bake)
        if why is not None:
            for kind in sorted(kinds):
                run.keep(kind, name, "", why)
            continue
        bake = m.group("bake") if m else ""
        if bake in by_bake and by_bake[bake].chef_node is None:
            by_bake[bake].chef_node = name
            continue
        chef_only.append((_identity_record(survey, bake, name, m, regions[0]),
                          "no live instance is tagged bakery:chef-node with it"))
    return chef_only


def _chef_in_use(run: _Reap, survey: _Survey,
                 abandoned: list[_BakeHere]) -> tuple[dict[str, dict[str, str]], set[str], set[str]]:
    """The tags of the instances this run ends (by id); the node names still in use (a live instance
    this run keeps is tagged with it, or a bake open in the workspace has it); and the names of the
    ended bakes' other instances (a boot test's), which go with that stage's cleanup."""
    ending = {i["InstanceId"]: tags_of(i) for here in abandoned for i in here.instances}
    live = {node for iid, node in survey.chef_tagged if iid not in ending and node}
    live |= {s.chef_node for s in run.open_bakes.values() if s.chef_node}
    other_stages = {t.get("bakery:chef-node", "") for t in ending.values() if t.get("bakery:purpose") != "bake"}
    return ending, live, other_stages


def _identities_of_instances(records: list[tuple[BakeState, str]], ending: dict[str, dict[str, str]],
                             names: Container[str], live: Container[str]) -> dict[str, BakeState]:
    """Bake id -> its first record, which takes the Chef identity its bake instance is tagged with."""
    by_bake = {r.bake_id: r for r, _ in reversed(records)}
    for record, _ in records:
        tagged = ending.get(record.instance_id or "", {}).get("bakery:chef-node", "")
        if tagged in names and tagged not in live and by_bake[record.bake_id].chef_node is None:
            by_bake[record.bake_id].chef_node = tagged
    return by_bake


def _identity_record(survey: _Survey, bake: str, name: str, m: re.Match[str] | None, region: str) -> BakeState:
    """Nothing of the bake is left in AWS: a record of its Chef identity alone (in a region where the
    bake has at most good AMIs, which its image cleanup keeps)."""
    here = survey.bakes.get((bake, region)) or _BakeHere(bake, region)
    state = _record(_BakeHere(bake, region, available=here.available), name)
    state.role = m.group("role") if m else "?"
    return state


def _tear_down(run: _Reap, record: BakeState, reason: str, chef: ChefClient | None) -> None:
    """One abandoned bake through the stages' teardown loop; its removals become report lines."""
    executor = CleanupReport(dry_run=run.report.dry_run)
    ctx = TagContext(aws=run.aws, state=record, chef_client=chef if record.chef_node else None,
                     poll=run.poll_interval, sleep_fn=run.sleep, log_fn=run.log)
    teardown(ctx, executor)
    ended = any(o.removal.kind == "instance" for o in executor.outcomes)
    was = "would be" if run.report.dry_run else "was"
    for outcome in executor.outcomes:
        removal = outcome.removal
        line_why = reason
        if removal.kind.startswith("chef-") and ended:
            line_why = f"its {'bake ' if record.instance_id else ''}instance {was} terminated by this reap"
        elif removal.kind.startswith("chef-"):
            line_why = "no live instance is tagged bakery:chef-node with it"
        action = {"done": removal.done, "would": f"would {removal.doing}"}.get(outcome.status, "failed")
        run.report.add(removal.kind, removal.resource, removal.region, action,
                       line_why if action != "failed" else outcome.detail, run.log)
    run.report.errors += [f"bake {record.bake_id}: {e}" for e in executor.errors]
