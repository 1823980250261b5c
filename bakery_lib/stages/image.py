"""image: create the AMI from the stopped bake instance.

The name is unique per bake (``bakery-ROLE-RELEASE-BAKEID``); the image and its snapshots carry
DESIGN's tags from CreateImage on (``TagSpecifications``; where a ``snapshot`` specification is refused,
as moto does with a 500, the snapshots are tagged with CreateTags by wait-image). The image id is saved
the moment CreateImage returns. An image of this bake that already exists (found by its
``bakery:bake-id`` tag, or by ``InvalidAMIName.Duplicate`` on its name) is adopted, so a rerun never
creates a second one.
Calls: DescribeImages, CreateImage, CreateTags.
Cleanup: an image of the bake that ``wait-image`` did not finish (pending, failed, or available but not
recorded in ``amis``) is deregistered and its snapshots (from the image, the state and the
``bakery:bake-id`` tag) deleted; the image's snapshots are written to the state before DeregisterImage
(after it, a tag that shows late would be all that names them). A finished image is a good AMI and is
kept.
"""

from __future__ import annotations

from typing import Any

from ..aws import tag_list, tags_of
from ..ec2.images import image_name, image_tags, tag_snapshots
from ..errors import AwsError, BakeryError
from ..resources import delete_snapshot, deregister_image, snapshot_ids
from .base import CleanupReport, Context, Removal, Teardown


def find_own_image(ctx: Teardown, bake_id: str) -> dict | None:
    images = ctx.aws.describe_images(ctx.region, Owners=["self"], Filters=[
        {"Name": "tag:bakery:bake-id", "Values": [bake_id]}])
    images = [i for i in images if i.get("State") not in ("deregistered",)]
    return images[0] if images else None


# What a service answers to a parameter it does not implement: moto's HTML 500 page (a parse error).
_UNSUPPORTED = ("ResponseParserError", "500", "InternalError", "InternalFailure")


def _create_image(ctx: Context) -> str:
    """CreateImage with the image and its snapshots tagged from birth (a kill right after it leaves
    nothing untagged for reap to miss). moto answers 500 to a ``snapshot`` TagSpecification (not
    implemented there): then the image alone is tagged here and wait-image tags the snapshots, and
    that region is not asked again in this process."""
    state = ctx.require_state()
    tags = tag_list(image_tags(ctx))
    params: dict[str, Any] = {
        "InstanceId": state.instance_id, "Name": state.image_name,
        "Description": f"AMI Bakery: role {ctx.role.name}, release {state.release}, bake {state.bake_id}"[:255]}
    image_only = [{"ResourceType": "image", "Tags": tags}]
    aws = ctx.aws
    if ctx.region in aws.snapshot_tag_specs_known:
        return _create_image_once(ctx, params, image_only, tags)
    # The first CreateImage of a region finds out; bakes of other roles wait for its answer
    # rather than each being refused once.
    with aws.snapshot_tag_specs_probe:
        image_id = _create_image_once(ctx, params, image_only, tags)
        aws.snapshot_tag_specs_known.add(ctx.region)
        return image_id


def _create_image_once(ctx: Context, params: dict[str, Any], image_only: list[dict[str, Any]],
                       tags: list[dict[str, str]]) -> str:
    if ctx.region not in ctx.aws.no_snapshot_tag_specs:
        try:
            # moto's 500 is an HTML page: a parse error, which neither botocore nor the gate retries.
            return str(ctx.ec2("CreateImage", **params, TagSpecifications=[
                *image_only, {"ResourceType": "snapshot", "Tags": tags}])["ImageId"])
        except AwsError as exc:
            if exc.code not in _UNSUPPORTED:
                raise
            ctx.aws.no_snapshot_tag_specs.add(ctx.region)
            ctx.log(f"CreateImage refused snapshot tags ({exc.code}); tagging the snapshots afterwards")
    return str(ctx.ec2("CreateImage", **params, TagSpecifications=image_only)["ImageId"])


def _adopt_duplicate(ctx: Context) -> str:
    """The name is taken: by this bake's own image (a CreateImage whose answer was lost, a retried
    500) it is adopted; by anything else it is an error naming the owner. Names are unique per bake."""
    state = ctx.require_state()
    found = ctx.aws.describe_images(ctx.region, Owners=["self"], Filters=[
        {"Name": "name", "Values": [state.image_name or ""]}])
    for image in found:
        if tags_of(image).get("bakery:bake-id") == state.bake_id:
            ctx.log(f"image name {state.image_name} is taken by this bake's own {image['ImageId']}: adopted")
            return str(image["ImageId"])
    owner = tags_of(found[0]).get("bakery:bake-id", "no bakery:bake-id tag") if found else "not visible"
    raise BakeryError(f"an image named {state.image_name} already exists and is not this bake's "
                      f"({found[0]['ImageId'] if found else '?'}: {owner}); deregister it or bake again")


