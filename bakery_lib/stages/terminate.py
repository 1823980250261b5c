"""terminate: terminate the bake instance once its image is available.

Reads ``instance_id``; writes ``instance_terminated``. Calls: TerminateInstances.

It does not wait for ``terminated``: once EC2 accepted the request the instance is on its way out
(``shutting-down``), nothing the bake needs depends on it being gone, and on AWS the wait is up to a
minute per bake — and must fit in the 30 s an aborted Jenkins build gives its cleanup.
Cleanup: none of its own (``launch`` owns the instance and removes it in a teardown).
"""

from __future__ import annotations

from ..resources import terminate_instance
from .base import Context, no_cleanup

cleanup = no_cleanup


def run(ctx: Context) -> str:
    state = ctx.require_state()
    if not state.instance_id or state.instance_terminated:
        return "no instance to terminate"
    gone = terminate_instance(ctx.aws, ctx.region, state.instance_id)
    state.instance_terminated = True
    ctx.save()
    return f"{state.instance_id} terminated (shutting down)" if gone else f"{state.instance_id} was already gone"
