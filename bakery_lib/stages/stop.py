"""stop: stop the bake instance so the image is taken from a quiet, consistent disk.

A Windows bake stops itself: the instance tags ``bakery:bootstrap=generalizing`` and runs
``ec2launch sysprep --clean --shutdown`` detached, which shuts it down. Such an instance is never
stopped by us mid-sysprep: while it is ``generalizing`` and running the stage waits for it to stop
(up to the catalogue's ``sysprep_timeout``, then a failure with the console tail). An instance already
``stopping``/``stopped`` is accepted whatever its tag says (``succeeded`` then a self-stop too).
Otherwise StopInstances, then DescribeInstances until ``stopped`` (batched with the other bakes' polls,
through ``waits.Wait``: deadline, heartbeat, interruptible).
Reads ``instance_id``. Calls: DescribeInstances (Windows: first), StopInstances, DescribeInstances.
Cleanup: none of its own (the instance is terminated by ``terminate``/``cleanup``).
"""

from __future__ import annotations

from typing import Any

from ..aws import tags_of
from ..ec2.watch import instance_status, last_console_line, with_console
from ..errors import AwsError, BakeryError, StageTimeout
from ..waits import Wait
from .base import Context, no_cleanup

cleanup = no_cleanup  # see the module docstring

STOP_TIMEOUT = 20 * 60


def _name(inst: dict[str, Any]) -> str:
    return str(inst["State"]["Name"])


def _wait_stopped(ctx: Context, instance_id: str, timeout: float, why: str) -> str:
    def check(inst: dict[str, Any]) -> str | None:
        name = _name(inst)
        if name in ("terminated", "shutting-down"):
            raise BakeryError(f"instance {instance_id} is {name}; it cannot be imaged")
        if name == "stopped":
            return name
        # sysprep exiting non-zero tags failed and may leave the instance running: stop waiting.
        if tags_of(inst).get("bakery:bootstrap") == "failed":
            raise BakeryError(with_console(ctx, f"instance {instance_id} reported bakery:bootstrap=failed: "
                                                f"{tags_of(inst).get('bakery:bootstrap-detail', 'no detail')}",
                                           instance_id))
        return None

    def on_timeout(elapsed: float, last: dict[str, Any] | None) -> BaseException:
        current = _name(last) if last else "not visible"
        return StageTimeout(with_console(ctx, f"{instance_id} did not stop within {timeout:.0f} s ({why}; still "
                                              f"{current})", instance_id))

    wait: Wait[dict[str, Any], str] = Wait(
        what=f"{instance_id} to stop", clock=ctx.clock, log=ctx.log, timeout=timeout, interval=ctx.poll_interval,
        status=instance_status, on_timeout=on_timeout, detail=lambda: last_console_line(ctx, instance_id),
        seen=True, gone_message=f"instance {instance_id} no longer exists")
    try:
        return wait.run(lambda: ctx.aws.instances.get(ctx.region, instance_id, max_age=ctx.poll_interval * 0.9,
                                                              clock=ctx.clock), check)
    finally:
        ctx.aws.instances.forget(ctx.region, instance_id)


def _self_stopping(ctx: Context, instance_id: str) -> str | None:
    """Windows: the instance stops itself (sysprep). Returns how it stopped, or None to stop it ourselves."""
    inst = ctx.aws.instances.get(ctx.region, instance_id, max_age=0, clock=ctx.clock)
    if inst is None:
        return None  # not visible (yet): StopInstances by id gives the real answer
    tag = tags_of(inst).get("bakery:bootstrap")
    name = _name(inst)
    if name in ("stopping", "stopped"):
        _wait_stopped(ctx, instance_id, STOP_TIMEOUT, "it was stopping by itself")
        return f"{instance_id} is stopped (it stopped itself)"
    if tag == "generalizing" and name in ("pending", "running"):
        # Never StopInstances mid-sysprep: an image of a half-generalized disk does not boot.
        ctx.log(f"{instance_id} is generalizing (sysprep); waiting for it to shut itself down")
        _wait_stopped(ctx, instance_id, ctx.role.sysprep_timeout, "sysprep, catalogue key sysprep_timeout")
        return f"{instance_id} is stopped (sysprep shut it down)"
    return None


def run(ctx: Context) -> str:
    state = ctx.require_state()
    instance_id = state.instance_id
    if not instance_id:
        raise BakeryError("the bake state has no instance; run the launch stage first")
    if ctx.role.platform == "windows":
        done = _self_stopping(ctx, instance_id)
        if done is not None:
            return done
    # StopInstances first: its answer carries the state, which saves a Describe on the common path.
    # Stopping a stopped instance is a no-op, so an instance that shut itself down is accepted.
    try:
        change = ctx.ec2("StopInstances", InstanceIds=[instance_id])["StoppingInstances"][0]
    except AwsError as exc:
        if exc.code == "IncorrectInstanceState":
            raise BakeryError(f"instance {instance_id} cannot be stopped for imaging: {exc}") from None
        raise
    stopped_itself = change.get("PreviousState", {}).get("Name") == "stopped"
    name = change.get("CurrentState", {}).get("Name", "stopping")
    if name in ("terminated", "shutting-down"):
        raise BakeryError(f"instance {instance_id} is {name}; it cannot be imaged")
    if name != "stopped":
        ctx.log(f"stopping {instance_id}")
        _wait_stopped(ctx, instance_id, STOP_TIMEOUT, "after StopInstances")
    return f"{instance_id} is stopped" + (" (it stopped itself)" if stopped_itself else "")
