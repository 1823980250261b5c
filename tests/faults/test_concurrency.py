"""Concurrency: two bakes of one role at the same time, and what keeps the state and AMI names whole.

- A bake of the role is in flight (workspace A, stuck in bootstrap): a second bake of the same role
  from workspace B refuses clearly (``bakery bake`` and ``bakery stage preflight``), naming the
  other bake's instance; in workspace A itself the per-role lock refuses a second process. Once A
  is gone, B bakes.
- Two bakes that pass preflight at the same moment (the proxy holds A's RunInstances until B has
  launched): A sees B's instance right after its own launch and stands down; one AMI results.
- A rerun of ``image`` after CreateImage was carried out but its answer lost (SIGKILL) adopts the
  image instead of making a second AMI: never two AMIs with one name (moto, unlike AWS, would
  accept a duplicate name, so the test counts names itself).
- A kill during a state write never leaves a torn state: the state is read back after every kill in
  ``test_interrupt`` and hammered in ``test_state.test_kill_during_writes_never_corrupts``.
"""

from __future__ import annotations

import collections
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.bakes import (
    Census,
    FaultTable,
    SimulatedBoot,
    bakery,
    check_state,
    cli_env,
    popen_bakery,
    prepare,
    read_state,
    stage_status,
    wait_for,
)
from support.proxy import FaultProxy, Hold

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture()
def proxy(devstack) -> Iterator[FaultProxy]:
    with FaultProxy(devstack.moto.url) as p:
        yield p


def role_images(devstack, role: str) -> list[dict]:
    return devstack.moto.client("ec2").describe_images(Owners=["self"], Filters=[
        {"Name": "tag:bakery:role", "Values": [role]}])["Images"]


def test_second_bake_of_a_role_in_flight_is_refused(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "conc-inflight"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    ws_a, ws_b = tmp_path / "a", tmp_path / "b"
    census = Census.take(devstack)
    env = cli_env(devstack, proxy.url)
    first = popen_bakery(env, ws_a, catalog, "bake", "--role", role, "--release", "1.0")
    try:
        wait_for(lambda: stage_status(ws_a, role, "bootstrap") == "running", "bake A in bootstrap", proc=first)
        instance = read_state(ws_a, role)["instance_id"]
        for args in (["bake", "--role", role, "--release", "2.0"],
                     ["stage", "preflight", "--role", role, "--release", "2.0"]):
            proc = bakery(env, ws_b, catalog, *args)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            text = proc.stdout + proc.stderr
            assert f"another bake of role '{role}' is in flight: instance {instance}" in text
            # What to do about it: a command that works from any workspace (what it removes: test_lifecycle).
            bake_a = read_state(ws_a, role)["bake_id"]
            assert "release 1.0" in text and f"bakery cleanup --bake-id {bake_a}" in text
        assert not (ws_b / ".bakery" / f"{role}.json").exists()  # B opened no bake
        # The same workspace: the role's lock refuses a second process outright.
        same = bakery(env, ws_a, catalog, "stage", "bootstrap", "--role", role)
        assert same.returncode == 2 and "another bakery process is working on role" in same.stderr
        # The advised command, run from the other workspace, removes the bake in flight.
        advised = bakery(env, ws_b, catalog, "cleanup", "--bake-id", bake_a)
        assert advised.returncode == 0, advised.stderr + advised.stdout
        assert f"instance {instance}: terminated" in advised.stdout
        state = devstack.moto.client("ec2").describe_instances(InstanceIds=[instance])
        assert state["Reservations"][0]["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")
        first.communicate(timeout=60)  # bake A notices its instance is gone, fails and cleans up
        assert first.returncode == 1
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
            first.communicate(timeout=60)
    assert census.leaks() == []
    with SimulatedBoot(devstack, [role]):
        again = bakery(env, ws_b, catalog, "bake", "--role", role, "--release", "2.0")
    assert again.returncode == 0, again.stderr
    FaultTable.add("concurrency", "a second bake of a role while one is in flight (other workspace; same "
                   "workspace)", "refused, exit 1 naming the other bake's instance and release (same workspace: "
                   "exit 2, role locked); bakes once the first is gone", "nothing")


def test_two_bakes_racing_past_preflight_leave_one_ami(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "conc-race"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    ws_a, ws_b = tmp_path / "a", tmp_path / "b"
    census = Census.take(devstack)
    env = cli_env(devstack, proxy.url)
    hold = Hold("RunInstances", forward_first=False)  # A has passed preflight, B has not started
    proxy.add(hold)
    a = popen_bakery(env, ws_a, catalog, "bake", "--role", role, "--release", "1.0")
    wait_for(hold.reached.is_set, "bake A to reach RunInstances", proc=a)
    b = popen_bakery(env, ws_b, catalog, "bake", "--role", role, "--release", "1.0")
    try:
        wait_for(lambda: stage_status(ws_b, role, "bootstrap") == "running", "bake B in bootstrap", proc=b)
        hold.release.set()  # now A launches too, while B is in flight
        out_a, err_a = a.communicate(timeout=120)
        assert a.returncode == 1 and "Traceback" not in err_a, err_a
        assert f"another bake of role '{role}' launched at the same time" in out_a
        assert read_state(ws_a, role)["stages"]["launch"]["status"] == "failed"
        check_state(devstack, ws_a, role, closed=True)  # A cleaned up after itself
        with SimulatedBoot(devstack, [role]):
            out_b, err_b = b.communicate(timeout=120)
        assert b.returncode == 0, err_b
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.communicate()
    images = role_images(devstack, role)
    assert len(images) == 1 and images[0]["ImageId"] == read_state(ws_b, role)["amis"][devstack.region]
    assert census.leaks() == []
    FaultTable.add("concurrency", "two bakes of one role pass preflight at the same moment (two workspaces)",
                   "the later launcher stands down (exit 1, names the other bake) and cleans up; the other "
                   "bakes: one AMI", "nothing")


def test_rerun_after_a_lost_create_image_answer_makes_no_second_ami(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "conc-image"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    prepare(devstack, ws, catalog, role, "image")
    env = cli_env(devstack, proxy.url)
    hold = Hold("CreateImage")  # carried out by "AWS"; the answer never reaches the killed bakery
    proxy.add(hold)
    proc = popen_bakery(env, ws, catalog, "stage", "image", "--role", role)
    wait_for(hold.reached.is_set, "CreateImage", proc=proc)
    proc.kill()
    proc.communicate()
    assert read_state(ws, role)["image_id"] is None  # the bakery never heard of the image
    proxy.reset()
    again = bakery(env, ws, catalog, "stage", "image", "--role", role)
    assert again.returncode == 0 and "already exists" in again.stdout, again.stdout + again.stderr
    assert bakery(env, ws, catalog, "stage", "wait-image", "--role", role).returncode == 0
    names = collections.Counter(i["Name"] for i in role_images(devstack, role))
    assert len(names) == 1 and set(names.values()) == {1}, names
    assert bakery(env, ws, catalog, "cleanup", "--role", role).returncode == 0
    assert census.leaks() == []
    FaultTable.add("concurrency", "`image` rerun after CreateImage was carried out but its answer lost (SIGKILL)",
                   "the rerun adopts the image by its bakery:bake-id tag: one AMI, one name", "nothing")

