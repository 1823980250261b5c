"""Bakes through the realism layer: AWS's timing played in front of moto (see :mod:`support.realism`).

The instances are played by the devstack instance runner executing the real bake user data (stub
``cinc-client`` registering with goiardi, the real AWS CLI; the Windows bake's EC2Launch v2 sequence
played). The runner's own view of EC2 (which instances run, their user data, the OS shutting down) goes
straight to moto -- on EC2 that is the hypervisor, not an API call -- while everything the instance
itself calls (its scripts' ``aws ec2 create-tags``, the played Windows tags) goes through the realism
proxy: on AWS an instance's CreateTags on itself right after boot can answer
``InvalidInstanceID.NotFound`` like anyone's, and the scripts' retries must cope.

- A release bake of three roles in one ``bakery bake`` (the CLI in a subprocess, talking to the proxy):
  new instances, images and groups invisible for 2 s after their create call, ``pending``/``stopping``
  transitions (an OS shutdown too), images ``pending`` for 3 s, new instance profiles refused by
  RunInstances for 3 s, a throttling storm every few seconds, and no capacity for ``t3.medium`` in either
  subnet of one role (it must fall back to its second instance type and say so). The Windows role plays
  EC2Launch v2's sequence (``generalizing``, then it stops itself). The bake must succeed with nothing
  leaked, exactly one bake instance and one image per role, and no StopInstances sent to the Windows
  instance mid-sysprep.
- A stage-by-stage bake (each stage one CLI run, as Jenkins runs them) through the same layer.
- A bake that fails right after its launch (the instance still invisible): its cleanup must not take
  ``InvalidInstanceID.NotFound`` from TerminateInstances for "already gone" and leave it running.
- Capacity that never comes back: the launch fails after trying every placement, naming them.
- Two bakes of one role launched within the propagation window: at most one carries on.
- A bake SIGKILLed right after its launch, reaped by bake id while its instance is still invisible to
  filtered describes (reap must not call the bake clean) and again once it shows (``pending``).
- A throttling storm that outlasts botocore's retries: the process-wide gate (shared by every bake of
  the process, per service and region) backs off and tries again, a bounded number of rounds.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.bakes import (
    RELEASE,
    Census,
    FaultTable,
    bakery,
    check_state,
    cli_env,
    context,
    direct_aws,
    popen_bakery,
    prepare,
    read_state,
    run_in_process,
    wait_for,
)
from support.proxy import FaultProxy, Rule
from support.realism import ManualClock, Realism

from bakery_lib.aws import STORM_ROUNDS
from bakery_lib.errors import AwsError
from bakery_lib.stages import ORDER, run_stage

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def subnets(devstack) -> list[str]:
    ec2 = devstack.moto.client("ec2")
    found = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    return [s["SubnetId"] for s in sorted(found, key=lambda s: s["AvailabilityZone"])][:2]


def bake_resources(devstack, role: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ec2 = devstack.moto.client("ec2")
    inst = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:bakery:role", "Values": [role]},
                                                       {"Name": "tag:bakery:purpose", "Values": ["bake"]}])
            ["Reservations"] for i in r["Instances"]]
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:role", "Values": [role]},
                                                           {"Name": "tag:bakery:created-by", "Values": ["bakery"]}])
    return inst, images["Images"]


def bake_instances(devstack, role: str) -> list[dict[str, Any]]:
    return [i for i in bake_resources(devstack, role)[0] if tags(i).get("bakery:purpose") == "bake"]


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


def played_by_the_instance(runner, devstack, role: str, expected: str) -> None:
    """The bake instance ran its user data to the end and tagged itself (through the realism proxy)."""
    (inst,) = bake_instances(devstack, role)
    result = runner.wait(inst["InstanceId"], timeout=30)
    assert result["exit_code"] == 0, (role, result, runner.console(inst["InstanceId"])[-2000:])
    assert tags(inst).get("bakery:bootstrap") == expected, (role, tags(inst))


def test_release_bake_of_several_roles_through_aws_timing(devstack, proxy: FaultProxy, tmp_path: Path):
    web, api, win = "rl-web", "rl-api", "rl-win"
    sub_a, sub_b = subnets(devstack)
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        web: {"platform": "linux", "ingress": [{"protocol": "tcp", "port": 443, "cidr": "10.0.0.0/8"}]},
        api: {"platform": "linux", "instance_types": ["t3.medium", "t3a.medium"], "subnet_ids": [sub_a, sub_b]},
        win: {"platform": "windows", "sysprep_timeout": "2m"},
    })
    census = Census.take(devstack)
    # The windows asserted on below are also counted in calls: an instance's first CreateTags on itself
    # and the first RunInstances with a new profile are refused however late they come.
    realism = Realism(storm_every=4.0, storm_length=1.0, storm_share=2,
                      no_capacity={("t3.medium", sub_a), ("t3.medium", sub_b)},
                      invisible_calls={"CreateTags": 1}, iam_calls=1)
    proxy.realism = realism
    ws = tmp_path / "ws"
    with devstack.runner(tmp_path / "instances", instance_endpoint=proxy.url) as runner:
        proc = bakery(cli_env(devstack, proxy.url), ws, catalog, "bake", "--role", web, "--role", api,
                      "--role", win, "--release", RELEASE, "--jobs", "3", timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        for role in (web, api):
            played_by_the_instance(runner, devstack, role, "succeeded")
        played_by_the_instance(runner, devstack, win, "generalizing")
    for role in (web, api, win):
        state = check_state(devstack, ws, role, closed=True)
        assert state["outcome"] == "succeeded" and state["amis"], (role, state["outcome"])
        assert len(bake_instances(devstack, role)) == 1, f"{role}: more than one bake instance (a duplicate launch)"
        images = bake_resources(devstack, role)[1]
        assert len(images) == 1, f"{role}: {len(images)} images (a duplicate CreateImage)"
    # The fallback: t3.medium refused in both subnets, t3a.medium used, and the user is told.
    api_state = read_state(ws, api)
    assert api_state["instance_type"] == "t3a.medium" and api_state["subnet_id"] == sub_a
    assert "t3a.medium" in api_state["stages"]["launch"]["message"]
    artifact = json.loads((ws / "artifacts" / f"{api}.json").read_text())
    assert (artifact["instance_type"], artifact["subnet_id"]) == ("t3a.medium", sub_a)
    assert f"RunInstances refused t3.medium in {sub_a} (InsufficientInstanceCapacity)" in proc.stderr
    # Windows: generalizing then stopped by itself (seen `stopping` first); never StopInstances on it.
    win_state = read_state(ws, win)
    assert "sysprep" in win_state["stages"]["bootstrap"]["message"], win_state["stages"]["bootstrap"]
    stops = [c for c in proxy.calls_since() if c.operation == "StopInstances"
             and win_state["instance_id"] in c.params.values()]
    assert stops == [], "StopInstances sent to a Windows instance in the middle of sysprep"
    # The instances' own tags (bootstrap, boot test) met the propagation window, and their retries coped.
    own = [c for c in proxy.calls_since() if c.operation == "CreateTags" and c.injected == "InvalidInstanceID.NotFound"
           and str(c.params.get("ResourceId.1", "")).startswith("i-")]
    assert own, "no instance tagged itself while it was still invisible: the windows are too short to matter"
    # The layer really played AWS: each behaviour happened at least once.
    for what in ("invisible", "capacity", "iam", "storm", "stopping"):
        assert realism.count(what) > 0, f"realism never played {what!r}: {realism.played[:20]}"
    assert census.leaks() == []
    FaultTable.add("realism", "release bake of 3 roles (one Windows) with AWS timing, the instances running their "
                   "real user data through it: ids invisible 2 s after create (to the instances' own CreateTags "
                   "too), pending/stopping (an OS shutdown too), image pending 3 s, new profile refused 3 s, "
                   "throttling storms, no `t3.medium` capacity in either subnet",
                   "bake succeeds; falls back to `t3a.medium` and says so; Windows self-stop accepted", "nothing")


def test_stage_by_stage_bake_through_aws_timing(devstack, proxy: FaultProxy, tmp_path: Path, capsys, monkeypatch):
    role = "rl-stages"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    realism = Realism()
    proxy.realism = realism
    env = cli_env(devstack, proxy.url)
    ws = tmp_path / "ws"
    with devstack.runner(tmp_path / "instances", instance_endpoint=proxy.url) as runner:
        for stage in ORDER:
            args = ["--workspace", str(ws), "--catalog", str(catalog), "stage", stage, "--role", role]
            if stage == "preflight":
                args += ["--release", RELEASE]
            code, out, err = run_in_process(args, env, capsys, monkeypatch)
            assert code == 0, f"{stage}: {out}\n{err}"
        played_by_the_instance(runner, devstack, role, "succeeded")
    state = check_state(devstack, ws, role, closed=True)
    assert state["outcome"] == "succeeded"
    assert len(bake_instances(devstack, role)) == 1 and len(bake_resources(devstack, role)[1]) == 1
    assert realism.count("invisible") > 0
    assert census.leaks() == []
    FaultTable.add("realism", "stage-by-stage bake (one CLI run per stage) with AWS timing, the instance running "
                   "its real user data through it",
                   "every stage succeeds: a resource not yet visible is waited for, not taken for gone", "nothing")


def test_cleanup_right_after_launch_does_not_leak_the_invisible_instance(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "rl-early-fail"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    prepare(devstack, tmp_path / "set-up", catalog, role, "launch")  # the role's group and profile: not new
    realism = Realism(invisible=3.0, iam=0)
    proxy.realism = realism
    # The first DescribeInstances after RunInstances is refused: the bake fails at once and cleans up
    # while its instance is still invisible (TerminateInstances answers NotFound and does nothing).
    proxy.add(Rule("DescribeInstances", after="RunInstances"))
    ws = tmp_path / "ws"
    proc = bakery(cli_env(devstack, proxy.url), ws, catalog, "bake", "--role", role, "--release", RELEASE)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    again = bakery(cli_env(devstack, proxy.url), ws, catalog, "cleanup", "--role", role)
    assert again.returncode == 0, again.stderr
    assert census.leaks() == [], proc.stderr + again.stderr
    FaultTable.add("realism", "bake fails right after RunInstances; cleanup while the instance is invisible "
                   "(TerminateInstances → `InvalidInstanceID.NotFound`)",
                   "NotFound is not taken for \"already gone\": the instance is terminated", "nothing")


def test_capacity_that_never_comes_back_fails_the_launch_naming_every_placement(devstack, proxy: FaultProxy,
                                                                                 tmp_path: Path):
    role = "rl-nocap"
    sub_a, sub_b = subnets(devstack)
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        role: {"platform": "linux", "instance_types": ["t3.medium", "m5.large"], "subnet_ids": [sub_a, sub_b]}})
    census = Census.take(devstack)
    proxy.realism = Realism(no_capacity={("t3.medium", "*"), ("m5.large", "*")})
    ws = tmp_path / "ws"
    proc = bakery(cli_env(devstack, proxy.url), ws, catalog, "bake", "--role", role, "--release", RELEASE)
    assert proc.returncode == 1
    assert "no capacity for role 'rl-nocap'" in proc.stderr and "instance_types" in proc.stderr
    runs = collections.Counter((c.params.get("InstanceType"), c.params.get("SubnetId"))
                               for c in proxy.calls_since() if c.operation == "RunInstances")
    assert set(runs) == {(t, s) for t in ("t3.medium", "m5.large") for s in (sub_a, sub_b)}
    assert max(runs.values()) == 3, runs  # each placement once per round, 3 rounds, no SDK retries on top
    assert census.leaks() == []
    FaultTable.add("realism", "`InsufficientInstanceCapacity` for every instance type in every subnet",
                   "each placement tried 3 times; launch fails naming them and the catalogue keys", "nothing")


def test_reap_of_a_bake_killed_right_after_its_launch(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "rl-reap"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    prepare(devstack, tmp_path / "set-up", catalog, role, "launch")  # the role's group and profile: not new
    clock = ManualClock()  # the windows end when this test says, however slow the runs below
    realism = Realism(invisible=6.0, pending=10.0, iam=0, clock=clock)
    proxy.realism = realism
    env = cli_env(devstack, proxy.url)
    ws = tmp_path / "ws"
    proc = popen_bakery(env, ws, catalog, "bake", "--role", role, "--release", RELEASE)
    try:
        wait_for(lambda: bool(read_state(ws, role).get("instance_id")), "the launch", proc=proc)
    finally:
        proc.kill()  # SIGKILL: no cleanup of its own
        proc.communicate()
    state = read_state(ws, role)
    bake_id, iid = state["bake_id"], state["instance_id"]
    # At once, while filtered describes do not list the new instance (and by id it answers NotFound):
    # from another workspace, as the message of an interrupted bake advises, and from the bake's own
    # workspace, whose state records the instance. Neither may call the bake clean.
    early = [popen_bakery(env, where, catalog, "reap", "--bake-id", bake_id) for where in (tmp_path / "elsewhere", ws)]
    outs = [run.communicate(timeout=60) for run in early]
    assert realism.invisible_now(iid)
    for run, (stdout, stderr) in zip(early, outs, strict=True):
        assert run.returncode == 1, f"reap declared the bake clean while its instance was not yet listed:\n{stdout}{stderr}"
        assert "Traceback" not in stderr
        assert "not listed by EC2 yet" in stdout and "run reap again" in stdout, stdout + stderr
    assert iid in outs[1][0]  # the workspace's run names the recorded instance
    # A later run, once the id has propagated but while the instance is still `pending`, gets it.
    clock.advance(6.0)  # the end of the propagation window; `pending` (10 s) still lasts
    assert not realism.invisible_now(iid)
    reaped = bakery(env, tmp_path / "elsewhere", catalog, "reap", "--bake-id", bake_id)
    assert reaped.returncode == 0, reaped.stdout + reaped.stderr
    assert f"instance {iid}: terminated" in reaped.stdout, reaped.stdout
    assert census.leaks() == [], reaped.stdout + reaped.stderr
    FaultTable.add("realism", "bake SIGKILLed right after RunInstances; `bakery reap --bake-id` at once (instance "
                   "not yet listed), from another workspace and from its own, then again later while it is "
                   "still `pending`",
                   "the early runs exit 1 saying the instance is not listed yet (never \"clean\"); the later run "
                   "finds the pending instance and terminates it", "nothing")


def test_two_bakes_of_one_role_launched_within_the_propagation_window(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "rl-race"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    # Both pass preflight (nothing in flight yet), then launch at the same moment.
    wss = [tmp_path / "a", tmp_path / "b"]
    for ws in wss:
        prepare(devstack, ws, catalog, role, "launch")
    clock = ManualClock()  # both launches fall inside the window whatever the load; it ends when both did
    proxy.realism = realism = Realism(invisible=3.0, pending=1.0, iam=0, clock=clock)
    aws = direct_aws(devstack, proxy.url)
    results: list[Any] = [None, None]

    def launch(n: int) -> None:
        results[n] = run_stage(context(devstack, wss[n], catalog, role, aws=aws), "launch")

    threads = [threading.Thread(target=launch, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
        time.sleep(1.0)  # launch times 1 s apart (EC2 gives whole seconds), on the frozen window
    wait_for(lambda: sum(rid.startswith("i-") for rid in dict(realism.created)) == 2, "both RunInstances")
    clock.advance(3.0)
    for t in threads:
        t.join(60)
    messages = [r.message for r in results]
    carried_on = [r for r in results if r.exit_code == 0]
    assert len(carried_on) <= 1, f"both bakes of one role carried on: {messages}"
    # The later one stood down; launched in the same second (EC2 gives whole seconds), both may.
    assert all("launched at the same time" in r.message for r in results if r.exit_code), messages
    for ws in wss:
        cleaned = bakery(cli_env(devstack), ws, catalog, "cleanup", "--role", role)
        assert cleaned.returncode == 0, cleaned.stderr
    assert census.leaks() == []
    FaultTable.add("realism", "two bakes of one role (two workspaces) launch 1 s apart, each instance invisible "
                   "to filtered describes for 3 s",
                   "each launch checks for other bakes once its own instance is listed: the later one stands down",
                   "nothing")


def test_a_throttling_storm_beyond_botocore_retries_is_absorbed_by_the_shared_gate(devstack, proxy: FaultProxy):
    # botocore makes one attempt here (no retries, to keep the case short); the storm lasts 2: the gate
    # backs off and tries again, and a second caller of the same region waits for the same cool-down.
    aws = direct_aws(devstack, proxy.url, max_attempts=0)
    proxy.add(Rule("DescribeVpcs", kind="throttle", times=2))
    vpcs = aws.call("ec2", devstack.region, "DescribeVpcs")
    assert vpcs["Vpcs"] and len(proxy.injected()) == 2
    key = aws.gate_key("ec2", devstack.region, "DescribeVpcs")
    aws.gate.trip(key)
    assert aws.gate.remaining(key) > 0
    aws.call("ec2", devstack.region, "DescribeVpcs")  # another bake's call in the same region waits too
    assert aws.gate.remaining(key) == 0, "the call went out before the shared back-off ended"
    proxy.reset()
    proxy.add(Rule("DescribeVpcs", kind="throttle", times=None))
    aws = direct_aws(devstack, proxy.url, max_attempts=0)  # a calm process: the back-off starts small
    with pytest.raises(AwsError) as info:
        aws.call("ec2", devstack.region, "DescribeVpcs")
    assert info.value.code == "RequestLimitExceeded"
    # Bounded: one attempt in each of STORM_ROUNDS rounds, then the call fails.
    assert len(proxy.injected()) == STORM_ROUNDS
