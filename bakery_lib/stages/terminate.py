"""terminate: terminate the bake instance once its image is available.

Reads ``instance_id``; writes ``instance_terminated``. Calls: TerminateInstances.

It does not wait for ``terminated``: once EC2 accepted the request the instance is on its way out
(``shutting-down``), nothing the bake needs depends on it being gone, and on AWS the wait is up to a
minute per bake — and must fit in the 30 s an aborted Jenkins build gives its cleanup.
"""

from __future__ import annotations

from ..errors import AwsError, StageTimeout
from .base import Context

TERMINATE_TIMEOUT = 15 * 60


def terminate_instance(ctx: Context, instance_id: str, *, wait: bool = False) -> str:
    try:
        ctx.ec2("TerminateInstances", InstanceIds=[instance_id])
    except AwsError as exc:
        if exc.code != "InvalidInstanceID.NotFound":
            raise
        return f"{instance_id} was already gone"
    if not wait:
        return f"{instance_id} terminated (shutting down)"
    deadline = ctx.clock.now() + TERMINATE_TIMEOUT
    while True:
        found = ctx.aws.describe_instances(ctx.region, [instance_id])
        name = found[0]["State"]["Name"] if found else "terminated"
        if name == "terminated":
            return f"{instance_id} terminated"
        if ctx.clock.now() >= deadline:
            raise StageTimeout(f"{instance_id} still {name} {TERMINATE_TIMEOUT} s after TerminateInstances")
        ctx.sleep(min(ctx.poll_interval, 5.0))


def run(ctx: Context) -> str:
    state = ctx.require_state()
    if not state.instance_id or state.instance_terminated:
        return "no instance to terminate"
    message = terminate_instance(ctx, state.instance_id)
    state.instance_terminated = True
    ctx.save()
    return message
