"""`bakery cleanup` under SIGTERM (issue 23, item 5): Jenkins' second abort, or `post`'s own timeout,
kills by the build's process cookie, so it reaches `post`'s `bakery cleanup` too (the pipeline harness
shows it: tests/pipeline/test_pipeline_setups.py). Cleanup must finish the removal in progress, list
what is left with the command that removes it, and exit non-zero; never die silently mid-removal.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
from support.bakes import Census, bakery, check_state, cli_env, junit_case, popen_bakery, prepare, read_state
from support.proxy import FaultProxy, Hold

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_sigterm_during_cleanup_finishes_the_removal_and_says_what_is_left(devstack, proxy: FaultProxy,
                                                                          tmp_path: Path):
    role = "term-cleanup"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    prepare(devstack, ws, catalog, role, "bootstrap")  # launched: the bake owns an instance
    instance = read_state(ws, role)["instance_id"]
    env = cli_env(devstack, proxy.url)
    hold = Hold("TerminateInstances")  # carried out by moto; its answer waits while the signal comes
    proxy.add(hold)
    proc = popen_bakery(env, ws, catalog, "cleanup", "--role", role)
    assert hold.reached.wait(120), "cleanup never asked to terminate the instance"
    calls_before = len(proxy.calls)
    proc.send_signal(signal.SIGTERM)
    announced = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "received SIGTERM" in line:
                announced.set()

    reader = threading.Thread(target=read_stderr)
    reader.start()
    assert announced.wait(60), "".join(lines)
    hold.release.set()  # the removal in progress gets its answer
    proc.wait(60)
    reader.join(10)
    err = "".join(lines)

    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "finishing the removal in progress" in err
    assert "stopped by SIGTERM after the removal in progress" in err and "not attempted" in err, err
    assert f"To remove what is left run: bakery --workspace {ws.resolve()} cleanup --role {role}" in err, err
    assert junit_case(ws, role, "cleanup").find("failure") is not None
    # the request in progress was finished; no other AWS request was made after the signal
    instances = devstack.moto.client("ec2").describe_instances(InstanceIds=[instance])["Reservations"]
    assert instances[0]["Instances"][0]["State"]["Name"] in ("shutting-down", "terminated")
    assert [c.operation for c in proxy.calls[calls_before:]] in ([], ["TerminateInstances"])
    assert not read_state(ws, role)["closed"]

    # the command it printed removes the rest
    proxy.reset()
    again = bakery(env, ws, catalog, "cleanup", "--role", role)
    assert again.returncode == 0, again.stderr
    check_state(devstack, ws, role, closed=True)
    assert census.leaks() == []
