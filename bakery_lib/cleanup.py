"""Tear a bake down: the one loop over the stages' cleanups, in reverse pipeline order.

Three callers, one loop (``teardown``):

- ``bakery cleanup`` (Jenkins ``post { always }``; ``--bake-id`` of a bake of this workspace too) and
  ``bakery bake`` after a failed or interrupted role: ``cleanup(ctx)`` on the workspace's record.
- ``bakery reap`` (and ``cleanup --bake-id`` of a bake of no workspace): ``bakery_lib.lifecycle``
  builds the record of an abandoned bake from its tags and hands a ``TagContext`` to the same loop,
  which writes no state file; ``--dry-run`` runs it with a display-only executor.

Each stage's ``cleanup(ctx, report)`` removes what that stage created, from the record (and by the
``bakery:bake-id`` tag, so what a killed run created but never recorded is found too):

    publish   unfinished copies in other regions (and their snapshots)
    boot-test its instance, and the AMI whose boot test did not pass
    image     an image wait-image did not finish, and the bake's snapshots (a finished AMI is kept)
    bootstrap the bake's S3 records, once its AMI was removed and none of its AMIs stays (``records``)
    launch    the bake instance, then the Chef client and node it registered (kept with --keep-on-failure)

The other stages create nothing a bake owns (security group and IAM role belong to the role); a new
stage that creates something (a boot test's instance) removes it in its own ``cleanup``, finding it
by the bake id, and is then torn down by every caller above.
Each removal goes through the report (``CleanupReport.attempt``): retried a few times; what still
fails is listed with the exact command to run by hand, and the command exits 1: a teardown never
fails silently. A complete teardown closes the bake.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .aws import Aws
from .clock import Clock
from .errors import BakeryError
from .stages import MODULES, ORDER
from .stages.base import CleanupReport, Context, Teardown
from .state import BakeState

if TYPE_CHECKING:
    from .chef import ChefClient

__all__ = ["CleanupReport", "TEARDOWN_ORDER", "TagContext", "cleanup", "teardown"]

TEARDOWN_ORDER: tuple[str, ...] = tuple(reversed(ORDER))


def teardown(ctx: Teardown, report: CleanupReport) -> None:
    """The one teardown loop: every stage's cleanup, last stage first."""
    for name in TEARDOWN_ORDER:
        MODULES[name].cleanup(ctx, report)


def cleanup(ctx: Context, *, keep_instance: bool = False) -> CleanupReport:
    """Clean up the bake recorded in ``ctx.state`` (loaded by the caller). Never raises BakeryError."""
    report = CleanupReport(keep_instance=keep_instance)
    state = ctx.state
    if state is None:
        report.done.append(f"no bake of role {ctx.role.name} in this workspace")
        return report
    # A teardown must finish even when the bake was interrupted: it gets a clock nobody cancels.
    ctx.clock = Clock(rounds=ctx.clock.rounds)
    teardown(ctx, report)
    kept_instance = bool(report.keep_instance and (
        (state.instance_id and not state.instance_terminated)
        or (state.test_instance_id and not state.test_instance_terminated)))  # a boot test's, kept
    if not report.errors and not kept_instance and not state.closed:
        state.closed = True
        state.outcome = state.outcome or "cleaned"
    report.save(ctx)
    return report


def _no_log(_message: str) -> None:
    pass


@dataclass(kw_only=True)
class TagContext:
    """A bake known only by its tags (no workspace holds it): what ``teardown`` needs, and no catalogue.

    ``state`` is the record ``reap`` built from the tags; ``save`` writes nothing (the record lives
    in AWS and Chef only). Its sleeps are on ``clock``, like a bake's (an abort ends them). ``chef`` None: the Chef part is skipped, and a cleanup asking for it fails
    with ``chef_error``.
    """

    aws: Aws
    state: BakeState | None
    chef_client: ChefClient | None = None
    chef_error: str = "Chef is not used by this run"
    poll: float = 2.0
    log_fn: Callable[[str], None] = _no_log
    clock: Clock = field(default_factory=Clock)
    state_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # The bucket of the bake's S3 records (the catalogue's, for the role; None when the role is not in it),
    # and the AMIs reap leaves in place, which may point at them (``bakery_lib.records``).
    records_bucket: str | None = None
    kept_images: tuple[dict[str, Any], ...] = ()

    @property
    def role_name(self) -> str:
        return self.require_state().role

    @property
    def region(self) -> str:
        return self.require_state().region

    @property
    def poll_interval(self) -> float:
        return self.poll

    def log(self, message: str) -> None:
        self.log_fn(f"{self.role_name}: {message}")

    def sleep(self, seconds: float | None = None) -> None:
        self.clock.sleep(self.poll if seconds is None else seconds)

    def ec2(self, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call("ec2", self.region, operation, **params)

    def chef(self) -> ChefClient:
        if self.chef_client is None:
            raise BakeryError(self.chef_error)
        return self.chef_client

    def require_state(self) -> BakeState:
        if self.state is None:
            raise BakeryError("no bake record to tear down")
        return self.state

    def save(self) -> None:
        """Nothing to write: the bake lives in no workspace."""
