"""The bake stages, in order, and the one function that runs a stage the way Jenkins calls it.

Every stage module has ``run(ctx)`` (``preflight.run(ctx, release)``) and ``cleanup(ctx, report)``
(removes what that stage created, from the state; idempotent). ``MODULES`` is the pipeline order:
``run_stage`` runs a stage only after every stage before it succeeded, and ``bakery_lib.cleanup``
tears a bake down by calling the cleanups in reverse of this order.

``run_stage`` turns a rerun of a completed stage into a no-op that says so, records the stage in
the state, and always writes the stage's JUnit report, on failure too.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import AwsError, BakeryError, UsageError, WorkspaceWriteError
from ..reports import write_junit
from ..state import BakeState

if TYPE_CHECKING:
    from .base import Context

# Stage name -> its module in this package, in pipeline order.
_MODULE_NAMES: dict[str, str] = {
    "preflight": "preflight",
    "security-groups": "security_groups",
    "iam-role": "iam_role",
    "launch": "launch",
    "bootstrap": "bootstrap",
    "stop": "stop",
    "image": "image",
    "wait-image": "wait_image",
    "terminate": "terminate",
    "chef-cleanup": "chef_cleanup",
    "boot-test": "boot_test",
    "publish": "publish",
}


class _Modules(Mapping[str, ModuleType]):
    """Stage name -> module, each imported on first use: a ``bakery stage`` process runs one stage and
    loads only that one (the CLI parser, ``status`` and the reports need the names alone)."""

    def __getitem__(self, name: str) -> ModuleType:
        return importlib.import_module(f"{__name__}.{_MODULE_NAMES[name]}")

    def __contains__(self, name: object) -> bool:
        return name in _MODULE_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULE_NAMES)

    def __len__(self) -> int:
        return len(_MODULE_NAMES)


MODULES: Mapping[str, ModuleType] = _Modules()
ORDER: tuple[str, ...] = tuple(_MODULE_NAMES)
# Stages a reused AMI (same bake key) makes unnecessary: all but opening and publishing the bake.
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


def _mark_reused(state: BakeState) -> None:
    for name in SKIPPED_WHEN_REUSED:
        rec = state.stage(name)
        if rec.status != "skipped":
            rec.status, rec.message = "skipped", f"reused {state.image_id} (same bake key)"


def _run_preflight(ctx: Context, release: str | None) -> tuple[str, bool]:
    message = MODULES["preflight"].run(ctx, release)
    if ctx.state is not None and ctx.state.reused:
        _mark_reused(ctx.state)
        ctx.save()
    return message, message.startswith("already done")


def _run_later_stage(ctx: Context, name: str, started: float) -> tuple[str, bool]:
    state = ctx.require_state()
    if state.succeeded(name):
        how = "skipped (reused AMI)" if state.stages[name].status == "skipped" else "succeeded"
        return f"already done: stage {name} {how} for bake {state.bake_id}; nothing to do", True
    _prerequisite(ctx, name)
    if state.closed:
        raise UsageError(f"bake {state.bake_id} of role {ctx.role.name!r} is closed ({state.outcome}); "
                         f"start a new bake with `bakery stage preflight --role {ctx.role.name} --release REL`")
    record = state.stage(name)
    record.status = "running"
    record.started_at = started
    record.attempts += 1
    ctx.save()
    return MODULES[name].run(ctx), False


def _record(ctx: Context, name: str, status: str, started: float, duration: float, message: str) -> None:
    state = ctx.state
    if state is None:
        return
    record = state.stage(name)
    record.status, record.finished_at = status, time.time()
    record.started_at = record.started_at or started
    record.duration, record.message = round(duration, 3), message[:2000]
    ctx.save()


def _skipped(ctx: Context, name: str, noop: bool) -> str | None:
    """Why a stage did not run when a reused AMI made it unnecessary: JUnit says skipped, as the summary does."""
    rec = ctx.state.stages.get(name) if noop and ctx.state is not None else None
    if rec is None or rec.status != "skipped":
        return None
    return rec.message or "skipped (reused AMI)"


def run_stage(ctx: Context, name: str, *, release: str | None = None, announce: bool = True) -> StageResult:
    """Run one stage for ``ctx.role``; never raises for expected failures (see ``exit_code``).

    ``announce``: log the result line (``bakery stage`` prints it itself instead)."""
    if name not in MODULES:
        raise UsageError(f"unknown stage {name!r}; stages in order: {', '.join(ORDER)}")
    t0 = time.monotonic()
    started = time.time()
    ctx.state = ctx.ws.load(ctx.role.name)
    try:
        if name == "preflight":
            message, noop = _run_preflight(ctx, release)
        else:
            message, noop = _run_later_stage(ctx, name, started)
        duration = time.monotonic() - t0
        if not noop:
            _record(ctx, name, "succeeded", started, duration, message)
        skipped = _skipped(ctx, name, noop)
        write_junit(ctx.ws, ctx.role.name, name, duration, output=message, skipped=skipped)
        if announce and skipped is None:  # a reused AMI: preflight's line says it once, not ten skipped lines
            ctx.log(f"{name}: {message} ({duration:.1f} s)")
        return StageResult(ctx.role.name, name, "noop" if noop else "succeeded", message, duration, 0)
    except BakeryError as exc:
        duration = time.monotonic() - t0
        message = str(exc)
        code = exc.code if isinstance(exc, AwsError) else None
        rec = ctx.state.stages.get(name) if ctx.state is not None else None
        # Best effort: on a full disk these writes fail too, and the failure must still reach the caller.
        if rec is not None and rec.status == "running":
            with contextlib.suppress(WorkspaceWriteError):
                _record(ctx, name, "failed", started, duration, message)
        with contextlib.suppress(WorkspaceWriteError):
            write_junit(ctx.ws, ctx.role.name, name, duration, failure=message,
                        failure_type=code or type(exc).__name__)
        if announce:
            ctx.log(f"{name} FAILED: {message}")
        return StageResult(ctx.role.name, name, "failed", message, duration, exc.exit_code, code)
