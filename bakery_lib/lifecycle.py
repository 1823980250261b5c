"""AMI lifecycle: ``bakery prune`` (old AMIs of a role) and ``bakery reap`` (what killed runs left behind).

Both decide first and act second: every resource looked at gets one report line with the action
taken (or, with ``dry_run``, the action that would be taken) and the reason. A dry run makes only
Describe/Get/List calls.

prune, per region of the role:
  DescribeImages (Owners=self, tags ``bakery:role`` and ``bakery:created-by=bakery``), then for the
  candidates: DescribeInstances (filter image-id; an AMI that an existing instance runs is kept),
  DescribeLaunchTemplateVersions ($Default and $Latest of ``launch_template``; a missing template is
  fine), SSM GetParameter ``/bakery/ROLE/latest``. The newest ``keep`` *available* AMIs are kept (a
  failed AMI is never a rollback target, so it does not use up a place); pending ones belong to a bake
  in progress and are left to that bake or to ``reap``. Deleting is DeregisterImage, then
  DeleteSnapshot for each snapshot of the image's block device mappings.
  When any protection cannot be checked in a region, nothing is deleted there.

reap, per region, then Chef:
  1. bake instances (``bakery:purpose=bake``) expired for longer than ``older_than`` -> TerminateInstances.
  2. pending/failed bakery AMIs (``bakery:created-by=bakery``) that no bake still owns -> deregister and
     delete their snapshots; snapshots tagged ``bakery:bake-id`` whose image is gone -> DeleteSnapshot.
     A bake still owns its image when a workspace state of that bake is open, when its bake instance
     is alive and not expired, or when the same bake has an available AMI (a cross-region copy still
     in progress after publish).
  3. Chef nodes and clients named ``bake-ROLE-BAKEID`` (the bakery's own naming) with no live instance
     tagged ``bakery:chef-node=NAME`` -> delete both. Chef unreachable: the AWS part still runs, the
     report says why Chef was skipped, and the exit code is 1.
  Instances of purpose ``launch``, available AMIs and anything without the bakery's tags are never
  touched. Every removal tolerates "already gone", so reap is idempotent and safe in a cron job.
  The Chef node/client of an instance reap terminates goes in the same run, whatever its age.
  ``bake_id`` (``bakery reap --bake-id ID``): only that bake's instance, unfinished image, snapshots and
  Chef identity, whatever their expiry (the operator says the bake is abandoned), from any workspace.

Reap decides, then acts: each removal is an ``Action`` handed to one executor, which carries it out
or, with ``dry_run``, only reports it. Removals go through ``bakery_lib.resources``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .aws import Aws, tags_of
from .catalog import RoleSpec
from .errors import AwsError, BakeryError, UsageError
from .resources import delete_snapshot, deregister_with_snapshots, snapshot_ids, terminate_instance
from .state import BakeState

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
CHEF_NODE_RE = re.compile(r"^bake-(?P<role>[a-z][a-z0-9_-]{0,62})-(?P<stamp>\d{14})-[0-9a-f]{6}$")
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


def _prune_one(aws: Aws, region: str, role: RoleSpec, image: dict[str, Any],
               protected: dict[str, list[str]] | None, *, keep: int, dry_run: bool, report: PruneReport,
               log: Log, sleep: Callable[[float], None]) -> AmiDecision:
    image_id = image["ImageId"]
    if protected is None:
        return _decision(region, image, "kept", "what uses it could not be checked (see the errors)")
    why = protected.get(image_id)
    if why:
        return _decision(region, image, "kept", "; ".join(why))
    old = f"older than the newest {keep}" if image.get("State") == "available" else f"{image.get('State')} image"
    return _delete_ami(aws, region, role, image, old, dry_run=dry_run, report=report, log=log, sleep=sleep)


def _delete_ami(aws: Aws, region: str, role: RoleSpec, image: dict[str, Any], why: str, *, dry_run: bool,
                report: PruneReport, log: Log, sleep: Callable[[float], None]) -> AmiDecision:
    """The executor of one decided deletion; ``dry_run`` only displays it."""
    image_id = image["ImageId"]
    snaps = snapshot_ids(image)
    if dry_run:
        return _decision(region, image, "would delete", f"{why}; snapshots {', '.join(snaps) or 'none'}")
    try:
        gone = deregister_with_snapshots(aws, region, image, sleep)
    except BakeryError as exc:
        report.errors.append(
            f"{region} {image_id}: {exc}. Remove it by hand: aws ec2 deregister-image --region {region} "
            f"--image-id {image_id}"
            + "".join(f" && aws ec2 delete-snapshot --region {region} --snapshot-id {s}" for s in snaps))
        return _decision(region, image, "failed", str(exc))
    log(f"prune {role.name}: {region} deregistered {image_id} ({image.get('Name')}), snapshots {', '.join(gone) or 'none'}")
    return _decision(region, image, "deleted", f"{why}; snapshots deleted: {', '.join(gone) or 'none'}")


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
          sleep: Callable[[float], None] = time.sleep) -> PruneReport:
    """Deregister the role's bakery AMIs older than the newest ``keep`` (per region) and their snapshots."""
    if keep < 1:
        raise UsageError(f"--keep {keep}: at least 1 (the newest AMI of role {role.name} is never pruned)")
    report = PruneReport(role.name, keep, dry_run)
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
            decisions[image["ImageId"]] = _prune_one(aws, region, role, image, protected, keep=keep,
                                                     dry_run=dry_run, report=report, log=log, sleep=sleep)
        # Report in the order the images were listed: newest first.
        report.decisions.extend(decisions[i["ImageId"]] for i in images if i["ImageId"] in decisions)
    return report


