"""wait-image: wait until the AMI is available; require IMDSv2 on it; tag it and its snapshots.

A timeout keeps the image id in the state, so a rerun resumes waiting instead of baking again;
a ``failed`` image reports AWS's state reason.
Reads ``image_id``; writes ``image_state``, ``snapshot_ids``, ``amis``.
Calls: DescribeImages (one per poll, batched), ModifyImageAttribute (ImdsSupport v2.0), CreateTags (the
snapshots, and ``bakery:imds-support=v2.0`` on the image). If IMDSv2 cannot be required the stage fails:
the image is not recorded as the bake's AMI, so it is neither published nor reused, and cleanup removes it.
Cleanup: see ``image``.
"""

from __future__ import annotations

from ..errors import AwsError, BakeryError, StageTimeout
from .base import Context
from .image import tag_snapshots


def run(ctx: Context) -> str:
    state = ctx.require_state()
    image_id = state.image_id
    if not image_id:
        raise BakeryError("the bake state has no image; run the image stage first")
    deadline = ctx.clock.now() + ctx.role.image_timeout
    start = ctx.clock.now()
    while True:
        image = ctx.aws.images.get(ctx.region, image_id, max_age=ctx.poll_interval * 0.9)
        if image is None:
            raise BakeryError(f"image {image_id} no longer exists (deregistered?)")
        current = image.get("State")
        if current != state.image_state:
            state.image_state = current
            ctx.save()
        if current == "available":
            ctx.aws.images.forget(ctx.region, image_id)
            break
        if current in ("failed", "invalid", "error", "deregistered"):
            reason = image.get("StateReason", {}).get("Message") or "no reason given"
            raise BakeryError(f"image {image_id} is {current}: {reason}")
        if ctx.clock.now() >= deadline:
            raise StageTimeout(
                f"image {image_id} still {current} after {ctx.role.image_timeout} s (catalogue key image_timeout); "
                f"rerun `bakery stage wait-image --role {ctx.role.name}` to keep waiting"
            )
        ctx.sleep(min(ctx.poll_interval, max(0.1, deadline - ctx.clock.now())))
    # Instances launched from the AMI must require IMDSv2 by default. Once set, ImdsSupport cannot be
    # set again, so a rerun skips it when DescribeImages already reports it (AWS does; moto does not).
    if image.get("ImdsSupport") != "v2.0":
        try:
            ctx.ec2("ModifyImageAttribute", ImageId=image_id, ImdsSupport={"Value": "v2.0"})
        except AwsError as exc:
            try:
                tag_snapshots(ctx, image)  # untagged snapshots would be anonymous until cleanup
            except BakeryError as tag_exc:
                ctx.log(f"could not tag the snapshots of {image_id} either: {tag_exc}")
            raise AwsError(exc.operation, exc.code, (
                f"{exc.message}. Image {image_id} is available but IMDSv2 is not required on it, so it is not "
                f"published and no later bake reuses it: fix the cause (e.g. allow ec2:ModifyImageAttribute) and "
                f"rerun `bakery stage wait-image --role {ctx.role.name}`, or `bakery cleanup` removes it"),
                hint=exc.hint) from None
    tag_snapshots(ctx, image, imds_required=True)
    state.amis[ctx.region] = image_id
    ctx.save()
    return f"image {image_id} available after {ctx.clock.now() - start:.0f} s"
