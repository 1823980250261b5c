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
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .aws import Aws, tags_of
from .catalog import RoleSpec
from .errors import AwsError, BakeryError, UsageError
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
# DeleteSnapshot right after DeregisterImage can briefly fail with InvalidSnapshot.InUse on AWS.
SNAPSHOT_RETRY_DELAYS = (2.0, 5.0, 10.0)
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


def image_snapshots(image: dict[str, Any]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) or []
            if (m.get("Ebs") or {}).get("SnapshotId")]


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _newest_first_key(image: dict[str, Any]) -> tuple[str, str, str]:
    # CreationDate has a resolution of one second; the bake id (a UTC stamp first) breaks ties.
    return (image.get("CreationDate") or "", tags_of(image).get("bakery:bake-id", ""), image["ImageId"])


def _delete_snapshot(aws: Aws, region: str, snapshot_id: str, sleep: Callable[[float], None], *,
                     retry_in_use: bool = True) -> bool:
    """True when deleted, False when it was already gone. Retries while AWS still sees it in use."""
    for attempt in range(len(SNAPSHOT_RETRY_DELAYS) + 1):
        try:
            aws.call("ec2", region, "DeleteSnapshot", SnapshotId=snapshot_id)
            return True
        except AwsError as exc:
            if exc.code == "InvalidSnapshot.NotFound":
                return False
            if exc.code != "InvalidSnapshot.InUse" or not retry_in_use or attempt == len(SNAPSHOT_RETRY_DELAYS):
                raise
            sleep(SNAPSHOT_RETRY_DELAYS[attempt])
    return False  # not reached


def _deregister(aws: Aws, region: str, image_id: str) -> bool:
    """True when deregistered, False when it was already gone."""
    try:
        aws.call("ec2", region, "DeregisterImage", ImageId=image_id)
        return True
    except AwsError as exc:
        if exc.code in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return False
        raise


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
                       image.get("State") or "?", action, reason, tuple(image_snapshots(image)))


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
    snaps = image_snapshots(image)
    if dry_run:
        return _decision(region, image, "would delete", f"{old}; snapshots {', '.join(snaps) or 'none'}")
    try:
        _deregister(aws, region, image_id)
        gone = [s for s in snaps if _delete_snapshot(aws, region, s, sleep)]
    except BakeryError as exc:
        report.errors.append(
            f"{region} {image_id}: {exc}. Remove it by hand: aws ec2 deregister-image --region {region} "
            f"--image-id {image_id}"
            + "".join(f" && aws ec2 delete-snapshot --region {region} --snapshot-id {s}" for s in snaps))
        return _decision(region, image, "failed", str(exc))
    log(f"prune {role.name}: {region} deregistered {image_id} ({image.get('Name')}), snapshots {', '.join(gone) or 'none'}")
    return _decision(region, image, "deleted", f"{old}; snapshots deleted: {', '.join(gone) or 'none'}")


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
) -> ReapReport:
    """Remove what killed bakes left behind. See the module docstring for exactly what and when.

    ``chef`` None with ``chef_error`` (why the client could not be made) skips Chef and exits 1;
    ``chef`` None without it skips Chef on purpose (``--no-chef``).
    """
    now = time.time() if now is None else now
    older_than = max(0.0, float(older_than))
    report = ReapReport(dry_run)
    # Bakes a workspace state still has open: their resources are not leftovers.
    open_bakes = {s.bake_id: s for s in workspace_states if not s.closed}
    live_nodes: set[str] = set()
    aws_complete = True

    for region in dict.fromkeys(regions):
        try:
            nodes = _reap_region(aws, region, report, older_than=older_than, open_bakes=open_bakes, now=now,
                                 dry_run=dry_run, log=log, sleep=sleep)
            live_nodes |= nodes
        except BakeryError as exc:
            aws_complete = False
            report.errors.append(f"{region}: {exc}")

    # A bake between preflight and launch has a node name but no instance yet.
    live_nodes |= {s.chef_node for s in open_bakes.values() if s.chef_node}
    if chef is None:
        report.chef_skipped = chef_error or "not asked to (--no-chef)"
        report.chef_failed = chef_error is not None
    elif not aws_complete:
        report.chef_skipped = ("the live bake instances could not be listed in every region, so no Chef node "
                               "can be proven orphaned")
        report.chef_failed = True
    else:
        try:
            _reap_chef(chef, report, live_nodes, older_than=older_than, now=now, dry_run=dry_run, log=log)
        except BakeryError as exc:
            report.chef_skipped = str(exc)
            report.chef_failed = True
    if report.chef_skipped:
        log(f"reap: Chef skipped: {report.chef_skipped}")
    return report