# --- reap ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReapLine:
    kind: str  # instance | image | snapshot | chef-node | chef-client
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


@dataclass(frozen=True)
class Action:
    """One removal reap decided on: ``remove()`` carries it out; ``manual`` is the command to do it by hand."""

    kind: str
    resource: str
    region: str
    doing: str  # terminate | deregister | delete
    done: str  # terminated | deregistered | deleted
    reason: str
    remove: Callable[[], Any]
    manual: str
    kept_on: Callable[[BakeryError], str | None] | None = None  # an error that means "keep it", and why


class _Executor:
    """Carries out reap's decisions and reports each; ``dry_run`` makes it a display-only executor."""

    def __init__(self, report: ReapReport, *, dry_run: bool, log: Log):
        self.report, self.dry_run, self.log = report, dry_run, log

    def keep(self, kind: str, resource: str, region: str, reason: str) -> None:
        self.report.add(kind, resource, region, "kept", reason, self.log)

    def act(self, action: Action) -> bool:
        """True when the resource is (or, in a dry run, would be) gone."""
        a = action
        if self.dry_run:
            self.report.add(a.kind, a.resource, a.region, f"would {a.doing}", a.reason, self.log)
            return True
        try:
            a.remove()
        except BakeryError as exc:
            kept = a.kept_on(exc) if a.kept_on is not None else None
            if kept is not None:
                self.keep(a.kind, a.resource, a.region, kept)
                return False
            self.report.add(a.kind, a.resource, a.region, "failed", str(exc), self.log)
            where = f"{a.region} " if a.region else ""
            self.report.errors.append(f"{where}{a.kind} {a.resource}: {exc}. Remove it by hand: {a.manual}")
            return False
        self.report.add(a.kind, a.resource, a.region, a.done, a.reason, self.log)
        return True


@dataclass
class _Reap:
    """One reap run: its inputs, and what it learnt so far (bakes still alive, Chef nodes in use)."""

    aws: Aws
    ex: _Executor
    older_than: float
    now: float
    open_bakes: dict[str, BakeState]
    sleep: Callable[[float], None]
    bake_id: str | None = None  # --bake-id: only this bake, whatever its expiry
    running_bakes: dict[str, str] = field(default_factory=dict)  # bake id -> why it is alive
    live_nodes: set[str] = field(default_factory=set)
    ended_nodes: set[str] = field(default_factory=set)  # nodes of instances this run terminated

    def mine(self, bake_id: str) -> bool:
        return self.bake_id is None or bake_id == self.bake_id

    def young(self, created: float | None) -> str | None:
        # Without --older-than age does not matter, and clock skew between this host and AWS cannot keep anything.
        if self.bake_id is None and self.older_than and created is not None and self.now - created < self.older_than:
            return f"created {_age(self.now - created)} ago, within --older-than"
        return None

    def owner_alive(self, bake_id: str) -> str | None:
        if bake_id in self.open_bakes:
            return f"bake {bake_id} of role {self.open_bakes[bake_id].role} is open in the workspace"
        if bake_id and bake_id in self.running_bakes:
            return f"bake {bake_id} is still running: {self.running_bakes[bake_id]}"
        return None


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
) -> ReapReport:
    """Remove what killed bakes left behind. See the module docstring for exactly what and when.

    ``chef`` None with ``chef_error`` (why the client could not be made) skips Chef and exits 1;
    ``chef`` None without it skips Chef on purpose (``--no-chef``). ``bake_id``: only that bake's
    resources, removed whatever their expiry (the operator says it is abandoned), from any workspace.
    """
    report = ReapReport(dry_run)
    run = _Reap(aws, _Executor(report, dry_run=dry_run, log=log), max(0.0, float(older_than)),
                time.time() if now is None else now,
                # Bakes a workspace state still has open: their resources are not leftovers.
                {s.bake_id: s for s in workspace_states if not s.closed and s.bake_id != bake_id}, sleep, bake_id)
    aws_complete = True
    for region in dict.fromkeys(regions):
        try:
            _reap_region(run, region)
        except BakeryError as exc:
            aws_complete = False
            report.errors.append(f"{region}: {exc}")
    # A bake between preflight and launch has a node name but no instance yet.
    run.live_nodes |= {s.chef_node for s in run.open_bakes.values() if s.chef_node}
    if chef is None:
        report.chef_skipped = chef_error or "not asked to (--no-chef)"
        report.chef_failed = chef_error is not None
    elif not aws_complete:
        report.chef_skipped = ("the live bake instances could not be listed in every region, so no Chef node "
                               "can be proven orphaned")
        report.chef_failed = True
    else:
        try:
            _reap_chef(chef, run)
        except BakeryError as exc:
            report.chef_skipped = str(exc)
            report.chef_failed = True
    if report.chef_skipped:
        log(f"reap: Chef skipped: {report.chef_skipped}")
    return report


