"""The record of a sync: a JUnit report (a testcase per item) and the one-line summary.

The report goes to ``reports/generate-jobs.xml`` under the workspace, so a Jenkins job that runs
generate-jobs publishes it with the same ``junit 'reports/*.xml'`` as the bakes: a job that could
not be synced shows up as a failed test naming the job and the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from ..fsutil import atomic_write_text
from .execute import Outcome
from .plan import Plan

REPORT_NAME = "generate-jobs.xml"


def write_junit(path: Path, outcomes: Sequence[Outcome], *, plan: Plan | None = None, dry_run: bool = False,
                url: str = "", seconds: float = 0.0) -> Path:
    cases = []
    for outcome in outcomes:
        action = outcome.action
        op = action.op if outcome.ok or action.op != "error" else "sync"
        case = TestCase(
            name=action.label,
            classname=f"generate-jobs.{'plan.' if dry_run else ''}{action.kind}",
            elapsed_sec=round(outcome.seconds, 3),
            stdout=f"{'would ' + action.op if dry_run else action.op}: {action.reason}".strip(),
        )
        if not outcome.ok:
            case.add_failure_info(message=f"{op} {action.label} failed", output=outcome.message)
        cases.append(case)
    for name in plan.stale_kept if plan else ():
        case = TestCase(name=name, classname="generate-jobs.job", stdout="stale: role left the catalogue")
        case.add_skipped_info("managed job whose role left the catalogue; kept (no --delete-stale)")
        cases.append(case)
    suite = TestSuite(
        "generate-jobs" + (" (dry run)" if dry_run else ""),
        cases,
        properties={"jenkins_url": url, "dry_run": str(dry_run).lower()},
    )
    text = to_xml_report_string([suite], encoding="utf-8")
    return atomic_write_text(path, text)


def summary(outcomes: Sequence[Outcome], *, url: str, seconds: float, dry_run: bool = False,
            stale_kept: int = 0) -> str:
    """One line: what happened (or would happen) to how many items, on which Jenkins, in how long."""
    ops = Counter(o.action.op for o in outcomes if o.ok)
    failed = sum(1 for o in outcomes if not o.ok)
    total = len(outcomes)
    stale = f", {stale_kept} stale kept" if stale_kept else ""
    if dry_run:
        return (
            f"generate-jobs --dry-run: {total} items on {url}: would create {ops['create']}, update "
            f"{ops['update']}, delete {ops['delete']}; {ops['unchanged']} unchanged, {failed} cannot be "
            f"synced{stale}; nothing was changed ({seconds:.1f} s)"
        )
    return (
        f"generate-jobs: {total} items on {url}: {ops['create']} created, {ops['update']} updated, "
        f"{ops['delete']} deleted, {ops['unchanged']} unchanged, {failed} failed{stale} ({seconds:.1f} s)"
    )
