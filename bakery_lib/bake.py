"""``bakery bake``: every stage in one process, for one role or many roles in parallel.

Each role runs its stages in order on a worker thread; all share one ``Aws`` (one connection pool,
one cap on concurrent mutating calls, adaptive retries) and one cancel event. SIGTERM/SIGINT (a
Jenkins abort) set the event: every wait wakes at once, the stage fails with ``Interrupted``, and
the role's cleanup runs (in reverse: instance, Chef identity, unfinished image). One failing role
never stops the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .aws import Aws, Clock
from .catalog import Catalog
from .cleanup import cleanup
from .errors import BakeryError
from .reports import write_junit, write_summary_artifacts
from .stages import ORDER, StageResult, run_stage
from .stages.base import Context, default_log
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
    env: dict[str, str] | None = None,
    chef_config: str | None = None,
    poll_interval: float = 15.0,
    log: Callable[[str], None] = default_log,
) -> RoleOutcome:
    t0 = time.monotonic()
    role = catalog.role(role_name)
    ctx = Context(ws=ws, catalog=catalog, role=role, aws=aws, clock=Clock(cancel), log_fn=log,
                  env=dict(env or {}), chef_config=chef_config, poll_interval=poll_interval, force=force)
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
                state = ctx.state
                assert state is not None
                status = "reused" if state.reused else "succeeded"
                amis = dict(state.amis)
                return RoleOutcome(role_name, status, f"{status}: {', '.join(f'{r} {a}' for r, a in amis.items())}",
                                   time.monotonic() - t0, results, amis)
            c0 = time.monotonic()
            ctx.state = ws.load(role_name)
            if failed.stage == "preflight":
                # Preflight creates nothing; a state it refused (another bake in progress here) is not ours.
                text = "nothing to clean up (preflight creates nothing)"
            else:
                report = cleanup(ctx, keep_instance=keep_on_failure)
                text = report.text()
                write_junit(ws, role_name, "cleanup", time.monotonic() - c0, output=text,
                            failure=text if report.errors else None)
            if keep_on_failure and failed.stage != "preflight":
                text += f"; to remove the kept instance later: bakery --workspace {ws.root} cleanup --role {role_name}"
            log(f"{role_name}: cleanup after failure: {text}")
            return RoleOutcome(role_name, "failed", f"{failed.stage}: {failed.message}", time.monotonic() - t0,
                               results, {}, text, failed.exit_code if failed.exit_code else 1)
    except BakeryError as exc:  # e.g. the workspace lock is held by another process
        return RoleOutcome(role_name, "failed", str(exc), time.monotonic() - t0, results, {}, "", exc.exit_code)


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
    **options,
) -> list[RoleOutcome]:
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
        lines.append(f"{o.role:<{width}}  {o.status:<9}  {o.duration:7.1f} s  {o.message.splitlines()[0][:200]}")
        if o.status == "failed" and o.cleanup:
            lines.append(f"{'':<{width}}  cleanup: {o.cleanup}")
    return lines
