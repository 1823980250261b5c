"""Stage by stage, as Jenkins runs it: every AWS call of a bake throttled, then refused.

One case per entry of :data:`~support.calls.BAKE_CALLS` (every call of every stage, the calls a rerun
makes included). Each case starts a fresh bake of its own role, brings it up to the stage in process
(cheap set-up, straight to moto), then runs ``bakery stage STAGE`` with its AWS endpoint set to the
fault proxy: the chosen call is first throttled (``RequestLimitExceeded`` 503 / ``Throttling`` 400 /
``ThrottlingException`` / ``SlowDown`` 503: botocore must retry it, unseen) and its retry refused with
a permission error (``UnauthorizedOperation`` / ``AccessDenied`` / ``AccessDeniedException``). The
stage must exit 1 with a one-paragraph reason naming the stage, the operation and the AWS error code
(no traceback), write a JUnit failure naming the stage and the code, and leave a state file that says
the stage failed. Then ``bakery cleanup`` (Jenkins' ``post { always }``) must exit 0 and leave no
instance, no pending/failed image, no orphan snapshot and no Chef node/client of the bake, and close
the state. An available image (a failure after wait-image) is a good AMI and is kept.

The CLI runs through its console entry point in the test process (a Python start-up per run would
make these cases cost minutes); the same commands run as real subprocesses under faults in
``test_faults_bake``, ``test_interrupt`` and ``test_concurrency``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.bakes import (
    RELEASE,
    Census,
    FaultTable,
    SimulatedBoot,
    assert_junit_failure,
    check_state,
    cli_env,
    leftover_text,
    mark_failed_attempt,
    prepare,
    read_state,
    run_in_process,
)
from support.calls import BAKE_CALLS, BakeCall
from support.proxy import THROTTLE, FaultProxy, Rule

from bakery_lib.stages import ORDER

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
THROTTLE_CODES = {code for _status, code in THROTTLE.values()}


@pytest.mark.parametrize("call", BAKE_CALLS, ids=lambda c: c.id)
def test_permission_error_fails_the_stage_and_cleanup_leaves_nothing(
        call: BakeCall, devstack, proxy: FaultProxy, tmp_path: Path, capsys, monkeypatch):
    role = call.role
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    prepare(devstack, ws, catalog, role, call.stage)
    if call.rerun:
        mark_failed_attempt(ws, role, call.stage)
    env = cli_env(devstack, proxy.url)

    # The call is first throttled (botocore must retry it), then its retry is refused.
    proxy.add(Rule(call.operation, kind="throttle", skip=call.occurrence - 1),
              Rule(call.operation, kind="denied", skip=call.occurrence - 1))
    extra = ["--release", RELEASE] if call.stage == "preflight" else []
    # bootstrap, boot-test: the instance's run (the bake, the test's first boot) is played and passes.
    with SimulatedBoot(devstack, [role] if call.stage in ("bootstrap", "boot-test") else []):
        code_, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "stage", call.stage,
                                          "--role", role, *extra], env, capsys, monkeypatch)
    calls = proxy.calls_since()
    injected = [c for c in calls if c.injected]
    assert [c.operation for c in injected] == [call.operation] * 2, (
        f"faults not injected as planned: {[(c.operation, c.status, c.injected) for c in calls]}")
    throttled, denied = injected
    assert throttled.injected in THROTTLE_CODES and calls.index(denied) == calls.index(throttled) + 1
    code = denied.injected
    assert code is not None and throttled.injected not in err  # the throttling itself is invisible

    if call.best_effort:
        assert code_ == 0, f"exit {code_}\n{out}\n{err}"
        assert code in out + err and call.best_effort_says in out + err
        if call.stage != ORDER[-1]:  # the bake goes on; here it ends with its cleanup
            proxy.reset()
            assert run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "cleanup", "--role", role],
                                  env, capsys, monkeypatch)[0] == 0
        assert census.leaks() == [], census.leaks()
        FaultTable.add("stage-by-stage", f"`{call.id}` → throttled, then refused on the retry",
                       "exit 0: the stage finishes and names the refused call", "nothing")
        return
    assert code_ == 1, f"exit {code_}\n{out}\n{err}"
    assert f"stage {call.stage} failed for role {role}" in err
    assert code in err and call.operation in err
    assert_junit_failure(ws, role, call.stage, code)
    if (ws / ".bakery" / f"{role}.json").exists():
        state = check_state(devstack, ws, role, closed=False)
        assert state["stages"][call.stage]["status"] == "failed"
        assert code in state["stages"][call.stage]["message"]
    else:
        assert call.stage == "preflight", "only a failed preflight may leave no state"
    outcome = f"stage exits 1; JUnit failure `{code}`"

    proxy.reset()
    code_, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "cleanup", "--role", role],
                                     env, capsys, monkeypatch)
    assert code_ == 0, err
    leaks = census.leaks()
    assert leaks == [], f"left behind after {call.id} + cleanup: {leaks}"
    if (ws / ".bakery" / f"{role}.json").exists():
        check_state(devstack, ws, role, closed=True)
    kept = census.new_available_images()
    if call.stage == "wait-image":
        # An image on which IMDSv2 could not be required (or left untagged) is not a good AMI: removed.
        assert kept == [], f"{call.id}: cleanup kept {kept}"
    left = leftover_text(leaks) + (f" (kept: {len(kept)} available AMI)" if kept else "")
    FaultTable.add("stage-by-stage", f"`{call.id}` → `{throttled.injected}`, then `{code}` on the retry",
                   "throttling retried; " + outcome, left)


def test_imdsv2_refused_then_rerun_after_the_fix(devstack, proxy: FaultProxy, tmp_path: Path, capsys, monkeypatch):
    """What the wait-image failure message promises: once ModifyImageAttribute is allowed again, a
    rerun of the stage requires IMDSv2 on the same image, marks it, and records it as the bake's AMI."""
    role = "f-wi-imds-rerun"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    prepare(devstack, ws, catalog, role, "wait-image")
    env = cli_env(devstack, proxy.url)
    args = ["--workspace", str(ws), "--catalog", str(catalog), "stage", "wait-image", "--role", role]
    proxy.add(Rule("ModifyImageAttribute", kind="denied"))
    code, _out, err = run_in_process(args, env, capsys, monkeypatch)
    assert code == 1 and "UnauthorizedOperation" in err and "not published and no later bake reuses it" in err
    state = read_state(ws, role)
    image_id = state["image_id"]
    assert state["amis"] == {}
    ec2 = devstack.moto.client("ec2")
    tags = {t["Key"]: t["Value"] for t in ec2.describe_images(ImageIds=[image_id])["Images"][0].get("Tags", [])}
    assert "bakery:imds-support" not in tags
    snaps = state["snapshot_ids"]
    assert snaps, "the snapshots are tagged even when the stage fails"

    proxy.reset()
    code, out, err = run_in_process(args, env, capsys, monkeypatch)
    assert code == 0, err
    modify = [c for c in proxy.calls_since() if c.operation == "ModifyImageAttribute"]
    assert len(modify) == 1 and modify[0].status == 200
    state = read_state(ws, role)
    assert state["amis"] == {devstack.region: image_id}
    tags = {t["Key"]: t["Value"] for t in ec2.describe_images(ImageIds=[image_id])["Images"][0].get("Tags", [])}
    assert tags["bakery:imds-support"] == "v2.0"
    code, _out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "cleanup", "--role", role],
                                     env, capsys, monkeypatch)
    assert code == 0, err
