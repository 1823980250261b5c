"""THE wait of the bakery: every loop that waits for AWS (or anything else) goes through :func:`wait_for`.

One helper so that every wait has the same four properties:

- a deadline (``timeout``): past it, ``on_timeout(elapsed, last)`` says what to do (it returns the
  exception to raise, e.g. a :class:`~bakery_lib.errors.StageTimeout` naming the catalogue key);
- an interval between polls, slept on the bake's :class:`~bakery_lib.aws.Clock`, so a SIGTERM/SIGINT
  (the clock's cancel event) ends the wait within the moment and tests can inject time;
- a heartbeat: about once a minute one log line with the elapsed time, what is being waited for, its
  current state and (through ``detail``) e.g. the instance's last console line, so a Jenkins console is
  never silent for 45 minutes;
- eventual consistency (AWS "EC2 API eventual consistency"): right after our own Create/Run/Copy call
  succeeded, describe-by-id may answer NotFound and describe-by-filter may omit the resource for a
  few seconds, longer under load. ``probe`` returning ``None`` therefore means "gone" only once the
  resource was seen at least once (``seen``), or when it has stayed absent for ``absent_grace``
  seconds (well beyond normal propagation); before that the wait keeps polling;
- flicker (the same page: a describe can be answered from a replica that has not caught up): a
  resource seen and then missing from one describe is seen again in the next. Once seen, it is gone
  only after ``gone_after`` polls in a row without it (counted, not timed: a slow machine makes the
  polls late, never fewer). A state seen earlier than one already seen (``pending`` after
  ``available``) is what ``check`` gets, and each wait's ``check`` acts only on the state it waits
  for, so a step back only means one more poll.

``probe()`` returns the resource (or ``None`` when absent); ``check(resource)`` returns the wait's
result when it is done, ``None`` to keep waiting, or raises to fail it. ``status(resource)`` is the
short state shown in heartbeats. Each poll round is counted, by the wait itself: ``Wait.rounds``, and
``clock.rounds`` (a :class:`~bakery_lib.clock.PollRounds` the bakes of a process share) by ``what``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .clock import Clock
from .errors import AwsError, BakeryError, StageTimeout

T = TypeVar("T")
R = TypeVar("R")

# Default poll interval (settings.DEFAULT_POLL_INTERVAL; BAKERY_POLL_INTERVAL overrides it). Polls are
# batched (one Describe per region for every bake of the process, see aws.Batcher), so a short interval
# costs about one call per region every 2 s however many bakes run, and a wait notices within ~2 s.
DEFAULT_INTERVAL = 2.0
HEARTBEAT_EVERY = 60.0
# How long a resource we just created may stay invisible before it counts as gone. AWS documents no
# bound; its EC2 guide advises describing with back-off "starting with a couple of seconds" and
# "up to a few minutes". Five minutes never mistakes propagation for a deletion, and a real deletion
# right after a create (rare: it was never seen) costs a bake at most that long.
ABSENT_GRACE = 300.0
# Once seen, a resource missing from this many polls in a row is gone (fewer: flicker, see above).
GONE_AFTER = 3


class Gone(BakeryError):
    """The resource waited for no longer exists (it was seen, or stayed absent beyond the grace)."""


@dataclass
class Wait(Generic[T, R]):
    """One wait; see the module docstring. ``log`` gets heartbeat and state-change lines."""

    what: str
    clock: Clock
    log: Callable[[str], None]
    timeout: float
    interval: float = DEFAULT_INTERVAL
    heartbeat: float = HEARTBEAT_EVERY
    absent_grace: float = ABSENT_GRACE
    seen: bool = False
    status: Callable[[T], str] | None = None
    detail: Callable[[], str] | None = None
    on_timeout: Callable[[float, T | None], BaseException] | None = None
    gone_message: str = ""
    gone_after: int = GONE_AFTER
    # Poll rounds this wait made (one probe each); every round is counted on ``clock.rounds`` too.
    rounds: int = 0
    missing: int = 0  # polls in a row without the resource

    def run(self, probe: Callable[[], T | None], check: Callable[[T], R | None]) -> R:
        start = self.clock.now()
        deadline = start + self.timeout
        next_beat = start + self.heartbeat
        last: T | None = None
        shown = ""
        while True:
            self.clock.check()
            self.rounds += 1
            self.clock.rounds.count(self.what)
            found = probe()
            now = self.clock.now()
            if found is None:
                self.missing += 1
                self._absent(now - start)
            else:
                self.seen = True
                self.missing = 0
                last = found
                result = check(found)
                if result is not None:
                    return result
                current = self.status(found) if self.status else ""
                if current and current != shown:
                    self.log(f"{self.what}: {current}")
                    shown = current
            if now >= deadline:
                raise self._timeout(now - start, last)
            if now >= next_beat:
                self._beat(now - start, last)
                next_beat = now + self.heartbeat
            self.clock.sleep(max(0.01, min(self.interval, deadline - now)))

    def _absent(self, elapsed: float) -> None:
        # Never "gone" in the first seconds after our own create: AWS answers NotFound/omits a new
        # resource until it has propagated. Once seen, absence from several polls in a row is real (a
        # deregistration, a reaper); from fewer it is a replica behind (flicker).
        if (self.seen and self.missing >= self.gone_after) or elapsed >= self.absent_grace:
            raise Gone(self.gone_message or f"{self.what}: it no longer exists")

    def _timeout(self, elapsed: float, last: T | None) -> BaseException:
        if self.on_timeout is not None:
            return self.on_timeout(elapsed, last)
        return StageTimeout(f"{self.what}: still waiting after {elapsed:.0f} s")

    def _beat(self, elapsed: float, last: T | None) -> None:
        state = (self.status(last) if self.status and last is not None else "not visible yet")
        extra = ""
        if self.detail is not None:
            try:
                extra = self.detail().strip()
            except BakeryError as exc:  # a heartbeat must never fail the wait
                extra = f"({exc})"
        line = f"still waiting for {self.what}: {_minutes(elapsed)} elapsed, {state}"
        if extra:
            line += f"; last console line: {extra.splitlines()[-1][:200]}"
        self.log(line)


def wait_for(probe: Callable[[], T | None], check: Callable[[T], R | None], **settings: object) -> R:
    """``Wait(**settings).run(probe, check)``: the one-call form."""
    return Wait(**settings).run(probe, check)  # type: ignore[arg-type]


def _minutes(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# How long a call on a resource we just created may answer NotFound before that is believed.
PROPAGATION_GRACE = 60.0
# The codes of a resource not yet propagated: ``InvalidAMIID.NotFound``... and a launch template's new
# version (``InvalidLaunchTemplateId.VersionNotFound``).
NOT_YET_PROPAGATED = (".NotFound", ".VersionNotFound")


def while_propagating(call: Callable[[], R], *, what: str, clock: Clock, log: Callable[[str], None],
                      grace: float = PROPAGATION_GRACE) -> R:
    """``call()``, retried while it answers ``*.NotFound`` for a resource we created moments ago.

    AWS: CreateTags, ModifyImageAttribute, AuthorizeSecurityGroupIngress... on a resource just returned
    by a Create/Run/Copy call can fail with ``InvalidAMIID.NotFound``, ``InvalidSnapshot.NotFound``,
    ``InvalidInstanceID.NotFound``, ``InvalidGroup.NotFound`` until it has propagated (EC2 API eventual
    consistency); ModifyLaunchTemplate making a version CreateLaunchTemplateVersion just answered the
    default, ``InvalidLaunchTemplateId.VersionNotFound``. Retried with a growing pause for ``grace`` seconds; any other error, or NotFound
    beyond the grace, is raised as it came.
    """
    start = clock.now()
    delay = 0.5
    while True:
        try:
            return call()
        except AwsError as exc:
            if not exc.code.endswith(NOT_YET_PROPAGATED) or clock.now() - start + delay > grace:
                raise
            log(f"{what}: {exc.code} right after creating it (AWS propagation); retrying in {delay:.1f} s")
            clock.sleep(delay)
            delay = min(delay * 2, 8.0)