def _reap_region(aws: Aws, region: str, report: ReapReport, *, older_than: float,
                 open_bakes: dict[str, BakeState], now: float, dry_run: bool, log: Log,
                 sleep: Callable[[float], None]) -> set[str]:
    """Instances, images and snapshots of one region. Returns the Chef node names still alive there."""
    live_nodes: set[str] = set()
    # 1. Bake instances past their expiry (+ older_than).
    running_bakes: dict[str, str] = {}  # bake id -> why its bake is still alive
    bake_instances = aws.describe_instances(region, filters=[
        {"Name": "tag:bakery:purpose", "Values": ["bake"]},
        {"Name": "instance-state-name", "Values": LIVE_STATES}])
    for inst in bake_instances:
        tags = tags_of(inst)
        if tags.get("bakery:purpose") != "bake":  # belt and braces: never a launch instance
            continue
        instance_id, bake_id, node = inst["InstanceId"], tags.get("bakery:bake-id", ""), tags.get("bakery:chef-node", "")
        expires_raw = tags.get("bakery:expires-at", "")
        expires = parse_time(expires_raw)
        if expires is None:
            report.add("instance", instance_id, region, "kept",
                       f"no valid bakery:expires-at tag ({expires_raw!r}); remove it by hand if it is abandoned", log)
            running_bakes[bake_id] = f"its bake instance {instance_id} has no expiry"
            live_nodes.add(node)
            continue
        if now - expires <= older_than:
            left = f"expires {expires_raw}" if expires > now else f"expired {_age(now - expires)} ago, within --older-than"
            report.add("instance", instance_id, region, "kept", f"bake {bake_id or '?'}: {left}", log)
            running_bakes[bake_id] = f"its bake instance {instance_id} is alive ({left})"
            live_nodes.add(node)
            continue
        reason = f"bake {bake_id or '?'} expired {_age(now - expires)} ago ({expires_raw}), {inst['State']['Name']}"
        if dry_run:
            report.add("instance", instance_id, region, "would terminate", reason, log)
            continue
        try:
            aws.call("ec2", region, "TerminateInstances", InstanceIds=[instance_id])
        except AwsError as exc:
            if exc.code != "InvalidInstanceID.NotFound":
                report.add("instance", instance_id, region, "failed", str(exc), log)
                report.errors.append(f"{region} instance {instance_id}: {exc}. Remove it by hand: aws ec2 "
                                     f"terminate-instances --region {region} --instance-ids {instance_id}")
                live_nodes.add(node)  # still alive: its node is not an orphan
                continue
        report.add("instance", instance_id, region, "terminated", reason, log)
    running_bakes.pop("", None)
    live_nodes.discard("")

    # 2. Unfinished/broken images and orphan snapshots of the bakery.
    images = aws.describe_images(region, Owners=["self"], Filters=[
        {"Name": "tag:bakery:created-by", "Values": ["bakery"]}])
    images = [i for i in images if i.get("State") != "deregistered"]
    finished_bakes = {tags_of(i).get("bakery:bake-id") for i in images if i.get("State") == "available"}
    referenced = {s for i in images for s in image_snapshots(i)}
    for image in sorted(images, key=lambda i: i["ImageId"]):
        state = image.get("State")
        if state not in UNFINISHED_IMAGE_STATES | BROKEN_IMAGE_STATES:
            continue  # available AMIs are prune's business, never reap's
        image_id, bake_id = image["ImageId"], tags_of(image).get("bakery:bake-id", "")
        created = parse_time(image.get("CreationDate"))
        keep_reason = None
        if bake_id in open_bakes:
            keep_reason = f"bake {bake_id} of role {open_bakes[bake_id].role} is open in the workspace"
        elif bake_id and bake_id in running_bakes:
            keep_reason = f"bake {bake_id} is still running: {running_bakes[bake_id]}"
        elif state in UNFINISHED_IMAGE_STATES and bake_id and bake_id in finished_bakes:
            keep_reason = f"bake {bake_id} has an available AMI: this is a copy in progress"
        # Without --older-than age does not matter, and clock skew between this host and AWS cannot keep anything.
        elif older_than and created is not None and now - created < older_than:
            keep_reason = f"created {_age(now - created)} ago, within --older-than"
        if keep_reason:
            report.add("image", image_id, region, "kept", f"{state}: {keep_reason}", log)
            continue
        snaps = image_snapshots(image)
        reason = (f"{state} image of bake {bake_id or '?'} ({image.get('Name')}), created "
                  f"{_age(now - created) + ' ago' if created is not None else 'at an unknown time'}; "
                  f"snapshots {', '.join(snaps) or 'none'}")
        if dry_run:
            report.add("image", image_id, region, "would deregister", reason, log)
            continue
        try:
            _deregister(aws, region, image_id)
            for snap in snaps:
                _delete_snapshot(aws, region, snap, sleep)
            referenced -= set(snaps)
        except BakeryError as exc:
            report.add("image", image_id, region, "failed", str(exc), log)
            report.errors.append(f"{region} image {image_id}: {exc}. Remove it by hand: aws ec2 deregister-image "
                                 f"--region {region} --image-id {image_id}")
            continue
        report.add("image", image_id, region, "deregistered", reason, log)

    # Snapshots the bakery tagged whose image no longer exists (an image deregistered by a killed
    # cleanup before it deleted the snapshots). Any image owned by this account counts, bakery or not.
    snapshots = aws.paginate("ec2", region, "DescribeSnapshots", "Snapshots", OwnerIds=["self"],
                             Filters=[{"Name": "tag-key", "Values": ["bakery:bake-id"]}])
    if snapshots:
        # Disabled AMIs are listed only on request, and still hold their snapshots.
        all_own = aws.describe_images(region, Owners=["self"], IncludeDisabled=True, IncludeDeprecated=True)
        referenced |= {s for i in all_own if i.get("State") != "deregistered" for s in image_snapshots(i)}
    for snap in sorted(snapshots, key=lambda s: s["SnapshotId"]):
        snap_id, bake_id = snap["SnapshotId"], tags_of(snap).get("bakery:bake-id", "")
        if snap_id in referenced:
            continue  # belongs to an existing image: that image decides
        started = parse_time(snap.get("StartTime"))
        keep_reason = None
        if bake_id in open_bakes:
            keep_reason = f"bake {bake_id} of role {open_bakes[bake_id].role} is open in the workspace"
        elif bake_id in running_bakes:
            keep_reason = f"bake {bake_id} is still running: {running_bakes[bake_id]}"
        elif snap.get("State") == "pending":
            keep_reason = "still being created"
        elif older_than and started is not None and now - started < older_than:
            keep_reason = f"created {_age(now - started)} ago, within --older-than"
        if keep_reason:
            report.add("snapshot", snap_id, region, "kept", f"image gone but {keep_reason}", log)
            continue
        reason = f"of bake {bake_id}, its image is gone"
        if dry_run:
            report.add("snapshot", snap_id, region, "would delete", reason, log)
            continue
        try:
            # No retry on InvalidSnapshot.InUse here: it means an image this listing missed still uses it.
            _delete_snapshot(aws, region, snap_id, sleep, retry_in_use=False)
        except BakeryError as exc:
            if isinstance(exc, AwsError) and exc.code == "InvalidSnapshot.InUse":
                report.add("snapshot", snap_id, region, "kept", f"AWS says an image still uses it: {exc}", log)
                continue
            report.add("snapshot", snap_id, region, "failed", str(exc), log)
            report.errors.append(f"{region} snapshot {snap_id}: {exc}. Remove it by hand: aws ec2 delete-snapshot "
                                 f"--region {region} --snapshot-id {snap_id}")
            continue
        report.add("snapshot", snap_id, region, "deleted", reason, log)

    # Any live instance carrying a Chef node name keeps that node (launch instances too, whatever
    # their name looks like).
    ending = {r.resource for r in report.lines if r.kind == "instance" and r.action in ("terminated", "would terminate")}
    for inst in aws.describe_instances(region, filters=[
            {"Name": "tag-key", "Values": ["bakery:chef-node"]},
            {"Name": "instance-state-name", "Values": LIVE_STATES}]):
        if inst["InstanceId"] not in ending:
            live_nodes.add(tags_of(inst).get("bakery:chef-node", ""))
    live_nodes.discard("")
    return live_nodes


