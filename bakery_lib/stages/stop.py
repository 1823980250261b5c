"""stop: stop the bake instance so the image is taken from a quiet, consistent disk.

A Windows bake stops itself (EC2Launch v2 sysprep shuts it down): an already stopped instance is
accepted. Reads ``instance_id``. Calls: StopInstances, then DescribeInstances until stopped (batched
with the polls of the other bakes in the process).
Cleanup: none of its own (the instance is terminated by ``terminate``/``cleanup``).
"""

from __future__ import annotations

from ..errors import AwsError, BakeryError, StageTimeout
from .base import Context

STOP_TIMEOUT = 20 * 60


def run(ctx: Context) -> str:
    state = ctx.require_state()
    instance_id = state.instance_id
    if not instance_id:
        raise BakeryError("the bake state has no instance; run the launch stage first")
    deadline = ctx.clock.now() + STOP_TIMEOUT
    # StopInstances first: its answer carries the state, which saves a Describe on the common path.
    # Stopping a stopped instance is a no-op, so a Windows bake that shut itself down is accepted.
    try:
        change = ctx.ec2("StopInstances", InstanceIds=[instance_id])["StoppingInstances"][0]
    except AwsError as exc:
        if exc.code == "IncorrectInstanceState":
            raise BakeryError(f"instance {instance_id} cannot be stopped for imaging: {exc}") from None
        raise
    stopped_itself = change.get("PreviousState", {}).get("Name") == "stopped"
    name = change.get("CurrentState", {}).get("Name", "stopping")
    ctx.log(f"stopping {instance_id}")
    try:
        while True:
            if name == "stopped":
                return f"{instance_id} is stopped" + (" (it stopped itself)" if stopped_itself else "")
            if name in ("terminated", "shutting-down"):
                raise BakeryError(f"instance {instance_id} is {name}; it cannot be imaged")
            if ctx.clock.now() >= deadline:
                raise StageTimeout(f"{instance_id} did not stop within {STOP_TIMEOUT} s (still {name})")
            ctx.sleep(min(ctx.poll_interval, 5.0))
            found = ctx.aws.instances.get(ctx.region, instance_id, max_age=min(ctx.poll_interval, 5.0) * 0.9)
            if found is None:
                raise BakeryError(f"instance {instance_id} no longer exists")
            name = found["State"]["Name"]
    finally:
        ctx.aws.instances.forget(ctx.region, instance_id)
