"""``bakery bake``: every stage in one process, for one role or many roles in parallel.

Each role runs its stages in order on a worker thread; all share one ``Aws`` (one connection pool,
one cap on concurrent mutating calls, adaptive retries) and one cancel event. SIGTERM/SIGINT (a
Jenkins abort) set the event: every wait wakes at once, the stage fails with ``Interrupted``, and
the role's teardown runs (``cleanup.cleanup``: the stages' cleanups in reverse order). One failing
role never stops the others. The roles share one run ``Session`` (Chef checks, cookbook look-ups).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .aws import Aws
from .catalog import Catalog
from .cleanup import cleanup
from .clock import Clock
from .errors import BakeryError, WorkspaceWriteError
from .lifecycle.heartbeat import Heartbeat
from .progress import Progress
from .reports import write_junit, write_summary_artifacts
from .settings import Settings
from .stages import ORDER, StageResult, run_stage
from .stages.base import Context, Session, default_log
from .state import Workspace

# Above this many roles a bake prints no line per stage (a failure still at once), only progress lines
# and the final table: 200 roles in a few hundred lines, not thousands.
QUIET_ABOVE = 10


@dataclass
class RoleOutcome:
    role: str
    status: str  # succeeded | reused | failed
    message: str
    duration: float
    results: list[StageResult] = field(default_factory=list)
    amis: dict[str, str] = field(default_factory=dict)
    cleanup: str = ""
    exit_code: int = 0
    # Nothing ran: another process holds the role's lock (its bake is running; its state is not ours).
    refused: bool = False


def _teardown_after_failure(ctx: Context, failed: StageResult, keep_on_failure: bool) -> str:
    """The role's cleanup after a failed stage; returns its one-line text."""
    role_name = ctx.role.name
    if failed.stage == "preflight":
        # Preflight creates nothing; a state it refused (another bake in progress here) is not ours.
        return "nothing to clean up (preflight creates nothing)"
    c0 = time.monotonic()
    # The record in memory is the newest (this process holds the role's lock); the file may lag
    # behind it when the disk filled up. Only without one is the file read.
    if ctx.state is None:
        ctx.state = ctx.ws.load(role_name)
    report = cleanup(ctx, keep_instance=keep_on_failure)
    text = report.text()
    with contextlib.suppress(WorkspaceWriteError):  # a full disk: the teardown's own result still counts
        write_junit(ctx.ws, role_name, "cleanup", time.monotonic() - c0, output=text,
                    failure=text if report.errors else None)
    if keep_on_failure:
        text += (f"; to remove the kept instance and its Chef identity later: "
                 f"bakery --workspace {ctx.ws.root} cleanup --role {role_name}")
    return text


def bake_role(
    ws: Workspace,
    catalog: Catalog,
    role_name: str,
    release: str,
    aws: Aws,
    cancel: threading.Event,
    *,
    keep_on_failure: bool = False,
    force: bool = False,
    settings: Settings | None = None,
    session: Session | None = None,
    log: Callable[[str], None] = default_log,
    heartbeat: Heartbeat | None = None,
    quiet: bool = False,
) -> RoleOutcome:
    """Every stage of one role in order; on a failure (or SIGTERM) the bake's teardown. Never raises.

    ``quiet`` (many roles): no line per stage; a failure and its cleanup are still said at once."""
    t0 = time.monotonic()
    ctx = Context(ws=ws, catalog=catalog, role=catalog.role(role_name), aws=aws, clock=Clock(cancel, rounds=aws.rounds),
                  log_fn=_silent if quiet else log,
                  settings=settings or Settings(), session=session or Session(), force=force)
    results: list[StageResult] = []
    if heartbeat is not None:
        heartbeat.track(ctx)
    try:
        with ws.lock(role_name):
            for name in ORDER:
                result = run_stage(ctx, name, release=release)
                results.append(result)
                if result.exit_code:
                    break
            failed = next((r for r in results if r.exit_code), None)
            if failed is None:
                state = ctx.require_state()
                status = "reused" if state.reused else "succeeded"
                amis = dict(state.amis)
                return RoleOutcome(role_name, status, f"{status}: {', '.join(f'{r} {a}' for r, a in amis.items())}",
                                   time.monotonic() - t0, results, amis)
            if quiet:
                log(f"{role_name}: {failed.stage} FAILED: {failed.message}")
            text = _teardown_after_failure(ctx, failed, keep_on_failure)
            _mark_kept(ctx, heartbeat, keep_on_failure)
            log(f"{role_name}: cleanup after failure: {text}")
            return RoleOutcome(role_name, "failed", f"{failed.stage}: {failed.message}", time.monotonic() - t0,
                               results, {}, text, failed.exit_code or 1)
    except BakeryError as exc:  # e.g. the workspace lock is held by another process
        return RoleOutcome(role_name, "failed", str(exc), time.monotonic() - t0, results, {}, "", exc.exit_code,
                           refused=not results and not isinstance(exc, WorkspaceWriteError))
    finally:
        if heartbeat is not None:
            heartbeat.untrack(ctx)