def _reap_region(run: _Reap, region: str) -> None:
    """Instances, images and snapshots of one region; then the Chef node names still alive there."""
    terminated = _reap_instances(run, region)
    images = run.aws.describe_images(region, Owners=["self"], Filters=[
        {"Name": "tag:bakery:created-by", "Values": ["bakery"]}])
    images = [i for i in images if i.get("State") != "deregistered"]
    referenced = _reap_images(run, region, images)
    _reap_snapshots(run, region, referenced)
    # Any live instance carrying a Chef node name keeps that node (launch instances too, whatever
    # their name looks like).
    for inst in run.aws.describe_instances(region, filters=[
            {"Name": "tag-key", "Values": ["bakery:chef-node"]},
            {"Name": "instance-state-name", "Values": LIVE_STATES}]):
        if inst["InstanceId"] not in terminated:
            run.live_nodes.add(tags_of(inst).get("bakery:chef-node", ""))
    run.live_nodes.discard("")
    run.running_bakes.pop("", None)


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


def _reap_instances(run: _Reap, region: str) -> set[str]:
    """1. Bake instances past their expiry (+ older_than). Returns the ids terminated (or to be)."""
    terminated: set[str] = set()
    for inst in run.aws.describe_instances(region, filters=[
            {"Name": "tag:bakery:purpose", "Values": ["bake"]},
            {"Name": "instance-state-name", "Values": LIVE_STATES}]):
        tags = tags_of(inst)
        instance_id, bake_id, node = inst["InstanceId"], tags.get("bakery:bake-id", ""), tags.get("bakery:chef-node", "")
        if tags.get("bakery:purpose") != "bake" or not run.mine(bake_id):  # never a launch instance
            continue
        why = _instance_keep_reason(run, inst)
        if why is not None:
            run.ex.keep("instance", instance_id, region, why)
            run.running_bakes[bake_id] = f"its bake instance {instance_id} is alive ({why})"
            run.live_nodes.add(node)
            continue
        expires_raw = tags.get("bakery:expires-at", "")
        expires = parse_time(expires_raw)
        age = f"expired {_age(run.now - expires)} ago ({expires_raw})" if expires is not None else "named by --bake-id"
        action = Action("instance", instance_id, region, "terminate", "terminated",
                        f"bake {bake_id or '?'} {age}, {inst['State']['Name']}",
                        functools.partial(terminate_instance, run.aws, region, instance_id),
                        f"aws ec2 terminate-instances --region {region} --instance-ids {instance_id}")
        if run.ex.act(action):
            terminated.add(instance_id)
            run.ended_nodes.add(node)
        else:
            run.live_nodes.add(node)  # still alive: its node is not an orphan
    run.ended_nodes.discard("")
    return terminated


def _reap_images(run: _Reap, region: str, images: list[dict[str, Any]]) -> set[str]:
    """2. Unfinished/broken images no bake still owns. Returns the snapshots images still reference."""
    finished_bakes = {tags_of(i).get("bakery:bake-id") for i in images if i.get("State") == "available"}
    referenced = {s for i in images for s in snapshot_ids(i)}
    for image in sorted(images, key=lambda i: i["ImageId"]):
        state = image.get("State")
        image_id, bake_id = image["ImageId"], tags_of(image).get("bakery:bake-id", "")
        if state not in UNFINISHED_IMAGE_STATES | BROKEN_IMAGE_STATES or not run.mine(bake_id):
            continue  # available AMIs are prune's business, never reap's
        created = parse_time(image.get("CreationDate"))
        keep_reason = run.owner_alive(bake_id)
        if keep_reason is None and state in UNFINISHED_IMAGE_STATES and bake_id and bake_id in finished_bakes:
            keep_reason = f"bake {bake_id} has an available AMI: this is a copy in progress"
        keep_reason = keep_reason or run.young(created)
        if keep_reason:
            run.ex.keep("image", image_id, region, f"{state}: {keep_reason}")
            continue
        snaps = snapshot_ids(image)
        reason = (f"{state} image of bake {bake_id or '?'} ({image.get('Name')}), created "
                  f"{_age(run.now - created) + ' ago' if created is not None else 'at an unknown time'}; "
                  f"snapshots {', '.join(snaps) or 'none'}")
        action = Action("image", image_id, region, "deregister", "deregistered", reason,
                        functools.partial(deregister_with_snapshots, run.aws, region, image, run.sleep),
                        f"aws ec2 deregister-image --region {region} --image-id {image_id}")
        if run.ex.act(action) and not run.ex.dry_run:
            referenced -= set(snaps)
    return referenced


