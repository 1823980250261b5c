"""Tear a bake down: the one loop over the stages' cleanups, in reverse pipeline order.

Used by ``bakery cleanup`` (Jenkins ``post { always }``; ``--bake-id`` of a bake of this workspace
too) and by ``bakery bake`` after a failed or interrupted role. A bake with no record here (another
workspace, a lost one) is ``reap``'s: it finds the same resources by their tags and removes them with
the same building blocks (``bakery_lib.resources``). Each stage's
``cleanup(ctx, report)`` removes what that stage created, from the state (and by the
``bakery:bake-id`` tag, so what a killed run created but never recorded is found too):

    publish   unfinished copies in other regions (and their snapshots)
    image     an image wait-image did not finish, and the bake's snapshots (a finished AMI is kept)
    launch    the instance, then the Chef node/client it registered (kept with --keep-on-failure)

The other stages create nothing a bake owns (security group and IAM role belong to the role).
Each removal is retried a few times; what still fails is listed with the exact command to run by
hand, and the command exits 1: a teardown never fails silently. A complete teardown closes the bake.
"""

from __future__ import annotations

from .aws import Clock
from .stages import MODULES, ORDER
from .stages.base import CleanupReport, Context

__all__ = ["CleanupReport", "TEARDOWN_ORDER", "cleanup"]

TEARDOWN_ORDER: tuple[str, ...] = tuple(reversed(ORDER))


def cleanup(ctx: Context, *, keep_instance: bool = False) -> CleanupReport:
    """Clean up the bake recorded in ``ctx.state`` (loaded by the caller). Never raises BakeryError."""
    report = CleanupReport(keep_instance=keep_instance)
    state = ctx.state
    if state is None:
        report.done.append(f"no bake of role {ctx.role.name} in this workspace")
        return report
    # A teardown must finish even when the bake was interrupted: it gets a clock nobody cancels.
    ctx.clock = Clock()
    for name in TEARDOWN_ORDER:
        MODULES[name].cleanup(ctx, report)
    kept_instance = bool(report.keep_instance and state.instance_id and not state.instance_terminated)
    if not report.errors and not kept_instance and not state.closed:
        state.closed = True
        state.outcome = state.outcome or "cleaned"
    report.save(ctx)
    return report