def _silent(_message: str) -> None:
    pass


def _mark_kept(ctx: Context, heartbeat: Heartbeat | None, keep_on_failure: bool) -> None:
    """A bake kept for debugging stops beating: its expiry, not a missed heartbeat, decides when reap removes it."""
    state = ctx.state
    if heartbeat is not None and keep_on_failure and state is not None and state.instance_id \
            and not state.instance_terminated:
        heartbeat.mark_kept(state.region, state.instance_id)


def bake_many(
    ws: Workspace,
    catalog: Catalog,
    roles: list[str],
    release: str,
    aws: Aws,
    cancel: threading.Event,
    *,
    jobs: int = 4,
    log: Callable[[str], None] = default_log,
    write_errors: list[str] | None = None,
    **options: Any,
) -> list[RoleOutcome]:
    """``bake_role`` for each role, ``jobs`` at a time, sharing one AWS client and one run session.

    ``write_errors`` collects what could not be written after the bakes (the artifacts, on a full disk)."""
    options.setdefault("session", Session())
    outcomes: list[RoleOutcome] = []
    settings = options.get("settings") or Settings()
    heartbeat = options.pop("heartbeat", None) or Heartbeat(aws, log=log, interval=settings.heartbeat_interval)
    options.setdefault("quiet", len(roles) > QUIET_ABOVE)
    progress = Progress(len(roles), log, clock=options.pop("progress_clock", time.monotonic))
    with heartbeat, ThreadPoolExecutor(max_workers=max(1, min(jobs, len(roles))), thread_name_prefix="bake") as pool:
        futures = [pool.submit(bake_role, ws, catalog, r, release, aws, cancel, log=log, heartbeat=heartbeat,
                               **options) for r in roles]
        if len(roles) > 1:
            for fut in futures:
                fut.add_done_callback(lambda f: progress.finished(f.result().status == "failed"))
        for fut in futures:
            outcomes.append(fut.result())
    try:
        write_summary_artifacts(ws)
    except WorkspaceWriteError as exc:
        log(f"artifacts not written: {exc}")
        if write_errors is not None:
            write_errors.append(f"artifacts not written: {exc}")
    return outcomes


def summary_lines(outcomes: list[RoleOutcome]) -> list[str]:
    """The final table: one row per role, failures first (what a reader must act on), then the others."""
    width = max((len(o.role) for o in outcomes), default=4)
    lines = []
    for o in sorted(outcomes, key=lambda o: o.status != "failed"):
        # The whole message: its advice (what to run next) is at the end, never cut off.
        first, *rest = o.message.splitlines() or [""]
        status = "refused" if o.refused else o.status
        lines.append(f"{o.role:<{width}}  {status:<9}  {o.duration:7.1f} s  {first}")
        lines.extend(f"{'':<{width}}  {line}" for line in rest)
        if o.status == "failed" and o.cleanup:
            lines.append(f"{'':<{width}}  cleanup: {o.cleanup}")
    return lines