def _reap_snapshots(run: _Reap, region: str, referenced: set[str]) -> None:
    """Snapshots the bakery tagged whose image no longer exists (an image deregistered by a killed
    cleanup before it deleted the snapshots). Any image owned by this account counts, bakery or not."""
    snapshots = run.aws.paginate("ec2", region, "DescribeSnapshots", "Snapshots", OwnerIds=["self"],
                                 Filters=[{"Name": "tag-key", "Values": ["bakery:bake-id"]}])
    if snapshots:
        # Disabled AMIs are listed only on request, and still hold their snapshots.
        all_own = run.aws.describe_images(region, Owners=["self"], IncludeDisabled=True, IncludeDeprecated=True)
        referenced = referenced | {s for i in all_own if i.get("State") != "deregistered" for s in snapshot_ids(i)}
    for snap in sorted(snapshots, key=lambda s: s["SnapshotId"]):
        snap_id, bake_id = snap["SnapshotId"], tags_of(snap).get("bakery:bake-id", "")
        if snap_id in referenced or not run.mine(bake_id):
            continue  # belongs to an existing image: that image decides
        keep_reason = run.owner_alive(bake_id)
        if keep_reason is None and snap.get("State") == "pending":
            keep_reason = "still being created"
        keep_reason = keep_reason or run.young(parse_time(snap.get("StartTime")))
        if keep_reason:
            run.ex.keep("snapshot", snap_id, region, f"image gone but {keep_reason}")
            continue
        _delete_orphan_snapshot(run, region, snap_id, bake_id)


def _delete_orphan_snapshot(run: _Reap, region: str, snap_id: str, bake_id: str) -> None:
    def in_use(exc: BakeryError) -> str | None:
        # AWS knows of an image this listing missed: keep it (and so no retry on InUse here).
        if isinstance(exc, AwsError) and exc.code == "InvalidSnapshot.InUse":
            return f"AWS says an image still uses it: {exc}"
        return None

    run.ex.act(Action("snapshot", snap_id, region, "delete", "deleted", f"of bake {bake_id}, its image is gone",
                      lambda: delete_snapshot(run.aws, region, snap_id, run.sleep, retry_in_use=False),
                      f"aws ec2 delete-snapshot --region {region} --snapshot-id {snap_id}", kept_on=in_use))


def _chef_keep_reason(run: _Reap, name: str) -> str | None:
    m = CHEF_NODE_RE.match(name)
    if m is None:
        return "not a bakery bake name (bake-ROLE-YYYYMMDDHHMMSS-xxxxxx)"
    if run.bake_id is not None and not name.endswith(f"-{run.bake_id}"):
        return f"not of bake {run.bake_id}"
    if name in run.live_nodes:
        return "a live instance is tagged with it"
    if name in run.ended_nodes:
        return None  # its instance was terminated by this run: the identity goes with it
    try:
        made = datetime.strptime(m.group("stamp"), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        made = None
    young = run.young(made)
    return young.replace("created", "bake started") if young else None


def _reap_chef(chef: ChefClient, run: _Reap) -> None:
    """3. Chef nodes/clients of bakes with no live instance (client first, as everywhere)."""
    nodes = set(chef.list_nodes())
    clients = set(chef.list_clients())
    for name in sorted(n for n in nodes | clients if n.startswith("bake-")):
        kinds = [k for k, present in (("chef-client", name in clients), ("chef-node", name in nodes)) if present]
        why = _chef_keep_reason(run, name)
        if why is not None:
            for kind in kinds:
                if run.bake_id is None or not why.startswith("not of bake"):
                    run.ex.keep(kind, name, "", why)
            continue
        reason = ("its bake instance was terminated by this reap" if name in run.ended_nodes
                  else "no live instance is tagged bakery:chef-node with it")
        for kind in kinds:
            what = "node" if kind == "chef-node" else "client"
            delete = chef.delete_node if kind == "chef-node" else chef.delete_client
            run.ex.act(Action(kind, name, "", "delete", "deleted", reason, functools.partial(delete, name),
                              f"knife {what} delete {name} -y"))
