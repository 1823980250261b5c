"""The one wait helper (``bakery_lib.waits``) on an injected clock: no real sleeping.

What a user sees from a wait: a heartbeat line about once a minute (elapsed time, state, the
instance's last console line), the event noticed within one poll interval, a resource absent right
after its creation waited for (not reported gone), a resource that vanished after being seen reported
gone, the timeout message, and an interrupt ending the wait.
"""

from __future__ import annotations

import threading

import pytest

from bakery_lib.aws import Clock
from bakery_lib.errors import AwsError, Interrupted, StageTimeout
from bakery_lib.waits import Gone, Wait, while_propagating


class FakeClock(Clock):
    """Time advances only by sleeping."""

    def __init__(self) -> None:
        super().__init__(threading.Event())
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.check()
        self.sleeps.append(seconds)
        self.t += seconds


def script(*answers):
    """A probe answering the given values in turn, then the last one for ever."""
    seq = list(answers)

    def probe():
        return seq.pop(0) if len(seq) > 1 else seq[0]

    return probe


def test_heartbeat_about_once_a_minute_with_state_and_console_line():
    clock, lines = FakeClock(), []
    wait = Wait(what="bakery:bootstrap on i-1", clock=clock, log=lines.append, timeout=600, interval=2.0,
                status=lambda r: r["state"], detail=lambda: "boot\nchef: converging 12/40 resources")
    states = [{"state": "running"}] * 200 + [{"state": "done"}]
    result = wait.run(script(*states), lambda r: "ok" if r["state"] == "done" else None)
    assert result == "ok"
    beats = [line for line in lines if line.startswith("still waiting")]
    assert len(beats) == 6  # 400 s of waiting: one line a minute
    assert beats[0] == ("still waiting for bakery:bootstrap on i-1: 1 min 00 s elapsed, running; "
                        "last console line: chef: converging 12/40 resources")
    assert "bakery:bootstrap on i-1: running" in lines  # the state change itself, once
    assert clock.sleeps and max(clock.sleeps) <= 2.0  # noticed within one interval


def test_absent_right_after_create_is_waited_for_then_seen():
    clock, lines = FakeClock(), []
    wait = Wait(what="image ami-1", clock=clock, log=lines.append, timeout=600, interval=1.0, absent_grace=30)
    result = wait.run(script(None, None, None, {"State": "available"}), lambda r: r["State"])
    assert result == "available" and clock.t == 3.0


def test_absent_beyond_the_grace_or_after_being_seen_is_gone():
    clock = FakeClock()
    wait = Wait(what="image ami-1", clock=clock, log=lambda _m: None, timeout=600, interval=1.0, absent_grace=5,
                gone_message="image ami-1 no longer exists (deregistered?)")
    with pytest.raises(Gone, match="no longer exists"):
        wait.run(script(None), lambda r: None)
    assert clock.t == 5.0
    clock = FakeClock()
    wait = Wait(what="i-1", clock=clock, log=lambda _m: None, timeout=600, interval=1.0)
    with pytest.raises(Gone):
        wait.run(script({"s": 1}, None), lambda r: None)
    assert wait.rounds == 1 + wait.gone_after  # seen once: absent from gone_after polls in a row is gone


def test_seen_missing_seen_again_is_flicker_not_gone():
    """A describe answered by a replica behind (EC2 eventual consistency) misses what the one before
    showed: the wait keeps polling, and a state seen earlier than one already seen is only one poll more."""
    clock, lines = FakeClock(), []
    wait = Wait(what="image ami-1", clock=clock, log=lines.append, timeout=600, interval=1.0,
                status=lambda r: r["State"])
    answers = [{"State": "pending"}, None, None, {"State": "pending"}, None, {"State": "available"}]
    assert wait.run(script(*answers), lambda r: r["State"] if r["State"] == "available" else None) == "available"
    assert wait.rounds == len(answers)


def test_timeout_message_and_interrupt():
    clock = FakeClock()
    wait = Wait(what="i-1 to stop", clock=clock, log=lambda _m: None, timeout=10, interval=3.0,
                on_timeout=lambda elapsed, last: StageTimeout(f"still {last['s']} after {elapsed:.0f} s"))
    with pytest.raises(StageTimeout, match="still stopping after 10 s"):
        wait.run(script({"s": "stopping"}), lambda r: None)
    assert clock.sleeps == [3.0, 3.0, 3.0, 1.0]  # never sleeps past the deadline
    clock = FakeClock()
    clock.cancel.set()
    with pytest.raises(Interrupted):
        Wait(what="x", clock=clock, log=lambda _m: None, timeout=10).run(script({"s": 1}), lambda r: None)


def test_while_propagating_retries_not_found_only_within_the_grace():
    clock, calls = FakeClock(), []

    def call():
        calls.append(clock.t)
        if len(calls) < 3:
            raise AwsError("CreateTags", "InvalidAMIID.NotFound", "The image id 'ami-1' does not exist")
        return "tagged"

    assert while_propagating(call, what="tagging ami-1", clock=clock, log=lambda _m: None) == "tagged"
    assert len(calls) == 3

    def denied():
        raise AwsError("CreateTags", "UnauthorizedOperation", "no")

    with pytest.raises(AwsError, match="UnauthorizedOperation"):
        while_propagating(denied, what="x", clock=FakeClock(), log=lambda _m: None)

    def missing():
        raise AwsError("TerminateInstances", "InvalidInstanceID.NotFound", "gone")

    clock = FakeClock()
    with pytest.raises(AwsError, match="NotFound"):
        while_propagating(missing, what="x", clock=clock, log=lambda _m: None, grace=20)
    assert 10 <= clock.t <= 20
