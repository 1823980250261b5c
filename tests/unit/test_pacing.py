"""Pacing on the injected clock: the batched Describe calls, the waits' poll rounds, aborts.

- N bakes asking the same Batcher in the same poll round share one fetch (a barrier makes them
  concurrent, an injected clock makes the round exact: no wall time is measured).
- Every sleep of the bakery is on the asking bake's ``Clock``: an abort (the cancel event) ends a
  Batcher's fetch gap, a teardown's or prune's pause, at once.
- A wait counts its own poll rounds (``Wait.rounds``, and ``clock.rounds`` shared by a process).
"""

from __future__ import annotations

import threading

import pytest

from bakery_lib.aws import Batcher
from bakery_lib.clock import Clock, Pace, PollRounds
from bakery_lib.errors import Interrupted
from bakery_lib.waits import Wait

# Generous bound for a thread to end after its abort: a thread still sleeping its 10-minute gap fails it.
JOIN = 60.0


class FrozenClock(Clock):
    """Time moves only when the test moves it; a sleep that is not aborted is a test failure."""

    def __init__(self, cancel: threading.Event | None = None) -> None:
        super().__init__(cancel)
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def pause(self, seconds: float) -> bool:
        raise AssertionError(f"slept {seconds} s during a poll round")


class Fetches:
    """A fetch that answers every key and records which keys each call asked for."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def __call__(self, region: str, keys: list[str]) -> dict[str, str]:
        with self._lock:
            self.calls.append(sorted(keys))
        return {k: f"{k}@{region}" for k in keys}


def test_concurrent_askers_get_one_fetch_per_round() -> None:
    clock, fetch = FrozenClock(), Fetches()
    interval, askers, rounds = 2.0, 8, 3
    batcher = Batcher(fetch, min_gap=1.5, clock=clock)
    keys = [f"i-{n:02d}" for n in range(askers)]
    for key in keys:  # each bake's first poll registers its key (one fetch each, as they come)
        clock.t += interval
        assert batcher.get("eu-west-1", key, max_age=interval * 0.9) == f"{key}@eu-west-1"
    fetch.calls.clear()
    start, end = threading.Barrier(askers + 1), threading.Barrier(askers + 1)
    answers: dict[str, list[str]] = {k: [] for k in keys}

    def bake(key: str) -> None:
        for _ in range(rounds):
            start.wait()
            answers[key].append(batcher.get("eu-west-1", key, max_age=interval * 0.9))
            end.wait()

    threads = [threading.Thread(target=bake, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    per_round = []
    for _ in range(rounds):
        clock.t += interval  # the next poll round: every cached answer is now too old
        before = len(fetch.calls)
        start.wait()
        end.wait()
        per_round.append(fetch.calls[before:])
    for t in threads:
        t.join(JOIN)
    assert per_round == [[keys]] * rounds  # one fetch per round, for every bake's key
    assert answers == {k: [f"{k}@eu-west-1"] * rounds for k in keys}


class Noting(Clock):
    """A real clock that says when its owner starts sleeping (so the test aborts a sleep, not a run)."""

    def __init__(self) -> None:
        super().__init__(threading.Event())
        self.sleeping = threading.Event()

    def pause(self, seconds: float) -> bool:
        self.sleeping.set()
        return super().pause(seconds)


def _abort_while_sleeping(clock: Noting, work) -> BaseException | None:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert clock.sleeping.wait(JOIN), "never slept"
    clock.cancel.set()
    thread.join(JOIN)
    assert not thread.is_alive(), "the abort did not end the sleep"
    return raised[0] if raised else None


def test_an_abort_during_a_batcher_gap_returns_promptly() -> None:
    fetch = Fetches()
    batcher = Batcher(fetch, min_gap=600.0)  # the next fetch of the region may start in 10 minutes
    batcher.get("eu-west-1", "i-1", max_age=600.0)
    bake = Noting()
    # A key not cached yet waits for the gap (at most its own max_age), on the asking bake's clock.
    raised = _abort_while_sleeping(bake, lambda: batcher.get("eu-west-1", "i-2", max_age=600.0, clock=bake))
    assert isinstance(raised, Interrupted), raised
    assert fetch.calls == [["i-1"]]  # nothing fetched for the aborted bake
    assert batcher.get("eu-west-1", "i-1", max_age=600.0) == "i-1@eu-west-1"  # the others carry on


def test_an_abort_during_a_batching_window_returns_promptly() -> None:
    fetch = Fetches()
    batcher = Batcher(fetch, linger=600.0)
    bake = Noting()
    raised = _abort_while_sleeping(bake, lambda: batcher.get("eu-west-1", "r", clock=bake))
    assert isinstance(raised, Interrupted) and fetch.calls == []


def test_an_abort_ends_a_paced_pause() -> None:
    # The removal executor's pause between tries (cleanup, reap's teardowns, prune) is a Pace's.
    clock = Noting()
    pace = Pace(clock, poll=600.0)
    assert isinstance(_abort_while_sleeping(clock, pace.sleep), Interrupted)


def test_a_wait_counts_its_poll_rounds() -> None:
    rounds = PollRounds()
    seen: list[str] = []
    rounds.add_hook(seen.append)

    class Stepping(Clock):
        def __init__(self) -> None:
            super().__init__(rounds=rounds)
            self.t = 0.0

        def now(self) -> float:
            return self.t

        def pause(self, seconds: float) -> bool:
            self.t += seconds
            return False

    answers = iter(["pending", "pending", "pending", "available"])
    wait: Wait[str, str] = Wait(what="image ami-1", clock=Stepping(), log=lambda _m: None, timeout=60, interval=2.0)
    assert wait.run(lambda: next(answers), lambda s: s if s == "available" else None) == "available"
    assert wait.rounds == 4
    assert rounds.counts == {"image ami-1": 4} and rounds.total == 4 and seen == ["image ami-1"] * 4


def test_bakes_of_one_process_count_rounds_in_one_place() -> None:
    from bakery_lib.aws import Aws

    aws = Aws()
    one, two = Clock(rounds=aws.rounds), Clock(rounds=aws.rounds)
    for clock, what in ((one, "a"), (two, "b"), (two, "b")):
        Wait(what=what, clock=clock, log=lambda _m: None, timeout=1).run(lambda: "x", lambda r: r)
    assert aws.rounds.counts == {"a": 1, "b": 2}


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_a_pause_of_nothing_does_not_block(seconds: float) -> None:
    Clock().sleep(seconds)