def run(ctx: Context) -> str:
    state = ctx.require_state()
    if not state.instance_id:
        raise BakeryError("the bake state has no instance; run the launch stage first")
    rerun = state.stage("image").attempts > 1 or state.image_id is not None
    existing = find_own_image(ctx, state.bake_id) if rerun else None
    if existing is not None:
        state.image_id = existing["ImageId"]
        state.image_name = existing.get("Name")
        state.image_state = existing.get("State")
        ctx.save()
        tag_snapshots(ctx, existing)
        return f"image {existing['ImageId']} of bake {state.bake_id} already exists ({existing.get('State')})"
    state.image_name = image_name(ctx.role.name, state.release, state.bake_id)
    try:
        image_id = _create_image(ctx)
    except AwsError as exc:
        if exc.code != "InvalidAMIName.Duplicate":
            raise
        image_id = _adopt_duplicate(ctx)
    state.image_id = image_id
    state.image_state = "pending"
    ctx.save()
    # Its snapshots appear while the image is pending: wait-image tags them. The result line says it
    # once (no progress line before it: CreateImage returns at once).
    return f"image {image_id} ({state.image_name}) requested"


def _unfinished_image(ctx: Teardown, report: CleanupReport) -> dict[str, Any] | None:
    state = ctx.require_state()
    if state.reused:
        return None  # the reused AMI belongs to an earlier bake
    try:
        image = find_own_image(ctx, state.bake_id)
        if image is None and state.image_id:
            found = ctx.aws.describe_images(state.region, [state.image_id])
            image = found[0] if found else None
    except BakeryError as exc:
        report.errors.append(f"could not look up images of bake {state.bake_id}: {exc}")
        return None
    if image is None:
        return None
    state.image_id = image["ImageId"]
    # The AMI wait-image recorded was available then: AMIs never go back to pending, so a describe
    # showing it pending now is a replica behind (EC2 eventual consistency), not an unfinished image.
    recorded = state.amis.get(state.region) == image["ImageId"]
    if recorded and image.get("State") in ("available", "pending"):
        report.kept.append(f"available image {image['ImageId']}")
        return None
    return image


def _bake_snapshots(ctx: Teardown, report: CleanupReport) -> set[str]:
    """Snapshots the state recorded or that carry the bake's tag (a killed run may have recorded none)."""
    state = ctx.require_state()
    snaps = set(state.snapshot_ids)
    try:
        tagged = ctx.ec2("DescribeSnapshots", OwnerIds=["self"], Filters=[
            {"Name": "tag:bakery:bake-id", "Values": [state.bake_id]}]).get("Snapshots", [])
        snaps |= {s["SnapshotId"] for s in tagged}
    except BakeryError as exc:
        report.errors.append(f"could not look up snapshots of bake {state.bake_id}: {exc}")
    return snaps


def cleanup(ctx: Teardown, report: CleanupReport) -> None:
    state = ctx.require_state()
    region = state.region
    image = _unfinished_image(ctx, report)
    if image is not None:
        image_id = image["ImageId"]
        state.snapshot_ids = sorted(set(snapshot_ids(image)) | set(state.snapshot_ids))

        def dereg() -> str:
            # The snapshots the image holds are in the state before it goes: once it is deregistered
            # only their bake-id tag names them, and a tag can show late (EC2 eventual consistency),
            # so a cleanup killed here must leave them to the next one, not to a look-up by tag.
            report.save(ctx)
            deregister_image(ctx.aws, region, image_id, clock=ctx.clock, poll=ctx.poll_interval, log=ctx.log)
            state.image_state = "deregistered"
            report.save(ctx)
            return f"deregistered {image.get('State')} image {image_id}"
        removal = Removal("image", image_id, region, "deregister", "deregistered",
                          f"aws ec2 deregister-image --region {region} --image-id {image_id}", dereg)
        protection = image.get("DeregistrationProtection") or ""
        if protection:
            # Only prune lifts it, once nothing points at the AMI: cleanup and reap keep it, saying why.
            report.skip(removal, f"deregistration protection is {protection}: something may point at it "
                                 "(`bakery prune` lifts it once nothing does)")
            gone = False
        else:
            gone = report.attempt(ctx, removal)
    else:
        gone = state.image_state == "deregistered" or not state.amis
    if not gone:
        return  # an image still holds the snapshots (or is the bake's good AMI)
    errors_before = len(report.errors)
    for snap in sorted(_bake_snapshots(ctx, report)):
        def delete(snap: str = snap) -> str:
            deleted = delete_snapshot(ctx.aws, region, snap, ctx.sleep, max_delay=ctx.poll_interval)
            return f"deleted snapshot {snap}" if deleted else ""
        report.attempt(ctx, Removal("snapshot", snap, region, "delete", "deleted",
                                    f"aws ec2 delete-snapshot --region {region} --snapshot-id {snap}", delete))
    if len(report.errors) == errors_before and not report.dry_run:
        state.snapshot_ids = []
