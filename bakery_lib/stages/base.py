"""What stages and building blocks get: a role context (catalogue, role, AWS, settings, per-run session,
clock, log) and, for a bake, the bake context on top of it (workspace and the bake's state record).

``RoleContext`` holds no bake state: the state-free building blocks (``bakery_lib.resources``, the
converge functions of ``security_groups``/``iam_role``, ``ec2.instances.run_instance``) take one, so
create-instance and lifecycle call them without pretending to be a bake. ``Context`` adds the
workspace and the ``BakeState`` every stage reads and writes.

``Session`` is the one per-run memo (one per process run, shared by the roles a ``bakery bake`` runs in
parallel): facts that do not change during one run are asked once, not once per role (a region's
default VPC, the base AMI a filter resolves to, the Chef server's answers).

``Teardown`` is what a stage's ``cleanup`` may use: the bake's record and the means to remove things,
never the catalogue, so the same cleanups tear down a bake of this workspace (a ``Context``) and a
bake ``reap`` knows only by its tags (``bakery_lib.cleanup.TagContext``, whose role may have left
the catalogue). ``CleanupReport`` is the executor every removal goes through: it carries a
``Removal`` out (retrying what AWS or Chef briefly refuse) or, with ``dry_run``, only shows it.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..aws import Aws
from ..catalog import Catalog, RoleSpec
from ..clock import Clock
from ..errors import BakeryError, Skipped, UsageError, WorkspaceWriteError
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
    def role_name(self) -> str:
        return self.role.name

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

    @property
    def records_bucket(self) -> str | None:
        """Where the bake's records are (``bakery_lib.records``): the role's bucket."""
        return self.role.runlist_bucket

    @property
    def kept_images(self) -> tuple[dict[str, Any], ...]:
        """AMIs that stay, for ``bakery_lib.records``: none known here beyond the state's own (its copies)."""
        return ()


class Paced(Protocol):
    """What the removal executor needs of its caller: a log, and a pause no longer than the poll interval."""

    @property
    def poll_interval(self) -> float: ...

    def log(self, message: str) -> None: ...

    def sleep(self, seconds: float | None = None) -> None: ...


class Teardown(Paced, Protocol):
    """What a stage's ``cleanup`` may use (a ``Context``, or a bake known only by its tags)."""

    aws: Aws
    state: BakeState | None
    clock: Clock
    state_lock: threading.RLock

    @property
    def role_name(self) -> str: ...

    @property
    def region(self) -> str: ...

    def ec2(self, operation: str, **params: Any) -> dict[str, Any]: ...

    def chef(self) -> ChefClient: ...

    def require_state(self) -> BakeState: ...

    def save(self) -> None: ...

    @property
    def records_bucket(self) -> str | None:
        """The bucket of the bake's S3 records (``bakery_lib.records``); None when unknown."""

    @property
    def kept_images(self) -> tuple[dict[str, Any], ...]:
        """AMIs (as DescribeImages lists them) that this teardown leaves in place, besides the state's."""


# A removal AWS refuses is tried this many times (pauses of up to RETRY_PAUSES seconds, never longer
# than the poll interval: the operator chose how fast this bakery paces its calls).
RETRY_PAUSES = (2.0, 5.0)


@dataclass(frozen=True)
class Removal:
    """One thing a cleanup decided to remove: ``remove()`` does it and returns a line for the report."""

    kind: str  # instance | image | snapshot | copy | chef-client | chef-node | ... (a new stage may add its own)
    resource: str
    region: str  # "" for Chef objects
    doing: str  # terminate | deregister | delete
    done: str  # terminated | deregistered | deleted
    manual: str  # the command that does it by hand
    remove: Callable[[], str] = field(compare=False)
    label: str = ""  # how a person calls it, when not "KIND RESOURCE"

    @property
    def what(self) -> str:
        return self.label or f"{self.kind} {self.resource}" + (f" in {self.region}" if self.kind == "copy" else "")


@dataclass(frozen=True)
class Outcome:
    """What became of one ``Removal``: done | would | skipped (kept on purpose, ``detail`` says why) | failed."""

    removal: Removal
    status: str
    detail: str


