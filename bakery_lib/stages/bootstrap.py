"""bootstrap: wait for the bake instance to report its Chef ``role_ami`` run.

The instance tags itself ``bakery:bootstrap`` = ``succeeded`` or ``failed`` (with
``bakery:bootstrap-detail``) when its run ends. This stage polls DescribeInstances for that tag with
a deadline (catalogue ``bootstrap_timeout``, default 45 min) and fails fast on ``failed``, on the
instance leaving ``running``, or on the timeout; failures carry the console output tail.
Reads ``instance_id``; writes nothing but its stage record.
Calls: DescribeInstances (one per poll), GetConsoleOutput (on failure).
Cleanup: none of its own.
"""

from __future__ import annotations

from ..aws import tags_of
from ..errors import BakeryError, StageTimeout
from .base import Context


def _with_console(ctx: Context, message: str, instance_id: str) -> str:
    tail = ctx.aws.console_tail(ctx.region, instance_id)
    return f"{message}\n--- console output (tail) of {instance_id} ---\n{tail or '(empty)'}"


def run(ctx: Context) -> str:
    state = ctx.require_state()
    instance_id = state.instance_id
    if not instance_id:
        raise BakeryError("the bake state has no instance; run the launch stage first")
    deadline = ctx.clock.now() + ctx.role.bootstrap_timeout
    start = ctx.clock.now()
    last_state = None
    while True:
        inst = ctx.aws.instances.get(ctx.region, instance_id, max_age=ctx.poll_interval * 0.9)
        if inst is None:
            raise BakeryError(f"instance {instance_id} no longer exists")
        tags = tags_of(inst)
        result = tags.get("bakery:bootstrap")
        detail = tags.get("bakery:bootstrap-detail", "")
        name = inst["State"]["Name"]
        if result == "succeeded":
            ctx.aws.instances.forget(ctx.region, instance_id)
            return f"Chef role_ami run succeeded on {instance_id} after {ctx.clock.now() - start:.0f} s" + (
                f": {detail}" if detail else "")
        if result == "failed":
            raise BakeryError(_with_console(
                ctx, f"Chef role_ami run failed on {instance_id}: {detail or 'no detail'}", instance_id))
        if name not in ("pending", "running"):
            reason = inst.get("StateReason", {}).get("Message") or inst.get("StateTransitionReason") or ""
            raise BakeryError(_with_console(
                ctx, f"instance {instance_id} left running before reporting its bootstrap: {name}"
                     + (f" ({reason})" if reason else ""), instance_id))
        if name != last_state:
            ctx.log(f"{instance_id} is {name}; waiting for bakery:bootstrap")
            last_state = name
        if ctx.clock.now() >= deadline:
            raise StageTimeout(_with_console(
                ctx, f"no bootstrap result from {instance_id} within {ctx.role.bootstrap_timeout} s "
                     "(catalogue key bootstrap_timeout)", instance_id))
        ctx.sleep(min(ctx.poll_interval, max(0.1, deadline - ctx.clock.now())))
