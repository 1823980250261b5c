"""Carry out a plan on Jenkins, or only show it (``--dry-run``).

Order matters on Jenkins: folders first (outermost first, one at a time), then jobs (``workers``
at a time), then the view (it lists the jobs), then deletions. A job whose folder could not be
created fails without a request. Every action gives an ``Outcome``; one failure never stops the
others, and the caller reports which failed and why.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from .manager import JenkinsError, JenkinsManager
from .plan import Action, Plan

PAST = {"create": "created", "update": "updated", "delete": "deleted", "unchanged": "unchanged", "error": "failed"}


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    message: str = ""
    seconds: float = 0.0
    performed: bool = False  # a request was made for it (False for unchanged, errors and dry runs)


def execute(plan: Plan, manager: JenkinsManager, *, workers: int = 4,
            on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    failed_folders: list[str] = []

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    def blocked_by_folder(action: Action) -> str | None:
        for folder in failed_folders:
            if action.parent == folder or action.parent.startswith(folder + "/"):
                return f"not attempted: folder {folder!r} could not be created or updated"
        return None

    def run(action: Action) -> Outcome:
        reason = blocked_by_folder(action)
        if reason:
            return Outcome(action, False, reason)
        start = time.monotonic()
        try:
            _apply(action, manager)
        except JenkinsError as exc:
            return Outcome(action, False, str(exc), time.monotonic() - start, True)
        return Outcome(action, True, "", time.monotonic() - start, True)

    def phase(actions: Sequence[Action], parallel: bool) -> None:
        if not actions:
            return
        if not parallel or workers <= 1 or len(actions) == 1:
            for action in actions:
                record(run(action))
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync") as pool:
            for outcome in pool.map(run, actions):
                record(outcome)

    for action in plan.actions:
        if action.op == "unchanged":
            record(Outcome(action, True))
        elif action.op == "error":
            record(Outcome(action, False, action.reason))
            if action.kind == "folder":
                failed_folders.append(action.full_name)

    todo = [a for a in plan.actions if a.op in ("create", "update")]
    for action in [a for a in todo if a.kind == "folder"]:
        outcome = run(action)
        record(outcome)
        if not outcome.ok:
            failed_folders.append(action.full_name)
    phase([a for a in todo if a.kind == "job"], parallel=True)
    phase([a for a in todo if a.kind == "view"], parallel=False)
    phase([a for a in plan.actions if a.op == "delete"], parallel=True)
    return outcomes


def _apply(action: Action, manager: JenkinsManager) -> None:
    assert action.op == "delete" or action.desired is not None
    if action.op == "delete":
        manager.delete(action.full_name)
    elif action.kind == "view":
        if action.op == "create":
            manager.create_view(action.parent, action.name, action.desired or "")
        else:
            manager.update_view(action.parent, action.name, action.desired or "")
    elif action.op == "create":
        manager.create(action.parent, action.name, action.desired or "")
    else:  # the plan's desired config already carries over what the bakery does not manage
        manager.update(action.full_name, action.desired or "")


def show_plan(plan: Plan, out: TextIO, *, diffs: bool = True) -> None:
    """The dry-run display: one line per item, and a unified diff under every update."""
    width = max((len(a.op) for a in plan.actions), default=6)
    for action in plan.actions:
        line = f"{action.op:<{width}}  {action.label}"
        if action.op in ("error", "delete") or (action.op == "create" and action.kind == "folder"):
            line += f"  ({action.reason})"
        out.write(line + "\n")
        if diffs and action.op == "update":
            for diff_line in action.diff().splitlines():
                out.write(f"    {diff_line}\n")
    if plan.stale_kept:
        out.write(
            f"kept  {len(plan.stale_kept)} managed job(s) whose role left the catalogue: "
            f"{', '.join(plan.stale_kept)} (give --delete-stale to delete them)\n"
        )


def show_outcome(outcome: Outcome, out: TextIO) -> None:
    """One line per change or failure as it happens (unchanged items stay quiet)."""
    action = outcome.action
    if outcome.ok and action.op == "unchanged":
        return
    if outcome.ok:
        out.write(f"{PAST[action.op]} {action.label} ({outcome.seconds:.2f} s)\n")
    else:
        out.write(f"FAILED to {action.op if action.op != 'error' else 'sync'} {action.label}: {outcome.message}\n")
    out.flush()
