"""The heartbeat of live bakes: a ``bakery:heartbeat`` tag (UTC time) refreshed while the process lives.

A bake killed with ``kill -9`` (an agent lost, a Jenkins node rebooted) leaves its instance running
until ``bakery:expires-at`` (hours later): until then ``reap`` could not tell it from a bake in
progress, and the role's next bake was refused. With a heartbeat, ``reap`` treats a bake whose tag
is older than ``DEAD_AFTER`` (a few beats missed) as dead and removes it, saying so.

One ``Heartbeat`` per process, shared by every bake it runs: each beat is one ``CreateTags`` call per
region for all the live bake instances of the process (a 200-role bake makes a handful of calls per
minute, not 200). A bake kept with ``--keep-on-failure`` is tagged ``kept``: no heartbeat, so its
expiry (not a missed beat) decides when reap may remove it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..errors import BakeryError
from .durations import iso

if TYPE_CHECKING:
    from ..aws import Aws
    from ..state import BakeState

HEARTBEAT_TAG = "bakery:heartbeat"
INTERVAL = 60.0
# Dead after this many intervals without a beat: generous for a loaded agent or throttled CreateTags.
MISSED_BEATS = 5
DEAD_AFTER = MISSED_BEATS * INTERVAL
KEPT = "kept"


class HasState(Protocol):
    """A bake's context: its record is replaced as stages run (each stage reloads it), so it is read at each beat."""

    state: BakeState | None


class Heartbeat:
    """``track(ctx)`` while a bake runs; ``beat()`` tags every tracked live bake instance, per region."""

    def __init__(self, aws: Aws, *, interval: float = INTERVAL, now: Callable[[], float] = time.time,
                 log: Callable[[str], None] | None = None):
        self.aws = aws
        self.interval = interval
        self.now = now
        self.log = log
        self._lock = threading.Lock()
        self._bakes: dict[int, HasState] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, bake: HasState) -> None:
        with self._lock:
            self._bakes[id(bake)] = bake

    def untrack(self, bake: HasState) -> None:
        with self._lock:
            self._bakes.pop(id(bake), None)

    def live(self) -> dict[str, list[str]]:
        """Region -> the tracked bakes' instances that are not terminated."""
        by_region: dict[str, list[str]] = {}
        with self._lock:
            states = [b.state for b in self._bakes.values()]
        for s in states:
            if s is not None and s.instance_id and not s.instance_terminated and not s.closed:
                by_region.setdefault(s.region, []).append(s.instance_id)
        return {r: sorted(set(ids)) for r, ids in by_region.items()}

    def beat(self) -> int:
        """One beat: one CreateTags per region. Returns the number of instances tagged. Never raises."""
        stamp = iso(self.now())
        tagged = 0
        for region, ids in self.live().items():
            tagged += self._tag(region, ids, stamp)
        return tagged

    def mark_kept(self, region: str, instance_id: str) -> None:
        """A bake kept for debugging: no heartbeat from now on; its expiry decides."""
        self._tag(region, [instance_id], KEPT)

    def _tag(self, region: str, ids: list[str], value: str) -> int:
        try:
            self.aws.call("ec2", region, "CreateTags", Resources=ids, Tags=[{"Key": HEARTBEAT_TAG, "Value": value}])
        except BakeryError as exc:  # a missed beat is not a failed bake: the next one tries again
            if self.log is not None:
                self.log(f"heartbeat of {', '.join(ids)} in {region} not sent: {exc}")
            return 0
        return len(ids)

    # --- the beating thread of a CLI process ---------------------------------------------------------
    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
