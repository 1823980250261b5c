"""Prune's side of the AMI lifecycle: it acts on deprecated AMIs only, and lifts deregistration protection
only from an AMI that nothing points at any more (prune decided that before asking here).

- An available AMI whose ``DeprecationTime`` is still ahead is kept: publish deprecates an AMI at once
  when a newer one of the role becomes ``latest``, so a not-yet-deprecated AMI is current somewhere.
  EC2 rounds a deprecation time to the nearest minute, so "deprecated at once" may read up to 30 s
  ahead: :data:`ROUNDING` of slack. An AMI without any deprecation time was published before the
  bakery deprecated AMIs and is pruned by age as before (the next publish deprecates it anyway).
- ``keep_if_launched_within``: an AMI whose ``LastLaunchedTime`` (in the listing) is that recent stays.
- ``DeregistrationProtection``: ``enabled-with-cooldown`` -> DisableImageDeregistrationProtection, and
  the AMI stays until the cooldown AWS applies (24 h) is over: a later prune deletes it;
  ``enabled-without-cooldown`` -> disabled, then deleted at once; ``disabled-until T`` -> kept until T.
  A dry run lifts nothing and says what a real run would do.
Calls: EC2 DisableImageDeregistrationProtection and DescribeImages (the cooldown's end) per protected AMI.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from ..aws import Aws
from .retire import aws_time, parse_aws_time

ROUNDING = timedelta(minutes=1)
COOLDOWN_PREFIX = "disabled-until "


def deprecation_hold(image: dict[str, Any], now: datetime) -> str | None:
    """Why an available AMI is not prunable yet (not deprecated), or None."""
    if image.get("State") != "available":
        return None
    when = parse_aws_time(image.get("DeprecationTime"))
    if when is not None and when > now + ROUNDING:
        return f"not deprecated (deprecates {aws_time(when)}; a newer AMI of the role deprecates it at once)"
    return None


def launch_hold(image: dict[str, Any], within_days: int | None, now: datetime) -> str | None:
    """Why an AMI launched from recently stays (``keep_if_launched_within``), or None.

    EC2 reports ``LastLaunchedTime`` about a day after the launch, so a launch of the last day may not
    show yet: a value of at least 2 days is what makes sense (the catalogue reference says so)."""
    last = parse_aws_time(image.get("LastLaunchedTime"))
    if within_days is None or last is None or now - last > timedelta(days=within_days):
        return None
    return f"launched {aws_time(last)}, within keep_if_launched_within ({within_days} days)"


def _cooldown_end(state: str) -> datetime | None:
    return parse_aws_time(state[len(COOLDOWN_PREFIX):]) if state.startswith(COOLDOWN_PREFIX) else None


def protection_hold(aws: Aws, region: str, image: dict[str, Any], *, dry_run: bool,
                    now: Callable[[], datetime]) -> str | None:
    """Lift the deregistration protection of an AMI prune is about to delete; why it must wait, or None."""
    state = image.get("DeregistrationProtection") or ""
    image_id = image["ImageId"]
    if state.startswith("enabled"):
        cooldown = state == "enabled-with-cooldown"
        if dry_run:
            return ("would lift its deregistration protection; deletable 24 h later (AWS's cooldown)"
                    if cooldown else None)
        aws.call("ec2", region, "DisableImageDeregistrationProtection", ImageId=image_id)
        if not cooldown:
            return None
        found = aws.describe_images(region, [image_id])
        state = (found[0].get("DeregistrationProtection") or "") if found else ""
        end = _cooldown_end(state)
        return ("nothing points at it: deregistration protection lifted, deletable after "
                f"{aws_time(end) if end else 'the 24 h cooldown'} (AWS's cooldown); a later prune deletes it")
    end = _cooldown_end(state)
    if end is not None and end > now():
        return f"deregistration protection lifted, in AWS's cooldown until {aws_time(end)}"
    return None
