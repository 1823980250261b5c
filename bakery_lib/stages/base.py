"""What stages and building blocks get: a role context (catalogue, role, AWS, settings, per-run session,
clock, log) and, for a bake, the bake context on top of it (workspace and the bake's state record).

``RoleContext`` holds no bake state: the state-free building blocks (``bakery_lib.resources``, the
converge functions of ``security_groups``/``iam_role``, ``launch.run_instance``) take one, so
create-instance and lifecycle call them without pretending to be a bake. ``Context`` adds the
workspace and the ``BakeState`` every stage reads and writes.

``Session`` is the per-run memo (one per process run, shared by the roles a ``bakery bake`` runs in
parallel): facts that do not change during one run are asked once, not once per role.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..aws import Aws, Clock
from ..catalog import Catalog, RoleSpec
from ..errors import BakeryError, UsageError
from ..settings import Settings
from ..state import BakeState, Workspace

if TYPE_CHECKING:
    from ..chef import ChefClient

T = TypeVar("T")


def default_log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    # One write per line: parallel bakes must not interleave halves of lines in a Jenkins console.
    sys.stderr.write(f"[{stamp}] {message}\n")
    sys.stderr.flush()


class Session:
    """Per-run memo: ``once(key, compute, ttl)`` computes once for all roles asking at the same moment.

    A failure is not remembered (the next caller tries again); ``ttl`` bounds how long an answer that
    may change during a long run (a cookbook's versions) is reused.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._values: dict[Hashable, tuple[float, Any]] = {}

    def once(self, key: Hashable, compute: Callable[[], T], ttl: float | None = None) -> T:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._values.get(key)
            if hit is not None and (ttl is None or time.monotonic() - hit[0] < ttl):
                return hit[1]
            value = compute()
            self._values[key] = (time.monotonic(), value)
            return value


@dataclass(kw_only=True)
class RoleContext:
    catalog: Catalog
    role: RoleSpec
    aws: Aws
    settings: Settings = field(default_factory=Settings)
    session: Session = field(default_factory=Session)
    clock: Clock = field(default_factory=Clock)
    log_fn: Callable[[str], None] = default_log
    _chef: ChefClient | None = None

    def log(self, message: str) -> None:
        self.log_fn(f"{self.role.name}: {message}")

    @property
    def region(self) -> str:
        return self.role.region

    @property
    def poll_interval(self) -> float:
        return self.settings.poll_interval

    def ec2(self, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call("ec2", self.region, operation, **params)

    def iam(self, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call("iam", self.region, operation, **params)

    def chef(self) -> ChefClient:
        if self._chef is None:
            # Imported here on purpose: it loads pychef (and its shim), which only Chef-facing steps need.
            from ..chef import ChefClient

            self._chef = ChefClient.from_env(self.settings.chef_env, self.settings.chef_config)
        return self._chef

    def sleep(self, seconds: float | None = None) -> None:
        self.clock.sleep(self.poll_interval if seconds is None else seconds)


@dataclass(kw_only=True)
class Context(RoleContext):
    ws: Workspace
    state: BakeState | None = None
    force: bool = False
    # Parallel region copies of one bake (publish) change and write the same record: they hold this
    # around change + save (re-entrant, since ``save`` takes it too).
    state_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def require_state(self) -> BakeState:
        if self.state is None:
            raise UsageError(
                f"no bake of role {self.role.name!r} in workspace {self.ws.root}: "
                f"run `bakery stage preflight --role {self.role.name} --release REL` first"
            )
        return self.state

    def save(self) -> None:
        if self.state is not None:
            with self.state_lock:
                self.ws.save(self.state)


# A removal AWS refuses is tried this many times (pauses of up to RETRY_PAUSES seconds, never longer
# than the poll interval: the operator chose how fast this bakery paces its calls).
RETRY_PAUSES = (2.0, 5.0)


@dataclass
class CleanupReport:
    """What a teardown removed, kept and could not remove (with the command to do it by hand)."""

    keep_instance: bool = False  # --keep-on-failure: the instance (and its Chef identity) stay
    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = self.done + [f"kept {k}" for k in self.kept]
        if self.errors:
            parts += [f"NOT REMOVED: {e}" for e in self.errors]
        return "; ".join(parts) or "nothing to clean up"

    def attempt(self, ctx: Context, what: str, manual: str, remove: Callable[[], str]) -> bool:
        """Run ``remove`` (returns a line for the report, "" for nothing done), retrying what AWS or Chef
        briefly refuse; on the last failure record ``what`` and the ``manual`` command. Never raises."""
        for pause in (*RETRY_PAUSES, None):
            try:
                result = remove()
            except BakeryError as exc:
                if pause is None:
                    self.errors.append(f"{what}: {exc}. Remove it by hand: {manual}")
                    return False
                ctx.log(f"cleanup: {what} failed ({exc}); retrying")
                ctx.sleep(min(pause, ctx.poll_interval))
                continue
            if result:
                self.done.append(result)
            return True
        return False  # not reached

    def save(self, ctx: Context) -> None:
        """Write the state, noting (not raising) a failure: the teardown goes on."""
        try:
            ctx.save()
        except OSError as exc:
            self.errors.append(f"could not write the state file: {exc}")


def no_cleanup(ctx: Context, report: CleanupReport) -> None:
    """For stages that create nothing a bake owns."""


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def resource_name(role: str, limit: int = 64) -> str:
    """``bakery-ROLE``, shortened with a stable hash when a name limit (IAM: 64) would be exceeded."""
    name = f"bakery-{role}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(role.encode()).hexdigest()[:8]
    return f"bakery-{role[: limit - len('bakery-') - 9]}-{digest}"
