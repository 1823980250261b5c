"""Publish's side of the AMI lifecycle: the new AMI's deprecation time and deregistration protection, and
the at-once deprecation of the AMIs it supersedes.

Before ``latest`` points at the new AMI (so a failure leaves nothing half-published), in every region:
EnableImageDeprecation at publish + ``deprecate_after`` days (a reused AMI that a newer one had
deprecated gets a fresh time: it is ``latest`` again) and EnableImageDeregistrationProtection with
AWS's 24-hour cooldown: nobody deregisters the AMI a fleet launches from by accident, and lifting the
protection (prune, once nothing points at the AMI) leaves a day to notice. After ``latest`` was
written in a region: the role's other available AMIs there that are not deprecated yet are
deprecated at once (still launchable by id for a rollback, no longer offered as current).
Which AMIs those are, in the build region, preflight's listing of the role's AMIs says (kept in the
state as ``role_amis``): a bake lists them once. An AMI of the role registered after that listing could
only be another bake's, which preflight refuses while one is in flight; should one slip through, the
next publish deprecates it, as after any refused call here.
Calls per region: EC2 EnableImageDeprecation, EnableImageDeregistrationProtection, EnableImageDeprecation
per superseded AMI (usually one: the previous ``latest``), and in a copy region DescribeImages (the role's
AMIs there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..aws import tags_of
from ..errors import AwsError
from ..resources import IMAGE_GONE

if TYPE_CHECKING:
    from ..stages.base import Context

Now = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aws_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_aws_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def guard_new(ctx: Context, amis: dict[str, str], now: Now = utcnow) -> str:
    """Deprecation time and deregistration protection on the AMI of every region (before ``latest``)."""
    when = now() + timedelta(days=ctx.role.deprecate_after)
    for region, image_id in sorted(amis.items()):
        ctx.aws.call("ec2", region, "EnableImageDeprecation", ImageId=image_id, DeprecateAt=aws_time(when))
        ctx.aws.call("ec2", region, "EnableImageDeregistrationProtection", ImageId=image_id, WithCooldown=True)
    return f"deprecates {aws_time(when)}; deregistration protection on (24 h cooldown)"


def superseded(images: Iterable[dict[str, Any]], role: str, keep: str, at: datetime) -> list[dict[str, Any]]:
    """The role's available bakery AMIs other than ``keep`` that are not deprecated by ``at``."""
    out = []
    for image in images:
        if image["ImageId"] == keep or image.get("State") != "available":
            continue
        tags = tags_of(image)
        if tags.get("bakery:role") != role or tags.get("bakery:created-by") != "bakery":
            continue
        deprecation = parse_aws_time(image.get("DeprecationTime"))
        if deprecation is None or deprecation > at:
            out.append(image)
    return out


def role_images(ctx: Context, region: str) -> list[dict[str, Any]]:
    """The role's AMIs in ``region``: in the build region preflight's listing (``state.role_amis``: the
    listing its reuse look-up made, kept for this), elsewhere (or for a record without it) DescribeImages."""
    state = ctx.require_state()
    if region == ctx.region and state.role_amis is not None:
        return list(state.role_amis)
    return ctx.aws.describe_images(region, Owners=["self"], Filters=[
        {"Name": "tag:bakery:role", "Values": [ctx.role.name]},
        {"Name": "tag:bakery:created-by", "Values": ["bakery"]}])


def supersede(ctx: Context, amis: dict[str, str], regions: Iterable[str], now: Now = utcnow) -> str | None:
    """Deprecate at once the role's older AMIs in the regions where this bake's AMI became ``latest``."""
    at = now()
    done: list[str] = []
    for region in sorted(regions):
        try:
            for image in superseded(role_images(ctx, region), ctx.role.name, amis[region], at):
                try:
                    ctx.aws.call("ec2", region, "EnableImageDeprecation", ImageId=image["ImageId"],
                                 DeprecateAt=aws_time(at))
                except AwsError as exc:
                    if exc.code in IMAGE_GONE:
                        continue  # deregistered since it was listed: nothing left to deprecate
                    raise
                done.append(f"{region} {image['ImageId']}")
        except AwsError as exc:
            # The new AMI is published and protected; what is left undeprecated here, the next
            # publish of the role deprecates (it takes every older AMI not yet deprecated).
            done.append(f"{region}: not all superseded AMIs deprecated ({exc}); the next publish does it")
    return f"deprecated superseded {', '.join(done)}" if done else None
