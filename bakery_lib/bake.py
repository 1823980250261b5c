"""``bakery bake``: every stage in one process, for one role or many roles in parallel.

Each role runs its stages in order on a worker thread; all share one ``Aws`` (one connection pool,
one cap on concurrent mutating calls, adaptive retries) and one cancel event. SIGTERM/SIGINT (a
Jenkins abort) set the event: every wait wakes at once, the stage fails with ``Interrupted``, and
the role's teardown runs (``cleanup.cleanup``: the stages' cleanups in reverse order). One failing
role never stops the others. The roles share one run ``Session`` (Chef checks, cookbook look-ups).
"""

from __future__ import annotations

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
from .errors import BakeryError
from .reports import write_junit, write_summary_artifacts
from .settings import Settings
from .stages import ORDER, StageResult, run_stage
from .stages.base import Context, Session, default_log
from .state import Workspace


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
    ctx.state = ctx.ws.load(role_name)
    report = cleanup(ctx, keep_instance=keep_on_failure)
    text = report.text()
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
) -> RoleOutcome:
    """Every stage of one role in order; on a failure (or SIGTERM) the bake's teardown. Never raises."""
    t0 = time.monotonic()
    ctx = Context(ws=ws, catalog=catalog, role=catalog.role(role_name), aws=aws, clock=Clock(cancel, rounds=aws.rounds),
                  log_fn=log,
                  settings=settings or Settings(), session=session or Session(), force=force)
    results: list[StageResult] = []
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
            text = _teardown_after_failure(ctx, failed, keep_on_failure)
            log(f"{role_name}: cleanup after failure: {text}")
            return RoleOutcome(role_name, "failed", f"{failed.stage}: {failed.message}", time.monotonic() - t0,
                               results, {}, text, failed.exit_code or 1)
    except BakeryError as exc:  # e.g. the workspace lock is held by another process
        return RoleOutcome(role_name, "failed", str(exc), time.monotonic() - t0, results, {}, "", exc.exit_code,
                           refused=not results)


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
    **options: Any,
) -> list[RoleOutcome]:
    """``bake_role`` for each role, ``jobs`` at a time, sharing one AWS client and one run session."""
    options.setdefault("session", Session())
    outcomes: list[RoleOutcome] = []
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(roles))), thread_name_prefix="bake") as pool:
        futures = [pool.submit(bake_role, ws, catalog, r, release, aws, cancel, log=log, **options) for r in roles]
        for fut in futures:
            outcomes.append(fut.result())
    write_summary_artifacts(ws)
    return outcomes


def summary_lines(outcomes: list[RoleOutcome]) -> list[str]:
    width = max((len(o.role) for o in outcomes), default=4)
    lines = []
    for o in outcomes:
        # The whole message: its advice (what to run next) is at the end, never cut off.
        first, *rest = o.message.splitlines() or [""]
        status = "refused" if o.refused else o.status
        lines.append(f"{o.role:<{width}}  {status:<9}  {o.duration:7.1f} s  {first}")
        lines.extend(f"{'':<{width}}  {line}" for line in rest)
        if o.status == "failed" and o.cleanup:
            lines.append(f"{'':<{width}}  cleanup: {o.cleanup}")
    return lines
