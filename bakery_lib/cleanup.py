"""Remove whatever a bake still owns: the instance, its Chef node/client, an AMI that never became
available and that AMI's snapshots. A good (available) AMI is kept. Idempotent.

Used by ``bakery cleanup`` (Jenkins ``post { always }``) and by ``bakery bake`` on failure or
SIGTERM. Each removal is retried a few times; what still fails is listed with the exact thing to
delete by hand, and the command exits 1 — cleanup never fails silently.
Resources are looked up by the ``bakery:bake-id`` tag too, so what a killed run created but never
wrote to the state is found as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .aws import Clock
from .errors import AwsError, BakeryError
from .stages.base import Context
from .stages.image import find_own_image
from .stages.launch import find_by_bake_id
from .stages.terminate import terminate_instance

ATTEMPTS = 3


@dataclass
class CleanupReport:
    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = self.done + [f"kept {k}" for k in self.kept]
        if self.errors:
            parts += [f"NOT REMOVED: {e}" for e in self.errors]
        return "; ".join(parts) or "nothing to clean up"


def _retry(ctx: Context, what: str, manual: str, report: CleanupReport, fn) -> None:
    last: Exception | None = None
    for attempt in range(ATTEMPTS):
        try:
            result = fn()
            if result:
                report.done.append(result)
            return
        except BakeryError as exc:
            last = exc
            if attempt < ATTEMPTS - 1:
                ctx.log(f"cleanup: {what} failed ({exc}); retrying")
                time.sleep(min(2.0 * (attempt + 1), 5.0) if ctx.poll_interval >= 1 else 0.05)
    report.errors.append(f"{what}: {last}. Remove it by hand: {manual}")


def cleanup(ctx: Context, *, keep_instance: bool = False) -> CleanupReport:
    """Clean up the bake recorded in ``ctx.state`` (loaded by the caller). Never raises BakeryError."""
    report = CleanupReport()
    state = ctx.state
    if state is None:
        report.done.append(f"no bake of role {ctx.role.name} in this workspace")
        return report
    # Cleanup must finish even when the bake was interrupted: it gets a clock nobody cancels.
    ctx.clock = Clock()
    region = state.region

    def save() -> None:
        try:
            ctx.save()
        except OSError as exc:
            report.errors.append(f"could not write the state file: {exc}")

    # 1. The instance (looked up by tag too: a kill may have come before the state write).
    instance_id = state.instance_id
    if not instance_id or not state.instance_terminated:
        try:
            found = find_by_bake_id(ctx, state.bake_id)
        except BakeryError as exc:
            found = None
            report.errors.append(f"could not look up instances of bake {state.bake_id}: {exc}")
        if found and not instance_id:
            instance_id = state.instance_id = found["InstanceId"]
            save()
        if instance_id and not state.instance_terminated:
            if keep_instance:
                report.kept.append(f"instance {instance_id} (--keep-on-failure); remove it later with "
                                   f"`bakery cleanup --role {ctx.role.name}`")
            else:
                def term() -> str:
                    msg = terminate_instance(ctx, instance_id)
                    state.instance_terminated = True
                    save()
                    return msg
                _retry(ctx, f"instance {instance_id}", f"aws ec2 terminate-instances --region {region} "
                       f"--instance-ids {instance_id}", report, term)

    # 2. The Chef node and client of the bake.
    if state.chef_node and not state.chef_cleaned:
        def chef() -> str:
            from .stages.chef_cleanup import delete_identity
            msg = delete_identity(ctx, state.chef_node or "")
            state.chef_cleaned = True
            save()
            return msg
        _retry(ctx, f"Chef node/client {state.chef_node}",
               f"knife node delete {state.chef_node} -y && knife client delete {state.chef_node} -y", report, chef)

    # 3. An image the bake did not finish, and its snapshots: pending, failed, or available but never
    # completed by wait-image (IMDSv2 not required on it, snapshots untagged). An image wait-image
    # finished (recorded in ``amis``) is a good AMI: kept.
    try:
        image = find_own_image(ctx, state.bake_id) if not state.reused else None
    except BakeryError as exc:
        image = None
        report.errors.append(f"could not look up images of bake {state.bake_id}: {exc}")
    if image is None and state.image_id and not state.reused:
        images = ctx.aws.describe_images(region, [state.image_id])
        image = images[0] if images else None
    if image is not None:
        state.image_id = image["ImageId"]
        if image.get("State") == "available" and state.amis.get(region) == image["ImageId"]:
            report.kept.append(f"available image {image['ImageId']}")
        else:
            snaps = sorted({m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
                            if m.get("Ebs", {}).get("SnapshotId")} | set(state.snapshot_ids))

            def dereg() -> str:
                try:
                    ctx.ec2("DeregisterImage", ImageId=image["ImageId"])
                except AwsError as exc:
                    if exc.code not in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
                        raise
                state.image_state = "deregistered"
                save()
                return f"deregistered {image.get('State')} image {image['ImageId']}"
            _retry(ctx, f"image {image['ImageId']}", f"aws ec2 deregister-image --region {region} "
                   f"--image-id {image['ImageId']}", report, dereg)
            state.snapshot_ids = snaps
    if state.image_state == "deregistered" or (image is None and not state.amis):
        snaps = set(state.snapshot_ids)
        try:
            tagged = ctx.ec2("DescribeSnapshots", OwnerIds=["self"], Filters=[
                {"Name": "tag:bakery:bake-id", "Values": [state.bake_id]}]).get("Snapshots", [])
            snaps |= {s["SnapshotId"] for s in tagged}
        except BakeryError as exc:
            report.errors.append(f"could not look up snapshots of bake {state.bake_id}: {exc}")
        for snap in sorted(snaps):
            def delete(snap: str = snap) -> str:
                try:
                    ctx.ec2("DeleteSnapshot", SnapshotId=snap)
                except AwsError as exc:
                    if exc.code != "InvalidSnapshot.NotFound":
                        raise
                    return ""
                return f"deleted snapshot {snap}"
            _retry(ctx, f"snapshot {snap}", f"aws ec2 delete-snapshot --region {region} --snapshot-id {snap}",
                   report, delete)
        if not report.errors:
            state.snapshot_ids = []

    # 4. Copies to other regions that publish did not finish (pending, or available but IMDSv2 not
    # yet required on them): like an unfinished image, removed with their snapshots.
    for copy_region, copy_id in sorted(state.pending_copies.items()):
        def dereg_copy(copy_region: str = copy_region, copy_id: str = copy_id) -> str:
            images = ctx.aws.describe_images(copy_region, [copy_id])
            if images:
                snaps = [m["Ebs"]["SnapshotId"] for m in images[0].get("BlockDeviceMappings", [])
                         if m.get("Ebs", {}).get("SnapshotId")]
                ctx.aws.call("ec2", copy_region, "DeregisterImage", ImageId=copy_id)
                for snap in snaps:
                    ctx.aws.call("ec2", copy_region, "DeleteSnapshot", SnapshotId=snap)
            state.pending_copies.pop(copy_region, None)
            save()
            return f"deregistered unfinished copy {copy_id} in {copy_region}"
        _retry(ctx, f"copy {copy_id} in {copy_region}", f"aws ec2 deregister-image --region {copy_region} "
               f"--image-id {copy_id}", report, dereg_copy)

    if not report.errors and not (keep_instance and report.kept and instance_id and not state.instance_terminated):
        if not state.closed:
            state.closed = True
            state.outcome = state.outcome or "cleaned"
    save()
    return report
