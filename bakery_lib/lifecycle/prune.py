"""``bakery prune``: the deprecated AMIs of a role older than its newest ``keep``, and their snapshots.

Per region of the role: DescribeImages (Owners=self, tags ``bakery:role`` and ``bakery:created-by=bakery``),
then for the candidates: DescribeImageReferences (any instance, launch template or ``aws:ec2:image``
SSM parameter of the account that references one keeps it); when that call fails, the bakery's own
scan: DescribeInstances (filter image-id; an AMI that an existing instance runs is kept),
DescribeLaunchTemplateVersions ($Default and $Latest of ``launch_template``; a missing template is fine),
SSM GetParameter ``/bakery/ROLE/latest``. The newest ``keep`` *available* AMIs are kept (a failed AMI is
never a rollback target, so it does not use up a place); pending ones belong to a bake in progress and
are left to that bake or to ``reap``. Deleting is DeregisterImage, then DeleteSnapshot for each snapshot
of the image's block device mappings. When any protection cannot be checked in a region, nothing is
deleted there. Before DeregisterImage: DescribeFastLaunchImages, and DisableFastLaunch (waited out)
for a Windows AMI whose Fast Launch is on; DisableFastSnapshotRestores on its snapshots in the role's
``fast_snapshot_restore`` zones (``amis.fast_launch``). An AMI under deregistration protection that
prune may not lift is kept with the reason, not an error. An available AMI whose deprecation time is still ahead is kept (publish deprecates
the AMIs a newer one supersedes); an AMI to delete that is protected from deregistration gets its
protection lifted first and, with AWS's cooldown, stays until a later prune (``amis.protection``).
Once every region is done: the S3 records (``bakes/ROLE/BAKE_ID/``: inventory, SBOM, log tails) of each
bake whose AMIs were deleted go too, unless an AMI that stays (in any region of the role) is of the same
bake or points at them by its ``bakery:sbom``/``bakery:bootstrap-log`` tag (``bakery_lib.records``: S3
ListObjectsV2, DeleteObject per object; a dry run lists them and shows what it would delete).
Decided first (Describe/Get calls only), then each deletion goes to the executor
(``CleanupReport``), which carries it out or, in a dry run, only shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..amis.fast_launch import disable_fast_launch, disable_restores
from ..amis.protection import deprecation_hold, launch_hold, protection_hold
from ..amis.recycle_bin import retention_note
from ..amis.references import referenced_by
from ..amis.retire import Now, utcnow
from ..aws import Aws, tags_of
from ..catalog import RoleSpec
from ..clock import Clock, Pace
from ..errors import AwsError, BakeryError, UsageError
from ..records import deletion, held_by, list_records, records_uri
from ..resources import deregister_with_snapshots, snapshot_ids
from ..stages.base import CleanupReport, Removal

Log = Callable[[str], None]

# Instance states in which an instance still exists (and may be started again from its AMI).
EXISTING_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
BROKEN_IMAGE_STATES = {"failed", "invalid", "error"}
UNFINISHED_IMAGE_STATES = {"pending"}
_CHUNK = 195  # DescribeInstances accepts at most 200 values per filter


def _quiet(_: str) -> None:
    pass


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _newest_first_key(image: dict[str, Any]) -> tuple[str, str, str]:
    # CreationDate has a resolution of one second; the bake id (a UTC stamp first) breaks ties.
    return (image.get("CreationDate") or "", tags_of(image).get("bakery:bake-id", ""), image["ImageId"])




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
    notes: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)  # the deleted AMIs' bake records in S3 (bakery_lib.records)

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
        out = [d.line() for d in self.decisions] + self.records
        verb = "would delete" if self.dry_run else "deleted"
        out.append(f"prune of role {self.role} (keep {self.keep}{', dry run' if self.dry_run else ''}): "
                   f"{len(self.deleted)} AMI(s) {verb}, {len(self.kept)} kept"
                   + (f", {len(self.errors)} error(s)" if self.errors else ""))
        out += [f"note: {n}" for n in self.notes]
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
                pace: Pace, report: PruneReport) -> AmiDecision:
    """Hand one decided deletion to the executor (which carries it out, or only shows it)."""
    image_id = image["ImageId"]
    snaps = snapshot_ids(image)

    def remove() -> str:
        # Fast Launch and fast snapshot restore off first (EC2 must remove the pre-provisioned snapshots).
        if image.get("Platform") == "windows":
            disable_fast_launch(aws, region, image_id, pace.clock, pace.poll, pace.log)
        disable_restores(aws, region, role.restore_zones(region), snaps)
        gone = deregister_with_snapshots(aws, region, image, clock=pace.clock, poll=pace.poll)
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
    if outcome.status == "skipped":
        return _decision(region, image, "kept", outcome.detail)
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


def _uses(aws: Aws, region: str, role: RoleSpec, candidates: list[dict[str, Any]],
          report: PruneReport) -> dict[str, list[str]]:
    """What points at the candidates: EC2's DescribeImageReferences, else the bakery's own scan."""
    try:
        return referenced_by(aws, region, [i["ImageId"] for i in candidates])
    except AwsError as exc:
        report.notes.append(f"{region}: DescribeImageReferences failed ({exc.code}); checked instances, the "
                            f"role's launch template and /bakery/{role.name}/latest instead")
    return _protections(aws, region, role, candidates)


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


def _hold(aws: Aws, role: RoleSpec, region: str, image: dict[str, Any], delete: bool, why: str, *,
          dry_run: bool, now: Now) -> tuple[bool, str]:
    """The deprecation, recent-launch and protection gates after the decision from age and uses."""
    if not delete:
        return delete, why
    wait = deprecation_hold(image, now()) or launch_hold(image, role.keep_if_launched_within, now())
    if wait is None:
        try:
            wait = protection_hold(aws, region, image, dry_run=dry_run, now=now)
        except BakeryError as exc:
            wait = f"its deregistration protection could not be lifted: {exc}"
    return (False, wait) if wait else (True, why)


def prune(aws: Aws, role: RoleSpec, keep: int, *, dry_run: bool, log: Log = _quiet,
          clock: Clock | None = None, poll_interval: float = 2.0, now: Now = utcnow) -> PruneReport:
    """Deregister the role's bakery AMIs older than the newest ``keep`` (per region) and their snapshots.

    Decides first (listing and protections: Describe/Get calls only), then hands each deletion to the
    executor; ``dry_run`` makes that a display-only executor. Retries sleep on ``clock`` (an abort ends them)."""
    if keep < 1:
        raise UsageError(f"--keep {keep}: at least 1 (the newest AMI of role {role.name} is never pruned)")
    report = PruneReport(role.name, keep, dry_run)
    executor, pace = CleanupReport(dry_run=dry_run), Pace(clock or Clock(), poll_interval, log)
    listed: list[dict[str, Any]] = []  # every region's AMIs of the role, for what their records need
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
                protected = _uses(aws, region, role, candidates, report)
            except BakeryError as exc:
                report.errors.append(f"{region}: cannot check what still uses the AMIs of role {role.name}, "
                                     f"so none was deleted there: {exc}")
                protected = None
        for image in candidates:
            delete, why = _hold(aws, role, region, image, *_why_delete(image, protected, keep), dry_run=dry_run, now=now)
            decisions[image["ImageId"]] = (
                _delete_ami(aws, region, role, image, why, executor=executor, pace=pace, report=report)
                if delete else _decision(region, image, "kept", why))
        # Report in the order the images were listed: newest first.
        report.decisions.extend(decisions[i["ImageId"]] for i in images if i["ImageId"] in decisions)
        listed += images
        if any(d.action in ("deleted", "would delete") for d in decisions.values()):
            report.notes.append(retention_note(aws, region))
    _remove_records(aws, role, listed, executor=executor, pace=pace, report=report)
    return report


def _remove_records(aws: Aws, role: RoleSpec, listed: list[dict[str, Any]], *, executor: CleanupReport,
                    pace: Pace, report: PruneReport) -> None:
    """The S3 records of each bake whose AMIs this prune deleted, unless an AMI that stays points at them
    (``bakery_lib.records``: one of the same bake in another region, or one whose tags name them)."""
    gone_ids = {d.image_id for d in report.deleted}
    staying = [i for i in listed if i["ImageId"] not in gone_ids]
    bakes = dict.fromkeys(tags_of(i).get("bakery:bake-id", "") for i in listed if i["ImageId"] in gone_ids)
    bucket = role.runlist_bucket
    for bake_id in filter(None, bakes):
        uri = records_uri(bucket, role.name, bake_id)
        why = held_by(staying, bucket, role.name, bake_id)
        if why is not None:
            report.records.append(f"{uri}: kept: {why}")
            continue
        try:
            keys = list_records(aws, role.region, bucket, role.name, bake_id)
        except BakeryError as exc:
            report.errors.append(f"cannot list the S3 records of bake {bake_id} ({exc}); remove them by hand: "
                                 f"aws s3 rm --recursive {uri}")
            continue
        if not keys:
            continue
        d = deletion(aws, role.region, bucket, role.name, bake_id, keys)
        errors_before = len(executor.errors)
        executor.attempt(pace, Removal("records", d.resource, "", "delete", "deleted", d.manual, d.remove,
                                       label=d.label))
        outcome = executor.outcomes[-1]
        if outcome.status == "failed":
            report.errors.extend(executor.errors[errors_before:])
        action = {"would": "would delete", "done": "deleted"}.get(outcome.status, "failed")
        report.records.append(f"{d.resource}: {action}: the AMIs of bake {bake_id} "
                              f"{'would be' if report.dry_run else 'were'} deleted")
