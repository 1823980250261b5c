"""The batched watch of one instance: polls shared with every other bake of the process, console tails.

An instance reports to the bakery by tagging itself (``bakery:bootstrap`` for the bake, ``bakery:boot-test``
for the boot test); ``wait_for_instance`` polls DescribeInstances through ``aws.instances`` (one call per
region per round, however many bakes wait) until the caller's ``check`` has its answer. Failures carry
the tail of the console output (``with_console``), heartbeats its last line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..aws import tags_of
from ..waits import Wait

if TYPE_CHECKING:
    from ..stages.base import Context


# How long a stopped instance may show no result tag before we believe there is none: tags set
# right before a shutdown can become visible after the state change (EC2 API eventual consistency).
TAG_GRACE = 30.0


def with_console(ctx: Context, message: str, instance_id: str) -> str:
    tail = ctx.aws.console_tail(ctx.region, instance_id)
    return f"{message}\n--- console output (tail) of {instance_id} ---\n{tail or '(empty)'}"


def last_console_line(ctx: Context, instance_id: str) -> str:
    return ctx.aws.console_tail(ctx.region, instance_id, lines=1)


def instance_status(inst: dict[str, Any]) -> str:
    tag = tags_of(inst).get("bakery:bootstrap")
    return inst["State"]["Name"] + (f", bakery:bootstrap={tag}" if tag else "")


def wait_for_instance(ctx: Context, instance_id: str, *, what: str, timeout: float,
                      status: Callable[[dict[str, Any]], str],
                      on_timeout: Callable[[float, Any], BaseException], gone_message: str,
                      check: Callable[[dict[str, Any]], str | None]) -> str:
    """Poll one instance (batched with every other bake's polls) until ``check`` returns a result.

    Shared by the waits for an instance's own report: the bake's ``bakery:bootstrap`` and the boot
    test's ``bakery:boot-test``. Launch saw the instance in RunInstances' answer, but describes may
    not show it yet: ``Wait`` counts it gone only once it was seen (``gone_message``).
    """
    wait: Wait[dict[str, Any], str] = Wait(
        what=f"{what} on {instance_id}", clock=ctx.clock, log=ctx.log, timeout=timeout,
        interval=ctx.poll_interval, status=status, on_timeout=on_timeout,
        detail=lambda: last_console_line(ctx, instance_id), gone_message=gone_message)
    try:
        return wait.run(lambda: ctx.aws.instances.get(ctx.region, instance_id, max_age=ctx.poll_interval * 0.9,
                                                              clock=ctx.clock),
                        check)
    finally:
        ctx.aws.instances.forget(ctx.region, instance_id)
