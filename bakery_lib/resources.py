"""State-free building blocks: remove one AWS or Chef resource, the same way wherever it is removed.

Stages (and so the one teardown loop that ``bakery cleanup``, a failed bake and ``reap`` share),
``create-instance`` and ``prune`` call these, so "already gone" is tolerated, and AWS's brief refusals
are retried, in one place:

- ``terminate_instance``: TerminateInstances; ``InvalidInstanceID.NotFound`` is success once it lasts
  (``TERMINATE_NOT_FOUND_GRACE``: a just-launched instance answers NotFound while it propagates). It does not wait
  for ``terminated`` (``shutting-down`` means EC2 took it; an aborted Jenkins build gives its cleanup 30 s).
- ``deregister_image``: DeregisterImage; ``InvalidAMIID.NotFound``/``Unavailable`` is success.
- ``delete_snapshot``: DeleteSnapshot; ``InvalidSnapshot.NotFound`` is success. Right after
  DeregisterImage, AWS may still answer ``InvalidSnapshot.InUse`` for a few seconds: retried
  (``SNAPSHOT_RETRY_DELAYS``). (reap never hands over a snapshot another image uses: it keeps that
  bake, having listed which images use which snapshots.)
- ``deregister_with_snapshots``: an image and the snapshots of its block device mappings.
- ``delete_chef_identity``: the Chef client, then the node (client first: that revokes the key, so a
  chef-client still running on a terminating instance can no longer re-create the node).

Nothing here reads or writes a bake's state: callers record what they removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .amis.fast_launch import disable_fast_launch
from .aws import Aws
from .clock import Clock
from .errors import AwsError, Skipped
from .waits import while_propagating

if TYPE_CHECKING:
    from .chef import ChefClient

# DeleteSnapshot right after DeregisterImage can briefly fail with InvalidSnapshot.InUse on AWS.
SNAPSHOT_RETRY_DELAYS = (2.0, 5.0, 10.0)
IMAGE_GONE = ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable")
# How long TerminateInstances' NotFound is retried before it is believed (see terminate_instance).
TERMINATE_NOT_FOUND_GRACE = 20.0

Sleep = Callable[[float], None]


def snapshot_ids(image: dict[str, Any]) -> list[str]:
    """The EBS snapshot ids of an image's block device mappings (the one place that parses them)."""
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) or []
            if (m.get("Ebs") or {}).get("SnapshotId")]


def terminate_instance(aws: Aws, region: str, instance_id: str, *, clock: Clock | None = None,
                       grace: float = TERMINATE_NOT_FOUND_GRACE) -> bool:
    """True when EC2 accepted the termination, False when the instance was already gone.

    AWS (EC2 API eventual consistency): ``InvalidInstanceID.NotFound`` from TerminateInstances "does
    not mean the instance has been or will be terminated" -- an instance launched moments ago may not
    have propagated and keeps running. So NotFound is retried with back-off for ``grace`` seconds
    before it is believed (terminated instances stay visible for about an hour, so a NotFound that
    lasts is a really gone one).
    """
    try:
        while_propagating(lambda: aws.call("ec2", region, "TerminateInstances", InstanceIds=[instance_id]),
                          what=f"terminating {instance_id}", clock=clock or Clock(), log=lambda _m: None,
                          grace=grace)
    except AwsError as exc:
        if exc.code != "InvalidInstanceID.NotFound":
            raise
        return False
    return True


def _quiet(_message: str) -> None:
    pass


def deregister_image(aws: Aws, region: str, image_id: str, *, clock: Clock, poll: float,
                     log: Callable[[str], None] = _quiet) -> bool:
    """True when deregistered, False when it was already gone.

    An AMI under deregistration protection is never lifted here (only prune does, once nothing points
    at it): ``Skipped``, which the removal executor reports as kept with the reason. An AMI whose
    Windows Fast Launch is still on gets it disabled first, then deregistered; the wait for EC2 to
    remove its pre-provisioned snapshots polls every ``poll`` seconds (the caller's poll interval) on
    ``clock`` (the caller's: an abort ends it)."""
    for first in (True, False):
        try:
            aws.call("ec2", region, "DeregisterImage", ImageId=image_id)
        except AwsError as exc:
            if exc.code in IMAGE_GONE:
                return False
            if exc.code == "OperationNotPermitted" and "protection" in str(exc):
                raise Skipped(f"{image_id} is under deregistration protection: something may point at it "
                              f"(`bakery prune --role ROLE` lifts it once nothing does)") from None
            if first and exc.code == "IncorrectState" and "fast launch" in str(exc).lower():
                disable_fast_launch(aws, region, image_id, clock, poll, log)
                continue
            raise
        return True
    return True  # not reached


def delete_snapshot(aws: Aws, region: str, snapshot_id: str, sleep: Sleep, *,
                    max_delay: float | None = None) -> bool:
    """True when deleted, False when it was already gone. ``max_delay`` caps each retry pause."""
    for delay in (*SNAPSHOT_RETRY_DELAYS, None):
        try:
            aws.call("ec2", region, "DeleteSnapshot", SnapshotId=snapshot_id)
            return True
        except AwsError as exc:
            if exc.code == "InvalidSnapshot.NotFound":
                return False
            if exc.code != "InvalidSnapshot.InUse" or delay is None:
                raise
            sleep(delay if max_delay is None else min(delay, max_delay))
    return False  # not reached: the last round raises


def delete_snapshots(aws: Aws, region: str, snapshots: Iterable[str], sleep: Sleep, *,
                     max_delay: float | None = None) -> list[str]:
    """Delete each snapshot (retrying InUse); returns those actually deleted (not already gone)."""
    return [s for s in snapshots if delete_snapshot(aws, region, s, sleep, max_delay=max_delay)]


def deregister_with_snapshots(aws: Aws, region: str, image: dict[str, Any], *, clock: Clock, poll: float,
                              extra_snapshots: Iterable[str] = (), max_delay: float | None = None) -> list[str]:
    """Deregister ``image`` (a DescribeImages entry), then delete its snapshots (and ``extra_snapshots``,
    e.g. ones a state recorded); every pause on ``clock``, polls every ``poll`` seconds. Returns the
    snapshots deleted."""
    snaps = sorted(set(snapshot_ids(image)) | set(extra_snapshots))
    deregister_image(aws, region, image["ImageId"], clock=clock, poll=poll)
    return delete_snapshots(aws, region, snaps, clock.sleep, max_delay=max_delay)


def delete_chef_identity(chef: ChefClient, name: str) -> str:
    """Delete the Chef client and node ``name``; absent is fine. Returns what happened, for the log."""
    client = chef.delete_client(name)
    node = chef.delete_node(name)
    # Said in the order it was done: the client first (its key stops working), then the node.
    return (f"client {name} {'deleted' if client else 'already absent'}, "
            f"node {name} {'deleted' if node else 'already absent'}")
