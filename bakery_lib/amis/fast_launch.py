"""Windows Fast Launch and EBS Fast Snapshot Restore around the role's AMIs.

Publish (``fast_launch`` / ``fast_snapshot_restore`` in the catalogue), once the AMI is available in
every region and before anything points at it:

- :func:`enable_fast_launch`: EnableFastLaunch in each region (``MaxParallelLaunches``, at least 6;
  ``SnapshotConfiguration.TargetResourceCount``), then DescribeFastLaunchImages until each is
  ``enabled``. ``enabling-failed`` (with EC2's ``StateTransitionReason``) fails publish: nothing is
  published. EC2 API reference, EnableFastLaunch / DescribeFastLaunchImages; EC2 User Guide, "Use EC2
  Fast Launch for your Windows instances" (enabling launches instances and runs Sysprep: minutes).
- :func:`enable_restores`: EnableFastSnapshotRestores on the AMI's snapshots in the region's zones.
  Not waited for (``enabling`` -> ``optimizing`` -> ``enabled`` takes about an hour per TiB and the AMI
  is usable meanwhile: Amazon EBS User Guide, "Amazon EBS fast snapshot restore"); any zone EC2 refuses
  (``Unsuccessful``) fails publish.

Before an AMI is deregistered (prune; cleanup and reap through ``resources.deregister_image``):

- :func:`disable_fast_launch`: DisableFastLaunch when DescribeFastLaunchImages lists the image, then
  DescribeFastLaunchImages until it is no longer listed ("Amazon EC2 must remove all pre-provisioned
  snapshots", DisableFastLaunch).
- :func:`disable_restores`: DisableFastSnapshotRestores on the snapshots in the role's zones (deleting
  the snapshot would disable it too, says the EBS User Guide; prune says it first).

Calls per region: Fast Launch 1 EnableFastLaunch + 1 DescribeFastLaunchImages per poll round; FSR 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import AwsError, BakeryError, StageTimeout
from ..waits import Wait

if TYPE_CHECKING:
    from ..aws import Aws
    from ..clock import Clock
    from ..stages.base import Context

# Enabling launches instances, waits for Sysprep and snapshots them (EC2 User Guide): give it an hour.
ENABLE_TIMEOUT = 60 * 60
DISABLE_TIMEOUT = 30 * 60
FAILED_STATES = ("enabling-failed", "enabled-failed", "disabling-failed")


def _listed(aws: Aws, region: str, image_id: str) -> dict[str, Any] | None:
    found = aws.call("ec2", region, "DescribeFastLaunchImages", ImageIds=[image_id]).get("FastLaunchImages", [])
    return next((i for i in found if i.get("ImageId") == image_id), None)


def enable_fast_launch(ctx: Context, amis: dict[str, str]) -> str | None:
    """Fast Launch on the AMI of every region, waited for; the states per region (for the summary)."""
    settings = ctx.role.fast_launch
    if settings is None or ctx.role.platform != "windows":
        return None
    state = ctx.require_state()
    for region, image_id in sorted(amis.items()):
        if region in state.fast_launch:  # a rerun (after a timeout, a kill): keep waiting on what is under way
            found = _listed(ctx.aws, region, image_id)
            if found and found.get("State") in ("enabling", "enabled"):
                continue
        ctx.aws.call("ec2", region, "EnableFastLaunch", ImageId=image_id, ResourceType="snapshot",
                     SnapshotConfiguration={"TargetResourceCount": settings.target_snapshots},
                     MaxParallelLaunches=settings.max_parallel_launches)
        with ctx.state_lock:
            state.fast_launch[region] = "enabling"
            ctx.save()
    for region, image_id in sorted(amis.items()):
        final = _wait_state(ctx, region, image_id)
        with ctx.state_lock:
            state.fast_launch[region] = final
            ctx.save()
    return "Windows Fast Launch " + ", ".join(f"{r} {s}" for r, s in sorted(state.fast_launch.items()))


def _wait_state(ctx: Context, region: str, image_id: str) -> str:
    def check(item: dict[str, Any]) -> str | None:
        current = str(item.get("State"))
        if current == "enabled":
            return current
        if current in FAILED_STATES:
            reason = item.get("StateTransitionReason") or "no reason given"
            raise BakeryError(f"Windows Fast Launch of {image_id} in {region} is {current}: {reason}")
        return None

    def on_timeout(elapsed: float, last: dict[str, Any] | None) -> BaseException:
        return StageTimeout(f"Windows Fast Launch of {image_id} in {region} still {(last or {}).get('State')} after "
                            f"{ENABLE_TIMEOUT} s; rerun `bakery stage publish --role {ctx.role.name}` to keep waiting")

    wait: Wait[dict[str, Any], str] = Wait(
        what=f"Windows Fast Launch of {image_id} in {region}", clock=ctx.clock, log=ctx.log, timeout=ENABLE_TIMEOUT,
        interval=ctx.poll_interval, status=lambda item: str(item.get("State")), on_timeout=on_timeout,
        gone_message=f"Windows Fast Launch of {image_id} in {region} is no longer configured (disabled by someone?)")
    return wait.run(lambda: _listed(ctx.aws, region, image_id), check)


def disable_fast_launch(aws: Aws, region: str, image_id: str, clock: Clock, poll: float,
                        log: Callable[[str], None]) -> bool:
    """Disable Fast Launch of ``image_id`` and wait until EC2 removed it; False when it was not on."""
    if _listed(aws, region, image_id) is None:
        return False
    try:
        aws.call("ec2", region, "DisableFastLaunch", ImageId=image_id)
    except AwsError as exc:
        if exc.code not in ("InvalidParameterValue", "InvalidAMIID.NotFound"):  # disabled meanwhile, or gone
            raise
    def check(item: dict[str, Any]) -> bool | None:
        if item["State"] == "disabled":
            return True
        if item["State"] in FAILED_STATES:
            raise BakeryError(f"disabling Windows Fast Launch of {image_id} in {region}: {item['State']} "
                              f"({item.get('StateTransitionReason') or 'no reason given'})")
        return None

    wait: Wait[dict[str, Any], bool] = Wait(
        what=f"disabling Windows Fast Launch of {image_id} in {region}", clock=clock, log=log,
        timeout=DISABLE_TIMEOUT, interval=poll, status=lambda item: str(item.get("State")))
    # No longer listed is disabled: EC2 has no "disabled" state code (FastLaunchStateCode).
    wait.run(lambda: _listed(aws, region, image_id) or {"State": "disabled"}, check)
    return True


def enable_restores(ctx: Context, region: str, snapshots: list[str]) -> str | None:
    """EnableFastSnapshotRestores on ``snapshots`` in the role's zones of ``region``."""
    zones = ctx.role.restore_zones(region)
    if not zones or not snapshots:
        return None
    answer = ctx.aws.call("ec2", region, "EnableFastSnapshotRestores", AvailabilityZones=zones,
                          SourceSnapshotIds=snapshots)
    refused = [f"{e.get('AvailabilityZone')}: {e.get('Error', {}).get('Code')} {e.get('Error', {}).get('Message')}"
               for item in answer.get("Unsuccessful", []) for e in item.get("FastSnapshotRestoreStateErrors", [])]
    if refused:
        raise BakeryError(f"fast snapshot restore of {', '.join(snapshots)} in {region} refused: {'; '.join(refused)}")
    states = sorted({str(s.get("State")) for s in answer.get("Successful", [])})
    return f"fast snapshot restore in {', '.join(zones)} {'/'.join(states)}"


def disable_restores(aws: Aws, region: str, zones: list[str], snapshots: list[str]) -> None:
    """DisableFastSnapshotRestores before the snapshots are deleted (prune, publish's cleanup)."""
    if zones and snapshots:
        aws.call("ec2", region, "DisableFastSnapshotRestores", AvailabilityZones=zones, SourceSnapshotIds=snapshots)