@dataclass
class CleanupReport:
    """The executor of a teardown, and what it removed, kept and could not remove (with the command to
    do it by hand). ``dry_run``: a display-only executor; it shows each removal and changes nothing."""

    keep_instance: bool = False  # --keep-on-failure: the instance (and its Chef identity) stay
    dry_run: bool = False
    done: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def text(self) -> str:
        parts = self.done + [f"kept {k}" for k in self.kept]
        if self.errors:
            parts += [f"NOT REMOVED: {e}" for e in self.errors]
        return "; ".join(parts) or "nothing to clean up"

    def attempt(self, ctx: Paced, what: str | Removal, manual: str = "",
                remove: Callable[[], str] | None = None) -> bool:
        """Carry out a removal (``remove`` returns a line for the report, "" for nothing done), retrying
        what AWS or Chef briefly refuse; on the last failure record it with the ``manual`` command.
        True when it is gone (or, in a dry run, would be). Never raises.

        ``what`` is a ``Removal``, or (older form) a description with ``manual`` and ``remove``."""
        removal = what if isinstance(what, Removal) else _removal(what, manual, remove)
        if self.dry_run:
            self.done.append(f"would {removal.doing} {removal.what}")
            self.outcomes.append(Outcome(removal, "would", f"would {removal.doing}"))
            return True
        for pause in (*RETRY_PAUSES, None):
            try:
                result = removal.remove()
            except Skipped as exc:
                self.skip(removal, str(exc))
                return False
            except BakeryError as exc:
                if pause is None:
                    self.errors.append(f"{removal.what}: {exc}. Remove it by hand: {removal.manual}")
                    self.outcomes.append(Outcome(removal, "failed", str(exc)))
                    return False
                ctx.log(f"cleanup: {removal.what} failed ({exc}); retrying")
                ctx.sleep(min(pause, ctx.poll_interval))
                continue
            if result:
                self.done.append(result)
            self.outcomes.append(Outcome(removal, "done", result))
            return True
        return False  # not reached

    def skip(self, removal: Removal, reason: str) -> None:
        """A removal the bakery must not carry out (dry run or not): kept, with the reason."""
        self.kept.append(f"{removal.what}: {reason}")
        self.outcomes.append(Outcome(removal, "skipped", reason))

    def save(self, ctx: Teardown) -> None:
        """Write the state, noting (not raising) a failure: the teardown goes on."""
        try:
            ctx.save()
        except (OSError, WorkspaceWriteError) as exc:
            # Noted once: the teardown goes on without the disk (the resources carry the bake-id tag).
            note = f"could not write the state file: {exc}"
            if note not in self.errors:
                self.errors.append(note)


def _removal(what: str, manual: str, remove: Callable[[], str] | None) -> Removal:
    if remove is None:
        raise TypeError("attempt(ctx, what, manual, remove): remove is missing")
    kind, _, resource = what.partition(" ")
    return Removal(kind, resource or what, "", "remove", "removed", manual, remove)


def no_cleanup(ctx: Teardown, report: CleanupReport) -> None:
    """For stages that create nothing a bake owns."""


def resource_name(role: str, limit: int = 64) -> str:
    """``bakery-ROLE``, shortened with a stable hash when a name limit (IAM: 64) would be exceeded."""
    name = f"bakery-{role}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(role.encode()).hexdigest()[:8]
    return f"bakery-{role[: limit - len('bakery-') - 9]}-{digest}"


# How long a teardown waits for a terminated instance to be gone before it checks the Chef server
# again: on AWS an instance shows ``shutting-down`` for tens of seconds, and its chef-client (or a
# re-registration with the validator) may run on meanwhile and create the client and node again.
TERMINATION_WAIT = 90.0


def wait_terminated(ctx: Teardown, instance_id: str, timeout: float = TERMINATION_WAIT) -> str:
    """Poll until ``instance_id`` is ``terminated`` (or not found); returns the last state seen."""
    deadline = time.monotonic() + timeout
    name = "shutting-down"
    while True:
        try:
            found = ctx.ec2("DescribeInstances", InstanceIds=[instance_id]).get("Reservations", [])
        except BakeryError as exc:
            if "InvalidInstanceID.NotFound" in str(exc):
                return "terminated"
            raise
        instances = [i for r in found for i in r.get("Instances", [])]
        name = instances[0]["State"]["Name"] if instances else "terminated"
        if name == "terminated" or time.monotonic() >= deadline:
            return name
        ctx.sleep()


def recheck_chef_identity(ctx: Teardown, report: CleanupReport, node: str, instance_id: str) -> None:
    """After the instance is gone, delete the bake's Chef client and node again if it recreated them."""
    try:
        final = wait_terminated(ctx, instance_id)
    except BakeryError as exc:
        report.errors.append(f"could not see whether {instance_id} terminated ({exc}); if Chef client/node {node} "
                             f"exists again, `bakery reap` removes it")
        return
    if final != "terminated":
        report.kept.append(f"nothing more: {instance_id} is still {final} after {TERMINATION_WAIT:.0f} s; should it "
                           f"register Chef client/node {node} again, `bakery reap` removes it")
        return

    def again() -> str:
        client, node_gone = ctx.chef().delete_client(node), ctx.chef().delete_node(node)
        if client or node_gone:
            return (f"Chef client/node {node} registered again while {instance_id} was shutting down: "
                    "deleted again after it terminated")
        return ""

    report.attempt(ctx, Removal("chef-client", node, "", "delete", "deleted",
                                f"knife client delete {node} -y && knife node delete {node} -y", again,
                                label=f"Chef node/client {node} (after termination)"))


def remove_chef_identity(ctx: Teardown, report: CleanupReport, node: str, removed: Callable[[], None]) -> None:
    """The client first (that revokes the key a chef-client still running would use), then the node.

    ``removed`` records in the state that both are gone (the bake's node, or the boot test's)."""

    def client() -> str:
        return f"client {node} {'deleted' if ctx.chef().delete_client(node) else 'already absent'}"

    def node_() -> str:
        message = f"node {node} {'deleted' if ctx.chef().delete_node(node) else 'already absent'}"
        removed()
        report.save(ctx)
        return message

    # Named for both: when the client cannot be deleted, the node is not tried either.
    if report.attempt(ctx, Removal("chef-client", node, "", "delete", "deleted",
                                   f"knife client delete {node} -y && knife node delete {node} -y", client,
                                   label=f"Chef node/client {node}")):
        report.attempt(ctx, Removal("chef-node", node, "", "delete", "deleted", f"knife node delete {node} -y",
                                    node_))
