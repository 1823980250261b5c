"""The bake stages, in order, and the one function that runs a stage the way Jenkins calls it.

``run_stage`` enforces the order (a stage runs only after every stage before it succeeded), turns a
rerun of a completed stage into a no-op that says so, records the stage in the state, and always
writes the stage's JUnit report, on failure too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType

from ..errors import AwsError, BakeryError, UsageError
from ..reports import write_junit
from . import (
    bootstrap,
    chef_cleanup,
    iam_role,
    image,
    launch,
    preflight,
    publish,
    security_groups,
    stop,
    terminate,
    wait_image,
)
from .base import Context

MODULES: dict[str, ModuleType] = {
    "preflight": preflight,
    "security-groups": security_groups,
    "iam-role": iam_role,
    "launch": launch,
    "bootstrap": bootstrap,
    "stop": stop,
    "image": image,
    "wait-image": wait_image,
    "terminate": terminate,
    "chef-cleanup": chef_cleanup,
    "publish": publish,
}
ORDER: tuple[str, ...] = tuple(MODULES)
# Stages a reused AMI (same bake key) makes unnecessary.
SKIPPED_WHEN_REUSED = ORDER[1:-1]


@dataclass(frozen=True)
class StageResult:
    role: str
    stage: str
    status: str  # succeeded | failed | noop | skipped
    message: str
    duration: float
    exit_code: int
    error_code: str | None = None


def _prerequisite(ctx: Context, name: str) -> None:
    state = ctx.require_state()
    idx = ORDER.index(name)
    for earlier in ORDER[:idx]:
        if not state.succeeded(earlier):
            rec = state.stages.get(earlier)
            status = rec.status if rec else "not run"
            raise UsageError(
                f"stage {name!r} cannot run yet: stage {earlier!r} must run first (its status: {status}); "
                f"run `bakery stage {earlier} --role {ctx.role.name}`"
            )


def run_stage(ctx: Context, name: str, *, release: str | None = None) -> StageResult:
    """Run one stage for ``ctx.role``; never raises for expected failures (see ``exit_code``)."""
    if name not in MODULES:
        raise UsageError(f"unknown stage {name!r}; stages in order: {', '.join(ORDER)}")
    t0 = time.monotonic()
    started = time.time()
    ctx.state = ctx.ws.load(ctx.role.name)
    record = None
    try:
        if name == "preflight":
            message = preflight.run(ctx, release)
            noop = message.startswith("already done")
        else:
            state = ctx.require_state()
            if state.succeeded(name):
                rec = state.stages[name]
                how = "skipped (reused AMI)" if rec.status == "skipped" else "succeeded"
                message = f"already done: stage {name} {how} for bake {state.bake_id}; nothing to do"
                noop = True
            else:
                _prerequisite(ctx, name)
                if state.closed:
                    raise UsageError(f"bake {state.bake_id} of role {ctx.role.name!r} is closed ({state.outcome}); "
                                     f"start a new bake with `bakery stage preflight --role {ctx.role.name} --release REL`")
                record = state.stage(name)
                record.status = "running"
                record.started_at = started
                record.attempts += 1
                ctx.save()
                message = MODULES[name].run(ctx)
                noop = False
        duration = time.monotonic() - t0
        state = ctx.state
        if state is not None and not noop:
            record = state.stage(name)
            record.status, record.finished_at = "succeeded", time.time()
            record.started_at = record.started_at or started
            record.duration, record.message = round(duration, 3), message[:2000]
            ctx.save()
        write_junit(ctx.ws, ctx.role.name, name, duration, output=message)
        ctx.log(f"{name}: {message} ({duration:.1f} s)")
        return StageResult(ctx.role.name, name, "noop" if noop else "succeeded", message, duration, 0)
    except BakeryError as exc:
        duration = time.monotonic() - t0
        message = str(exc)
        code = exc.code if isinstance(exc, AwsError) else None
        if record is not None and ctx.state is not None:
            record.status, record.finished_at = "failed", time.time()
            record.duration, record.message = round(duration, 3), message[:2000]
            try:
                ctx.save()
            except OSError:
                pass
        write_junit(ctx.ws, ctx.role.name, name, duration, failure=message, failure_type=code or type(exc).__name__)
        ctx.log(f"{name} FAILED: {message}")
        return StageResult(ctx.role.name, name, "failed", message, duration, exc.exit_code, code)
