"""What ``bakery reap`` says: one line per resource looked at (the action and why), the errors, the exit code;
and the run's inputs (``ReapRun``) that the survey and the decision read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..aws import Aws
from ..state import BakeState
from .durations import span

Log = Callable[[str], None]


@dataclass(frozen=True)
class ReapLine:
    kind: str  # instance | image | snapshot | copy | chef-node | chef-client (or a later stage's kind)
    resource: str
    region: str  # "" for Chef objects
    action: str  # terminated | deregistered | deleted | would terminate | would deregister | would delete | kept | failed
    reason: str

    def line(self) -> str:
        where = f"{self.region} " if self.region else ""
        return f"{where}{self.kind} {self.resource}: {self.action}: {self.reason}"


@dataclass
class ReapReport:
    dry_run: bool
    lines: list[ReapLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    chef_skipped: str | None = None  # why the Chef part did not run
    chef_failed: bool = False  # it was wanted but could not run: exit 1

    @property
    def exit_code(self) -> int:
        return 1 if self.errors or self.chef_failed else 0

    @property
    def removed(self) -> list[ReapLine]:
        return [r for r in self.lines if r.action not in ("kept", "failed")]

    def add(self, kind: str, resource: str, region: str, action: str, reason: str, log: Log) -> None:
        entry = ReapLine(kind, resource, region, action, reason)
        self.lines.append(entry)
        if action != "kept":
            log(f"reap: {entry.line()}")

    def text(self) -> str:
        out = [r.line() for r in self.lines]
        if self.chef_skipped:
            out.append(f"Chef SKIPPED: {self.chef_skipped}")
        verb = "to remove" if self.dry_run else "removed"
        out.append(f"reap{' (dry run)' if self.dry_run else ''}: {len(self.removed)} resource(s) {verb}, "
                   f"{sum(1 for r in self.lines if r.action == 'kept')} kept"
                   + (f", {len(self.errors)} error(s)" if self.errors else ""))
        out += [f"ERROR: {e}" for e in self.errors]
        return "\n".join(out)


@dataclass(frozen=True)
class ReapRun:
    """One reap run: what it was asked, and the report its survey and teardowns write to."""

    aws: Aws
    report: ReapReport
    older_than: float
    now: float
    open_bakes: dict[str, BakeState]
    bake_id: str | None = None  # --bake-id: only this bake, whatever its expiry
    regions: Sequence[str] = ()

    def mine(self, bake_id: str) -> bool:
        return self.bake_id is None or bake_id == self.bake_id

    def young(self, created: float | None) -> str | None:
        # Without --older-than age does not matter, and clock skew between this host and AWS cannot keep anything.
        if self.bake_id is None and self.older_than and created is not None and self.now - created < self.older_than:
            return f"created {span(self.now - created)} ago, within --older-than"
        return None
