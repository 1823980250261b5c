"""Reap's look (Describe/List calls only): per region, what each bake left, before anything is decided.

Per region: live instances tagged ``bakery:bake-id`` (any purpose but ``launch``: the bake instance, a
boot test's), bakery images (``bakery:created-by=bakery``), snapshots tagged ``bakery:bake-id`` and the
images that use them, and the Chef node names live instances carry.

Not yet listed (EC2 eventual consistency: an instance launched seconds ago is missing from filtered
describes and answers NotFound by id): an instance a workspace state records but the survey did not list
is looked up by id (found: it joins the survey); one not found, or a ``--bake-id`` bake started less than
``ABSENT_GRACE`` ago of which nothing is listed (no instance, not even a terminated one), is an error
(exit 1, "run reap again"): reap never calls such a bake clean, and a later run gets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..aws import Aws, tags_of
from ..ec2.instances import LIVE_STATES
from ..errors import BakeryError
from ..resources import snapshot_ids
from ..state import BakeState
from ..waits import ABSENT_GRACE
from .durations import span
from .prune import BROKEN_IMAGE_STATES, UNFINISHED_IMAGE_STATES
from .report import ReapLine, ReapRun


@dataclass
class BakeHere:
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
class Survey:
    """Everything reap looked at (Describe/List calls only), before it decides anything."""

    bakes: dict[tuple[str, str], BakeHere] = field(default_factory=dict)  # (bake id, region)
    finished: set[str] = field(default_factory=set)  # bakes with an available AMI in some region
    chef_tagged: list[tuple[str, str]] = field(default_factory=list)  # (instance id, node) of live instances
    unnamed: list[ReapLine] = field(default_factory=list)  # bakery images without a bake id: left alone
    images: list[dict[str, Any]] = field(default_factory=list)  # every bakery image listed, any state

    def here(self, bake_id: str, region: str) -> BakeHere:
        return self.bakes.setdefault((bake_id, region), BakeHere(bake_id, region))

    def merge(self, other: Survey) -> None:
        self.bakes.update(other.bakes)
        self.finished |= other.finished
        self.chef_tagged += other.chef_tagged
        self.unnamed += other.unnamed
        self.images += other.images



def look(run: ReapRun, workspace_states: Sequence[BakeState]) -> tuple[Survey, bool]:
    """Everything of every region (Describe/List only), and whether every region could be looked at."""
    found, complete = Survey(), True
    for region in dict.fromkeys(run.regions):
        seen = Survey()
        try:
            _survey_region(run.aws, region, seen)
        except BakeryError as exc:
            # Nothing is decided on half a look: that region's bakes wait for the next run.
            complete = False
            run.report.errors.append(f"{region}: {exc}")
            continue
        found.merge(seen)
    if complete:
        try:
            _not_yet_listed(run, found, workspace_states)
        except BakeryError as exc:
            run.report.errors.append(f"looking up instances not listed yet: {exc}")
    return found, complete


def _bake_started(bake_id: str, state: BakeState | None) -> float | None:
    """When the bake started (its launch, when the state has it; else the bake id's UTC stamp)."""
    launch = state.stages.get("launch") if state is not None else None
    if launch is not None and launch.started_at:
        return launch.started_at
    try:
        return datetime.strptime(bake_id[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _not_listed_yet(run: ReapRun, bake_id: str, what: str, started: float | None) -> None:
    age = f"started {span(run.now - started)} ago" if started is not None else "of unknown age"
    run.report.errors.append(
        f"bake {bake_id} ({age}): {what} not listed by EC2 yet (a new instance can take seconds to minutes "
        f"to appear): the bake is not declared clean; run reap again in a minute")


def _not_yet_listed(run: ReapRun, survey: Survey, states: Sequence[BakeState]) -> None:
    """Evidence of an instance the tag survey could not show yet (see the module docstring)."""
    recorded = {s.bake_id: s for s in states if s.instance_id and not s.instance_terminated and not s.closed
                and s.bake_id not in run.open_bakes and run.mine(s.bake_id)}
    _recorded_by_id(run, survey, list(recorded.values()))
    bake_id = run.bake_id
    if bake_id is not None and bake_id not in recorded and not any(k[0] == bake_id for k in survey.bakes):
        _young_and_unseen(run, survey, bake_id)


def _recorded_by_id(run: ReapRun, survey: Survey, recorded: list[BakeState]) -> None:
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


def _young_and_unseen(run: ReapRun, survey: Survey, bake_id: str) -> None:
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



def _survey_region(aws: Aws, region: str, survey: Survey) -> None:
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


def _survey_images(aws: Aws, region: str, survey: Survey) -> None:
    """The bakery's images of the region: good AMIs apart from the leftovers (unfinished or untested)."""
    for image in aws.describe_images(region, Owners=["self"], Filters=[
            {"Name": "tag:bakery:created-by", "Values": ["bakery"]}]):
        survey.images.append(image)
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


def _survey_snapshots(aws: Aws, region: str, survey: Survey) -> None:
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


def _untested(image: dict[str, Any], here: BakeHere) -> bool:
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
