"""The bakery's images: their name and tags, tagging a new image's snapshots, re-tagging a reused AMI.

Shared by the image, wait-image, preflight and publish stages.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..aws import tag_list, tags_of
from ..resources import snapshot_ids
from ..waits import while_propagating

if TYPE_CHECKING:
    from ..stages.base import Context


def image_name(role: str, release: str, bake_id: str) -> str:
    safe_release = re.sub(r"[^A-Za-z0-9().\-/_]", "_", release)[:40]
    return f"bakery-{role}-{safe_release}-{bake_id}"[:128]


BUILD_TAG = "bakery:build"


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
    if ctx.settings.build:
        # The Jenkins build that made the image (copies carry it too): `bakery summary --from-aws` shows it.
        tags[BUILD_TAG] = ctx.settings.build
    if state.sbom_uri:
        tags["bakery:sbom"] = state.sbom_uri  # bootstrap uploaded the bake's SBOM (bakery_lib.inventory)
    return tags


IMDS_TAG = "bakery:imds-support"


def tag_snapshots(ctx: Context, image: dict, *, imds_required: bool = False) -> list[str]:
    """Tag the image's snapshots like the image (each once). ``imds_required``: IMDSv2 is now required
    on the image, so the image gets ``bakery:imds-support=v2.0`` in the same call — the mark the
    reuse look-up asks for, so an image whose ModifyImageAttribute failed is never reused."""
    state = ctx.require_state()
    snaps = snapshot_ids(image)
    new = [s for s in snaps if s not in state.snapshot_ids]
    resources = ([image["ImageId"]] if imds_required else []) + new
    if resources:
        # Tag first, record second: a snapshot recorded as ours is never tagged again, so recording it
        # before a failed CreateTags would leave it untagged for good (cleanup finds it from the image).
        tags = image_tags(ctx)
        if imds_required:
            tags[IMDS_TAG] = "v2.0"
        # Snapshots appear while the image is pending and may still answer NotFound to CreateTags.
        while_propagating(lambda: ctx.ec2("CreateTags", Resources=resources, Tags=tag_list(tags)),
                          what=f"tagging {', '.join(resources)}", clock=ctx.clock, log=ctx.log)
        state.snapshot_ids.extend(new)
        ctx.save()
    return snaps


def retag_image(ctx: Context, region: str, image: dict[str, Any]) -> str:
    """Bring a reused AMI's catalogue tags to what the catalogue says today, on the image and its
    snapshots: tags do not shape the image, so they are not in the bake key, and a reused AMI would
    otherwise keep the tags of the bake that made it. Added or changed tags are set; catalogue tags no
    longer listed are removed; ``Name`` and ``aws:``/``bakery:`` tags are the bakery's and stay.
    ``image``: as DescribeImages returned it (preflight's reuse look-up has it: no extra call).
    Returns what changed ("" when nothing did)."""
    image_id = image["ImageId"]
    current = {k: v for k, v in tags_of(image).items()
               if k != "Name" and not k.lower().startswith(("aws:", "bakery:"))}
    wanted = dict(ctx.role.tags)
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    removed = sorted(set(current) - set(wanted))
    if not (changed or removed):
        return ""
    resources = [image_id] + [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
                              if m.get("Ebs", {}).get("SnapshotId")]
    if changed:
        ctx.aws.call("ec2", region, "CreateTags", Resources=resources, Tags=tag_list(changed))
    if removed:
        ctx.aws.call("ec2", region, "DeleteTags", Resources=resources, Tags=[{"Key": k} for k in removed])
    return (f"{image_id} re-tagged in {region} (set {', '.join(sorted(changed)) or 'none'}; "
            f"removed {', '.join(removed) or 'none'})")
