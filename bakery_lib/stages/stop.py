"""stop: stop the bake instance so the image is taken from a quiet, consistent disk.

A Windows bake stops itself (EC2Launch v2 sysprep shuts it down): an already stopped instance is
accepted. Reads ``instance_id``. Calls: DescribeInstances, StopInstances.
Cleanup: none of its own (the instance is terminated by ``terminate``/``cleanup``).
"""

from __future__ import annotations

from ..errors import BakeryError, StageTimeout
from .base import Context

STOP_TIMEOUT = 20 * 60


def run(ctx: Context) -> str:
    state = ctx.require_state()
    instance_id = state.instance_id
    if not instance_id:
        raise BakeryError("the bake state has no instance; run the launch stage first")
    deadline = ctx.clock.now() + STOP_TIMEOUT
    requested = False
    while True:
        found = ctx.aws.describe_instances(ctx.region, [instance_id])
        if not found:
            raise BakeryError(f"instance {instance_id} no longer exists")
        name = found[0]["State"]["Name"]
        if name == "stopped":
            return f"{instance_id} is stopped" + ("" if requested else " (it stopped itself)")
        if name in ("terminated", "shutting-down"):
            raise BakeryError(f"instance {instance_id} is {name}; it cannot be imaged")
        if name in ("running", "pending") and not requested:
            ctx.ec2("StopInstances", InstanceIds=[instance_id])
            requested = True
            ctx.log(f"stopping {instance_id}")
        if ctx.clock.now() >= deadline:
            raise StageTimeout(f"{instance_id} did not stop within {STOP_TIMEOUT} s (still {name})")
        ctx.sleep(min(ctx.poll_interval, 5.0))
