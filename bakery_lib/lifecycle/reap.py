"""``bakery reap``: what killed runs left behind, in three steps: look (``survey``), decide (``plan``), act.

The act: each abandoned bake of the plan goes through the same teardown loop as ``bakery cleanup``
(``bakery_lib.cleanup.teardown``: every stage's cleanup, in reverse), on the record built from its tags
(``TagContext``: no state file is written). Its stages' cleanups find what they made by the bake id, so a
new stage's leftovers (a boot test's instance) are reaped as soon as it is registered. ``--dry-run``
runs the same loop with a display-only executor, so a dry run makes only Describe/Get/List calls.
Every removal tolerates "already gone", so reap is idempotent and safe in a cron job. ``bake_id``
(``bakery reap --bake-id ID``): only that bake, whatever its expiry and age (the operator says the bake
is abandoned), from any workspace.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..aws import Aws
from ..cleanup import TagContext, teardown
from ..clock import Clock, Pace
from ..stages.base import CleanupReport
from ..state import BakeState
from .plan import ReapPlan, decide
from .report import Log, ReapReport, ReapRun
from .survey import look

if TYPE_CHECKING:
    from ..chef import ChefClient


def _quiet(_: str) -> None:
    pass


def reap(
    aws: Aws,
    regions: Sequence[str],
    chef: ChefClient | None,
    *,
    older_than: float = 0.0,
    workspace_states: Sequence[BakeState] = (),
    now: float | None = None,
    dry_run: bool,
    log: Log = _quiet,
    chef_error: str | None = None,
    clock: Clock | None = None,
    bake_id: str | None = None,
    poll_interval: float = 2.0,
    buckets: Mapping[str, str] | None = None,
) -> ReapReport:
    """Remove what killed bakes left behind: what is looked at (``survey``), what goes and why (``plan``).

    ``chef`` None with ``chef_error`` (why the client could not be made) skips Chef and exits 1;
    ``chef`` None without it skips Chef on purpose (``--no-chef``). ``bake_id``: only that bake's
    resources, removed whatever their expiry (the operator says it is abandoned), from any workspace.
    Pauses between a removal's tries sleep on ``clock`` (an abort ends them). ``buckets``: role -> the
    bucket of its bake records (the catalogue's ``runlist_bucket``), which go with a bake's removed AMI.
    """
    report = ReapReport(dry_run)
    run = ReapRun(aws, report, max(0.0, float(older_than)), time.time() if now is None else now,
                  # Bakes a workspace state still has open: their resources are not leftovers.
                  {s.bake_id: s for s in workspace_states if not s.closed and s.bake_id != bake_id},
                  bake_id, list(dict.fromkeys(regions)))
    found, aws_complete = look(run, workspace_states)
    plan = decide(run, found, chef, chef_error, aws_complete)
    _act(run, plan, chef, Pace(clock or Clock(), poll_interval, log), buckets or {})
    return report


def _act(run: ReapRun, plan: ReapPlan, chef: ChefClient | None, pacing: Pace, buckets: Mapping[str, str]) -> None:
    """Carry out the plan (display-only in a dry run): the kept lines, then each teardown's removals."""
    report = run.report
    report.lines += plan.kept
    report.chef_skipped, report.chef_failed = plan.chef_skipped, plan.chef_failed
    if report.chef_skipped:
        pacing.log(f"reap: Chef skipped: {report.chef_skipped}")
    for item in plan.teardowns:
        ctx = TagContext(aws=run.aws, state=item.record, chef_client=chef if item.record.chef_node else None,
                         poll=pacing.poll, clock=pacing.clock, log_fn=pacing.log,
                         records_bucket=buckets.get(item.record.role), kept_images=plan.staying)
        _tear_down(run, ctx, item.reason, pacing)


def _tear_down(run: ReapRun, ctx: TagContext, reason: str, pacing: Pace) -> None:
    """One abandoned bake through the stages' teardown loop; its removals become report lines."""
    record = ctx.require_state()
    executor = CleanupReport(dry_run=run.report.dry_run)
    teardown(ctx, executor)
    ended = any(o.removal.kind == "instance" for o in executor.outcomes)
    was = "would be" if run.report.dry_run else "was"
    for outcome in executor.outcomes:
        removal = outcome.removal
        line_why = reason
        if removal.kind.startswith("chef-") and ended:
            line_why = f"its {'bake ' if record.instance_id else ''}instance {was} terminated by this reap"
        elif removal.kind.startswith("chef-"):
            line_why = "no live instance is tagged bakery:chef-node with it"
        elif removal.kind == "records":
            line_why = f"the bake's AMI {was} deregistered by this reap, and none of its AMIs stays"
        action = {"done": removal.done, "would": f"would {removal.doing}", "skipped": "kept"}.get(
            outcome.status, "failed")
        run.report.add(removal.kind, removal.resource, removal.region, action,
                       line_why if action not in ("failed", "kept") else outcome.detail, pacing.log)
    run.report.errors += [f"bake {record.bake_id}: {e}" for e in executor.errors]
