"""The real-init runner's stop: a container that does not finish its orderly shutdown is stopped forcibly,
as EC2 stops an instance whose graceful OS shutdown does not complete (nspawn: a second SIGTERM).

The container stands in here as a process that ignores the first SIGTERM (as systemd stays up when its
halt job fails) and exits on the second, so the test waits on signals, not on a clock."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import realinit
from devstack.realinit import RealInitRunner, _Instance, _terminate

STUBBORN = """
import signal, sys
seen = []
def on_term(signum, frame):
    seen.append(signum)
    print("SIGTERM", len(seen), flush=True)
    if len(seen) == 2:
        sys.exit(7)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    signal.pause()
"""


def _instance(tmp_path: Path) -> _Instance:
    inst = _Instance(iid="i-0123456789abcdef0", box=tmp_path, layers=[], kind="launch")
    inst.console.write_text("")
    return inst


def _started(script: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_stop_the_container_does_not_finish_is_forced_and_noted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(realinit, "STOP_GRACE", 0.2)
    inst = _instance(tmp_path)
    proc = _started(STUBBORN)
    inst.want_off.set()
    _terminate(proc)  # the stop: SIGTERM, which this container ignores
    code = RealInitRunner._wait_powered_off(RealInitRunner.__new__(RealInitRunner), inst, proc)
    assert code == 7
    assert proc.stdout is not None and proc.stdout.read() == "SIGTERM 1\nSIGTERM 2\n"
    assert "no orderly shutdown within 0.2 s of the stop: forcing it, as EC2 does" in inst.console.read_text()


def test_an_orderly_shutdown_is_not_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(realinit, "STOP_GRACE", 300.0)
    inst = _instance(tmp_path)
    proc = _started("import signal, sys\nprint('ready', flush=True)\nsignal.pause()\n")
    inst.want_off.set()
    _terminate(proc)
    code = RealInitRunner._wait_powered_off(RealInitRunner.__new__(RealInitRunner), inst, proc)
    assert code == -signal.SIGTERM
    assert inst.console.read_text() == ""


def test_a_container_that_powers_itself_off_is_waited_for_without_a_stop(tmp_path: Path):
    inst = _instance(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(0)"])
    assert RealInitRunner._wait_powered_off(RealInitRunner.__new__(RealInitRunner), inst, proc) == 0
    assert not inst.want_off.is_set()
