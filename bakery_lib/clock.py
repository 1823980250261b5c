"""Time and sleep for every loop of the bakery, on one injectable ``Clock`` per bake.

- ``Clock``: ``now()`` (monotonic) and ``sleep(seconds)``, which waits on the bake's cancel event, not
  on a timer: a SIGTERM/SIGINT (the CLI sets the event) ends any sleep at once with ``Interrupted``.
  A test injects time by overriding ``now`` and ``pause`` (the one blocking call).
- ``Pace``: what a loop that retries or polls needs from its caller (the removal executor, prune,
  reap's teardowns): the clock to sleep on, the poll interval (``BAKERY_POLL_INTERVAL``) and a log.
- ``PollRounds``: every poll round of every wait, counted by the wait itself (``waits.Wait``), so a
  test can say "one call per poll round" instead of dividing wall time by the interval.

The batched Describe calls (``aws.Batcher``) sleep on the asking bake's clock too: an abort during a
batching window or a fetch gap returns at once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Interrupted

INTERRUPTED = "interrupted (SIGTERM/SIGINT): stopping and cleaning up"
DEFAULT_POLL = 2.0


class PollRounds:
    """Poll rounds of waits (thread safe): ``counts`` by the wait's ``what``, ``total``, and hooks.

    A hook is called in the polling thread with the wait's ``what`` on every round (like the AWS
    call hooks: a test that knows which stage its thread runs can count rounds per stage)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self._hooks: list[Callable[[str], None]] = []

    def add_hook(self, hook: Callable[[str], None]) -> None:
        with self._lock:
            self._hooks.append(hook)

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1
            hooks = list(self._hooks)
        for hook in hooks:
            hook(what)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


class Clock:
    """Sleep and time, injectable so waits are testable; sleeps end early when ``cancel`` is set.

    ``rounds``: where the waits on this clock count their poll rounds (the bakes of one process share
    the ``Aws`` object's, ``aws.rounds``)."""

    def __init__(self, cancel: threading.Event | None = None, *, rounds: PollRounds | None = None):
        self.cancel = cancel or threading.Event()
        self.rounds = rounds if rounds is not None else PollRounds()

    def now(self) -> float:
        return time.monotonic()

    def pause(self, seconds: float) -> bool:
        """Wait up to ``seconds`` on the cancel event; True when it was set (an abort)."""
        return self.cancel.wait(max(0.0, seconds))

    def sleep(self, seconds: float) -> None:
        if self.pause(seconds):
            raise Interrupted(INTERRUPTED)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Interrupted(INTERRUPTED)


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Pace:
    """The pacing of a loop that retries or polls: sleeps on ``clock`` (an abort ends them), ``poll``
    seconds unless told otherwise; what the removal executor needs of its caller (``stages.base.Paced``)."""

    clock: Clock = field(default_factory=Clock)
    poll: float = DEFAULT_POLL
    log_fn: Callable[[str], None] = _quiet

    @property
    def poll_interval(self) -> float:
        return self.poll

    def log(self, message: str) -> None:
        self.log_fn(message)

    def sleep(self, seconds: float | None = None) -> None:
        self.clock.sleep(self.poll if seconds is None else seconds)
