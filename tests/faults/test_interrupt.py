"""Interruption: what Jenkins' abort (SIGTERM), a dead agent (SIGKILL) and a Chef outage leave behind.

- SIGTERM during ``bootstrap`` and during ``wait-image`` (the image is held ``pending`` by the proxy),
  in ``bakery bake`` and in ``bakery stage``: the process exits within 30 s; ``bake`` cleans up by
  itself, a stage fails with a JUnit ``Interrupted`` failure and ``bakery cleanup`` (``post { always }``)
  removes the rest.
- SIGKILL at every stage that owns something, including the worst moments: a create call carried
  out by AWS whose answer never reached the bakery (the id is not in the state). Then ``bakery
  cleanup`` in the same workspace, or ``bakery reap`` from an empty one (the agent is gone), must
  leave no instance, no pending image, no orphan snapshot and no Chef node/client.
- The Chef server unreachable at ``chef-cleanup`` (a gate in front of the session's goiardi is
  closed; goiardi itself keeps running): a clear failure; once Chef is back, ``bakery cleanup`` or
  ``bakery reap`` finishes the job.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.bakes import (
    RELEASE,
    Census,
    FaultTable,
    SimulatedBoot,
    bakery,
    check_state,
    cli_env,
    junit_case,
    leftover_text,
    popen_bakery,
    prepare,
    read_state,
    stage_status,
    wait_for,
)
from support.proxy import FaultProxy, Hold, Rewrite

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EXIT_WITHIN = 30.0
PENDING = Rewrite("DescribeImages", "<imageState>available</imageState>", "<imageState>pending</imageState>")



def pending_rewrite(*, after: str | None = "CreateImage") -> Rewrite:
    """DescribeImages answers ``pending`` for what moto already made available (once CreateImage
    went through this proxy, so that preflight's base AMI still looks available)."""
    return Rewrite(PENDING.operation, PENDING.find, PENDING.replace, after=after)


def sigterm_and_time(proc) -> tuple[float, str, str]:
    """SIGTERM, then the process's output once it exited. Past ``EXIT_WITHIN`` the test fails (a guard,
    not a measure: an uninterrupted wait would run to its stage timeout, minutes away). The time taken
    is only reported (the fault table)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running {EXIT_WITHIN:.0f} s after SIGTERM: the wait was not interrupted\n{err}")
    return time.monotonic() - t0, out, err


def next_poll(proxy: FaultProxy, operation: str, proc) -> None:
    """Wait for one more ``operation`` through the proxy: the process is polling inside its wait."""
    seen = sum(c.operation == operation for c in proxy.calls_since())
    wait_for(lambda: sum(c.operation == operation for c in proxy.calls_since()) > seen,
             f"a {operation} poll inside the wait", proc=proc)


# --- SIGTERM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bake", "stage"])
@pytest.mark.parametrize("stage", ["bootstrap", "wait-image"])
def test_sigterm_stops_within_30s_and_nothing_is_left(devstack, proxy, tmp_path: Path, stage: str, mode: str):
    role = f"term-{mode}-{stage}"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    env = cli_env(devstack, proxy.url)
    if stage == "wait-image":
        # Stage mode: set-up ran in process, so the stage process's first DescribeImages is the wait's.
        proxy.add(pending_rewrite(after="CreateImage" if mode == "bake" else None))
    # bootstrap: the instance registers with Chef and then never finishes its run.
    with SimulatedBoot(devstack, [role], finish=stage != "bootstrap"):
        if mode == "bake":
            proc = popen_bakery(env, ws, catalog, "bake", "--role", role, "--release", RELEASE)
        else:
            prepare(devstack, ws, catalog, role, stage)
            proc = popen_bakery(env, ws, catalog, "stage", stage, "--role", role)
        wait_for(lambda: stage_status(ws, role, stage) == "running", f"stage {stage} to start", proc=proc)
        if stage == "bootstrap":
            node = read_state(ws, role)["chef_node"]
            wait_for(lambda: devstack.goiardi.client().node_exists(node), "the instance to register with Chef")
        next_poll(proxy, "DescribeInstances" if stage == "bootstrap" else "DescribeImages", proc)
        took, out, err = sigterm_and_time(proc)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "received SIGTERM" in err
    failure = junit_case(ws, role, stage).find("failure")
    assert failure is not None and failure.get("type") == "Interrupted"
    state = read_state(ws, role)
    image_id = state.get("image_id")
    if mode == "bake":
        assert junit_case(ws, role, "cleanup").find("failure") is None  # the bake cleaned up by itself
        how = "bake exits, its own cleanup ran"
    else:
        assert not state["closed"]
        # A single stage does not clean up: it says exactly what to run.
        assert f"to remove what this bake created run: bakery --workspace {ws.resolve()} cleanup --role {role}" in err
        proxy.reset()
        if stage == "wait-image":
            proxy.add(pending_rewrite(after=None))  # still pending when post { always } runs
        cleanup = bakery(env, ws, catalog, "cleanup", "--role", role)
        assert cleanup.returncode == 0, cleanup.stderr
        how = "stage exits 1 (JUnit `Interrupted`); `bakery cleanup` removed the rest"
    check_state(devstack, ws, role, closed=True)
    assert census.leaks() == []
    if stage == "wait-image":
        # The pending image was deregistered and its snapshots deleted: not kept as if it were good.
        assert image_id and not devstack.moto.client("ec2").describe_images(ImageIds=[image_id])["Images"]
        assert census.new_available_images() == []
    FaultTable.add("interrupt", f"SIGTERM during `{stage}` ({mode} mode)", f"exit after {took:.1f} s; {how}",
                   "nothing")


# --- SIGKILL -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    stage: str
    hold: str | None  # an operation carried out by moto whose answer the killed bakery never got
    remover: str  # cleanup | reap

    @property
    def id(self) -> str:
        return f"{self.stage}-{self.remover}"


# The stages that own something, alternating the remover; both removers where the bakery never heard
# of what AWS made (the answer to RunInstances / CreateImage lost with the process). (stop and
# publish own nothing that bootstrap and terminate do not: the instance, resp. an available AMI.)
KILL_POINTS = [
    KillPoint("launch", "RunInstances", "cleanup"),
    KillPoint("launch", "RunInstances", "reap"),
    KillPoint("bootstrap", None, "reap"),
    KillPoint("image", "CreateImage", "cleanup"),
    KillPoint("image", "CreateImage", "reap"),
    KillPoint("wait-image", None, "cleanup"),
    KillPoint("terminate", "TerminateInstances", "reap"),
]


@pytest.mark.parametrize("point", KILL_POINTS, ids=lambda p: p.id)
def test_sigkill_then_cleanup_or_reap_removes_everything(devstack, proxy, tmp_path: Path, point: KillPoint):
    role = f"kill-{point.id}"
    ws = tmp_path / "ws"
    # A short expiry lets `reap` (which only takes bake instances past bakery:expires-at) act at once.
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux", "bake_ttl": "1s"}})
    census = Census.take(devstack)
    env = cli_env(devstack, proxy.url)
    hold = Hold(point.hold) if point.hold else None
    if hold:
        proxy.add(hold)
    if point.stage in ("image", "wait-image"):
        proxy.add(pending_rewrite())  # AWS takes minutes to make an image: it is pending when killed
    with SimulatedBoot(devstack, [role], finish=point.stage != "bootstrap"):
        proc = popen_bakery(env, ws, catalog, "bake", "--role", role, "--release", RELEASE)
        if hold:
            wait_for(hold.reached.is_set, f"{point.hold} to be carried out", proc=proc)
        else:
            wait_for(lambda: stage_status(ws, role, point.stage) == "running", f"stage {point.stage}", proc=proc)
            if point.stage == "bootstrap":
                node = read_state(ws, role)["chef_node"]
                wait_for(lambda: devstack.goiardi.client().node_exists(node), "the instance to register with Chef")
        proc.kill()
        proc.communicate()
    state = read_state(ws, role)  # a kill never leaves a torn state file
    assert state["stages"][point.stage]["status"] == "running"
    if point.stage != "publish":  # at publish only the open state is left (instance, Chef: done)
        assert census.leaks(), "the kill should have left something to remove"
    proxy.reset()
    if point.stage in ("image", "wait-image"):
        proxy.add(pending_rewrite(after=None))  # AWS is still making the image when the remover runs
    if point.remover == "cleanup":
        proc2 = bakery(env, ws, catalog, "cleanup", "--role", role)
        check = lambda: check_state(devstack, ws, role, closed=True)  # noqa: E731
    else:
        time.sleep(1.1)  # past bakery:expires-at
        empty = tmp_path / "elsewhere"
        empty.mkdir()
        # Scoped to this bake (the id an operator reads in the build log): the session's moto is shared,
        # and an account-wide sweep would also meet other tests' bakes in the middle of their work.
        proc2 = bakery(env, empty, catalog, "reap", "--older-than", "0", "--bake-id", state["bake_id"])
        check = lambda: None  # noqa: E731  (no workspace: nothing to check there)
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert "Traceback" not in proc2.stderr
    check()
    leaks = census.leaks()
    assert leaks == [], f"left after SIGKILL at {point.stage} + {point.remover}: {leaks}"
    kept = census.new_available_images()
    if point.stage in ("image", "wait-image"):
        assert kept == [], "the pending image must be deregistered, not kept"
    tried = f"SIGKILL during `{point.stage}`" + (f" (after {point.hold} was carried out, before its answer)"
                                                  if point.hold else "")
    remover = "`bakery cleanup` in the workspace" if point.remover == "cleanup" else "`bakery reap` without a workspace"
    FaultTable.add("interrupt", tried, f"{remover} exit 0",
                   leftover_text(leaks) + (" (kept: the available AMI)" if kept else ""))


# --- Chef down at chef-cleanup ----------------------------------------------------------------------------


@pytest.fixture()
def chef_gate(devstack) -> Iterator[FaultProxy]:
    """A gate in front of the session's goiardi: ``stop()`` makes Chef unreachable, ``start(port)`` back."""
    gate = FaultProxy(devstack.goiardi.url).start()
    yield gate
    gate.stop()


def test_chef_down_at_chef_cleanup_stage_then_cleanup_finishes(devstack, chef_gate: FaultProxy, tmp_path: Path):
    role = "chef-down-stage"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    state = prepare(devstack, ws, catalog, role, "chef-cleanup")
    assert state is not None
    node = state["chef_node"]
    env = cli_env(devstack, CHEF_SERVER_URL=chef_gate.url)
    chef_gate.down()

    proc = bakery(env, ws, catalog, "stage", "chef-cleanup", "--role", role)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"Chef server {chef_gate.url} unreachable" in proc.stderr
    assert junit_case(ws, role, "chef-cleanup").find("failure") is not None
    down = bakery(env, ws, catalog, "cleanup", "--role", role)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert f"NOT REMOVED: Chef node/client {node}" in down.stderr and f"knife node delete {node} -y" in down.stderr
    assert devstack.goiardi.client().node_exists(node)
    assert not check_state(devstack, ws, role)["closed"]

    chef_gate.up()
    up = bakery(env, ws, catalog, "cleanup", "--role", role)
    assert up.returncode == 0, up.stderr
    check_state(devstack, ws, role, closed=True)
    assert census.leaks() == []
    FaultTable.add("interrupt", "Chef server unreachable at `chef-cleanup` (stage mode)",
                   "stage exits 1 \"Chef server … unreachable\"; `bakery cleanup` exits 1 naming the node and the "
                   "knife command; once Chef is back `bakery cleanup` exits 0", "nothing")


def test_chef_down_at_chef_cleanup_in_bake_then_reap_finishes(devstack, proxy: FaultProxy, chef_gate: FaultProxy,
                                                               tmp_path: Path):
    role = "chef-down-bake"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    env = cli_env(devstack, proxy.url, CHEF_SERVER_URL=chef_gate.url)
    # Chef goes away while the instance is being terminated, i.e. just before chef-cleanup.
    gate_down = Hold("TerminateInstances", callback=chef_gate.down)
    gate_down.release.set()
    proxy.add(gate_down)
    with SimulatedBoot(devstack, [role]):
        proc = bakery(env, ws, catalog, "bake", "--role", role, "--release", RELEASE)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "chef-cleanup: Chef server" in proc.stdout and "unreachable" in proc.stdout
    node = read_state(ws, role)["chef_node"]
    assert devstack.goiardi.client().node_exists(node)

    chef_gate.up()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reap = bakery(env, elsewhere, catalog, "reap", "--older-than", "0")
    assert reap.returncode == 0, reap.stdout + reap.stderr
    assert f"chef-node {node}: deleted" in reap.stdout
    leaks = census.leaks()
    assert leaks == []
    FaultTable.add("interrupt", "Chef server unreachable at `chef-cleanup` (bake mode)",
                   "bake exits 1 naming Chef; the AMI is kept; once Chef is back `bakery reap` (no workspace) "
                   "deletes the node and client", leftover_text(leaks) + " (kept: the available AMI)")
