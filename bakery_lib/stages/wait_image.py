"""wait-image: wait until the AMI is available; require IMDSv2 on it; tag it and its snapshots.

A timeout keeps the image id in the state, so a rerun resumes waiting instead of baking again;
a ``failed`` image reports AWS's state reason.
Reads ``image_id``; writes ``image_state``, ``snapshot_ids``, ``amis``.
Calls: DescribeImages (one per poll, batched, through ``waits.Wait``; an image not yet visible right
after CreateImage is waited for, not taken for deregistered), ModifyImageAttribute (ImdsSupport v2.0), CreateTags (the
snapshots, and ``bakery:imds-support=v2.0`` on the image). If IMDSv2 cannot be required the stage fails:
the image is not recorded as the bake's AMI, so it is neither published nor reused, and cleanup removes it.
Cleanup: see ``image``.
"""

from __future__ import annotations

from typing import Any

from ..ec2.images import tag_snapshots
from ..errors import AwsError, BakeryError, StageTimeout
from ..waits import Wait
from .base import Context, no_cleanup

cleanup = no_cleanup  # see the module docstring


def run(ctx: Context) -> str:
    state = ctx.require_state()
    image_id = state.image_id
    if not image_id:
        raise BakeryError("the bake state has no image; run the image stage first")
    start = ctx.clock.now()

    def check(image: dict[str, Any]) -> dict[str, Any] | None:
        current = image.get("State")
        if current != state.image_state:
            state.image_state = current
            ctx.save()
        if current == "available":
            return image
        if current in ("failed", "invalid", "error", "deregistered"):
            reason = image.get("StateReason", {}).get("Message") or "no reason given"
            raise BakeryError(f"image {image_id} is {current}: {reason}")
        return None

    def on_timeout(elapsed: float, last: dict[str, Any] | None) -> BaseException:
        current = (last or {}).get("State", "not visible")
        return StageTimeout(
            f"image {image_id} still {current} after {ctx.role.image_timeout} s (catalogue key image_timeout); "
            f"rerun `bakery stage wait-image --role {ctx.role.name}` to keep waiting")

    # Right after CreateImage the image may be missing from DescribeImages (EC2 eventual consistency):
    # absent counts as deregistered only once it was seen, or after the wait's grace period.
    wait: Wait[dict[str, Any], dict[str, Any]] = Wait(
        what=f"image {image_id}", clock=ctx.clock, log=ctx.log, timeout=ctx.role.image_timeout,
        interval=ctx.poll_interval, status=lambda image: str(image.get("State")), on_timeout=on_timeout,
        seen=state.image_state not in (None, "pending"),
        gone_message=f"image {image_id} no longer exists (deregistered?)")
    try:
        image = wait.run(lambda: ctx.aws.images.get(ctx.region, image_id, max_age=ctx.poll_interval * 0.9,
                                                         clock=ctx.clock), check)
    finally:
        ctx.aws.images.forget(ctx.region, image_id)
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