def _reap_chef(chef: ChefClient, report: ReapReport, live_nodes: set[str], *, older_than: float, now: float,
               dry_run: bool, log: Log) -> None:
    nodes = set(chef.list_nodes())
    clients = set(chef.list_clients())
    for name in sorted(n for n in nodes | clients if n.startswith("bake-")):
        kinds = [k for k, present in (("chef-node", name in nodes), ("chef-client", name in clients)) if present]
        m = CHEF_NODE_RE.match(name)
        if m is None:
            for kind in kinds:
                report.add(kind, name, "", "kept", "not a bakery bake name (bake-ROLE-YYYYMMDDHHMMSS-xxxxxx)", log)
            continue
        if name in live_nodes:
            for kind in kinds:
                report.add(kind, name, "", "kept", "a live instance is tagged with it", log)
            continue
        try:
            made = datetime.strptime(m.group("stamp"), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            made = None
        if older_than and made is not None and now - made < older_than:
            for kind in kinds:
                report.add(kind, name, "", "kept", f"bake started {_age(now - made)} ago, within --older-than", log)
            continue
        reason = "no live instance is tagged bakery:chef-node with it"
        for kind in kinds:
            if dry_run:
                report.add(kind, name, "", "would delete", reason, log)
                continue
            delete = chef.delete_node if kind == "chef-node" else chef.delete_client
            try:
                delete(name)  # False (already gone) is as good as deleted
            except BakeryError as exc:
                report.add(kind, name, "", "failed", str(exc), log)
                what = "node" if kind == "chef-node" else "client"
                report.errors.append(f"Chef {what} {name}: {exc}. Remove it by hand: knife {what} delete {name} -y")
                continue
            report.add(kind, name, "", "deleted", reason, log)
