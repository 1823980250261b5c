"""image: create the AMI from the stopped bake instance.

The name is unique per bake (``bakery-ROLE-RELEASE-BAKEID``); the image carries DESIGN's tags from
CreateImage on, and its snapshots are tagged with CreateTags (a ``snapshot`` TagSpecification on
CreateImage is not supported everywhere). The image id is saved the moment CreateImage returns.
An image of this bake that already exists (found by its ``bakery:bake-id`` tag) is adopted, so a
rerun never creates a second one.
Calls: DescribeImages, CreateImage, CreateTags.
Cleanup: deregister an image that never became available and delete its snapshots.
"""

from __future__ import annotations

import re

from ..errors import BakeryError
from .base import Context


def image_name(role: str, release: str, bake_id: str) -> str:
    safe_release = re.sub(r"[^A-Za-z0-9().\-/_]", "_", release)[:40]
    return f"bakery-{role}-{safe_release}-{bake_id}"[:128]


def image_tags(ctx: Context) -> dict[str, str]:
    state = ctx.require_state()
    tags = dict(ctx.role.tags)
    tags.update({
        "Name": state.image_name or image_name(ctx.role.name, state.release, state.bake_id),
        "bakery:role": ctx.role.name,
        "bakery:release": state.release,
        "bakery:bake-id": state.bake_id,
        "bakery:base-ami": state.base_ami or "",
        "bakery:bake-key": state.bake_key or "",
        "bakery:created-by": "bakery",
    })
    return tags


def find_own_image(ctx: Context, bake_id: str) -> dict | None:
    images = ctx.aws.describe_images(ctx.region, Owners=["self"], Filters=[
        {"Name": "tag:bakery:bake-id", "Values": [bake_id]}])
    images = [i for i in images if i.get("State") not in ("deregistered",)]
    return images[0] if images else None


IMDS_TAG = "bakery:imds-support"


def tag_snapshots(ctx: Context, image: dict, *, imds_required: bool = False) -> list[str]:
    """Tag the image's snapshots like the image (each once). ``imds_required``: IMDSv2 is now required
    on the image, so the image gets ``bakery:imds-support=v2.0`` in the same call — the mark the
    reuse look-up asks for, so an image whose ModifyImageAttribute failed is never reused."""
    state = ctx.require_state()
    snaps = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
             if m.get("Ebs", {}).get("SnapshotId")]
    new = [s for s in snaps if s not in state.snapshot_ids]
    resources = ([image["ImageId"]] if imds_required else []) + new
    if resources:
        # Tag first, record second: a snapshot recorded as ours is never tagged again, so recording it
        # before a failed CreateTags would leave it untagged for good (cleanup finds it from the image).
        tags = image_tags(ctx)
        if imds_required:
            tags[IMDS_TAG] = "v2.0"
        ctx.ec2("CreateTags", Resources=resources, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        state.snapshot_ids.extend(new)
        ctx.save()
    return snaps


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
    tags = image_tags(ctx)
    image_id = ctx.ec2(
        "CreateImage",
        InstanceId=state.instance_id,
        Name=state.image_name,
        Description=f"AMI Bakery: role {ctx.role.name}, release {state.release}, bake {state.bake_id}"[:255],
        TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )["ImageId"]
    state.image_id = image_id
    state.image_state = "pending"
    ctx.save()
    ctx.log(f"creating image {image_id} ({state.image_name})")
    # Its snapshots appear while the image is pending: wait-image tags them.
    return f"image {image_id} ({state.image_name}) requested"
