"""Throttling of every call (both modes) and hard errors inside ``bakery bake`` (one process, all stages).

- Throttling: in one ``bakery bake`` every distinct operation's first call is answered with that service's throttling error (EC2
  ``RequestLimitExceeded`` 503, IAM ``Throttling`` 400, SSM ``ThrottlingException``, S3 ``SlowDown``
  503), and RunInstances also with ``InsufficientInstanceCapacity`` 500 once. botocore's adaptive
  retries must absorb all of it: the bake succeeds. Its calls, attributed to stages by the stage
  times in the state, must be exactly :data:`~support.calls.BAKE_CALLS`, so that list (the parameters
  of ``test_faults_stages``, where each stage process also gets a throttled call) is proven complete.
- Hard errors in ``bakery bake``: a representative call of six stages fails with a permission error
  (aimed inside the single process with ``after=``: e.g. the first DescribeInstances after
  RunInstances is the bootstrap poll). The bake must exit 1 naming the stage and the code, run its
  own cleanup, and a following ``bakery cleanup`` must find nothing left to do.
- A capacity error that persists fails the launch: RunInstances is not retried by botocore for it (it
  persists), the one placement is tried in 3 rounds, and the message names it and the catalogue keys
  ``instance_types``/``subnet_ids`` (the fallback itself: ``test_realism``).
- An answer that is not the service's XML (an HTML page with status 200) is an AWS error with a
  short message, not a traceback.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.bakes import (
    RELEASE,
    Census,
    FaultTable,
    SimulatedBoot,
    assert_junit_failure,
    bakery,
    check_state,
    cli_env,
    direct_aws,
    fast_settings,
    junit_case,
    leftover_text,
    read_state,
)
from support.calls import BAKE_CALLS
from support.proxy import FaultProxy, Rewrite, Rule

from bakery_lib.bake import bake_role
from bakery_lib.catalog import load_catalog
from bakery_lib.errors import AwsError
from bakery_lib.state import Workspace

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def throttle_everything(proxy: FaultProxy) -> None:
    proxy.add(Rule("RunInstances", kind="custom", code="InsufficientInstanceCapacity", status=500,
                   message="We currently do not have sufficient t3.medium capacity (injected)"),
              Rule("*", kind="throttle", each=True))


def assert_every_operation_recovered(calls) -> list[str]:
    """Each operation was refused at least once and then answered: returns the operations."""
    refused = collections.Counter(c.operation for c in calls if c.injected)
    answered = {c.operation for c in calls if c.ok or (c.status == 404 and not c.injected)}
    ops = list(dict.fromkeys(c.operation for c in calls))
    assert set(refused) == set(ops), f"not throttled: {set(ops) - set(refused)}"
    assert answered >= set(ops), f"never answered after throttling: {set(ops) - answered}"
    return ops


def test_throttling_every_call_is_retried_and_the_bake_succeeds(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "thr-bake"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    throttle_everything(proxy)
    with SimulatedBoot(devstack, [role]):
        proc = bakery(cli_env(devstack, proxy.url), ws, catalog, "bake", "--role", role, "--release", RELEASE)
    assert proc.returncode == 0, proc.stderr
    state = check_state(devstack, ws, role, closed=True)
    calls = proxy.calls_since()
    ops = assert_every_operation_recovered(calls)
    assert state["outcome"] == "succeeded" and state["amis"]
    # Which stage made which calls (by the stage times in the state): exactly what BAKE_CALLS lists,
    # so the stage-by-stage cases built from that list fail every call a bake makes.
    made: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for c in calls:
        if c.injected:
            continue
        stage = next((n for n, rec in state["stages"].items() if rec["started_at"] <= c.at <= rec["finished_at"]), "?")
        made[stage][c.operation] += 1
    listed: dict[str, set[str]] = collections.defaultdict(set)
    for call in BAKE_CALLS:
        if call.rerun:
            continue  # a bake that fails nowhere makes no rerun call
        listed[call.stage].add(call.operation)
        assert made[call.stage][call.operation] >= call.occurrence, (call.id, dict(made[call.stage]))
    # After the stages, the release summary reads the AMIs of the release from their tags (one
    # DescribeImages per region): the only call outside a stage.
    assert made.pop("?", collections.Counter()) <= collections.Counter({"DescribeImages": 1})
    assert {st: set(ops) for st, ops in made.items()} == dict(listed), "BAKE_CALLS is out of date"
    assert census.leaks() == []
    capacity = [c for c in proxy.calls_since() if c.injected == "InsufficientInstanceCapacity"]
    assert len(capacity) == 1
    FaultTable.add("bake", f"every one of the {len(ops)} operations throttled once, RunInstances also "
                   "`InsufficientInstanceCapacity` 500 once", "retried by botocore; bake succeeded, AMI published",
                   "nothing")


@dataclass(frozen=True)
class BakeFault:
    stage: str
    operation: str
    after: str | None = None
    skip: int = 0
    pending: bool = False  # DescribeImages says "pending" (AWS is still making the image)

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.operation}"


# A representative call of the stages that own something (every call of every stage fails in
# test_faults_stages); aimed with `after` where an earlier stage makes the same operation.
BAKE_FAULTS = (
    BakeFault("preflight", "DescribeImages"),
    BakeFault("iam-role", "PutRolePolicy"),
    BakeFault("launch", "RunInstances"),
    # After RunInstances, launch's own check for other bakes comes first: the next one is bootstrap's.
    BakeFault("bootstrap", "DescribeInstances", after="RunInstances", skip=1),
    # The image exists and is still pending when the wait fails: cleanup must deregister it.
    BakeFault("wait-image", "DescribeImages", after="CreateImage", pending=True),
    BakeFault("publish", "PutParameter"),
)


@pytest.mark.parametrize("fault", BAKE_FAULTS, ids=lambda f: f.id)
def test_hard_error_fails_the_bake_which_cleans_up_after_itself(devstack, proxy: FaultProxy, tmp_path: Path,
                                                                  fault: BakeFault):
    role = f"fb-{fault.stage}"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    env = cli_env(devstack, proxy.url)
    proxy.add(Rule(fault.operation, kind="denied", after=fault.after, skip=fault.skip))
    if fault.pending:
        proxy.add(Rewrite("DescribeImages", "<imageState>available</imageState>", "<imageState>pending</imageState>",
                          after="CreateImage"))
    with SimulatedBoot(devstack, [role]):
        proc = bakery(env, ws, catalog, "bake", "--role", role, "--release", RELEASE)
    injected = proxy.injected()
    assert len(injected) == 1 and injected[0].operation == fault.operation
    code = injected[0].injected or ""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"1 of 1 role(s) failed: {role}" in proc.stderr
    assert f"{fault.stage}: AWS {fault.operation} failed: {code}" in proc.stdout
    assert_junit_failure(ws, role, fault.stage, code)
    if fault.stage != "preflight":
        assert junit_case(ws, role, "cleanup").find("failure") is None
        state = check_state(devstack, ws, role, closed=True)
        assert state["stages"][fault.stage]["status"] == "failed"
    leaks = census.leaks()
    assert leaks == [], f"{fault.id}: left behind by the bake's own cleanup: {leaks}"

    proxy.reset()
    again = bakery(env, ws, catalog, "cleanup", "--role", role)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert census.leaks() == []
    kept = census.new_available_images()
    if fault.pending:
        assert kept == [], "a pending image must be deregistered, not kept"
    FaultTable.add("bake", f"`{fault.id}` → `{code}` once" + (" (image still pending)" if fault.pending else ""), "bake exits 1 naming stage and code; cleans up itself; "
                   "`bakery cleanup` then has nothing to do",
                   leftover_text(leaks) + (" (kept: the available AMI)" if kept else ""))


def test_capacity_error_through_every_retry_fails_the_launch(devstack, proxy: FaultProxy, tmp_path: Path):
    role = "fb-capacity"
    catalog = load_catalog(devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}}))
    census = Census.take(devstack)
    proxy.add(Rule("RunInstances", kind="custom", code="InsufficientInstanceCapacity", status=500, times=None,
                   message="We currently do not have sufficient t3.medium capacity (injected)"))
    aws = direct_aws(devstack, proxy.url, max_attempts=3)
    ws = Workspace(tmp_path / "ws")
    outcome = bake_role(ws, catalog, role, RELEASE, aws, threading.Event(), settings=fast_settings(devstack),
                        log=lambda _m: None)
    assert outcome.status == "failed" and outcome.exit_code == 1
    # Capacity persists: no SDK retries on RunInstances, the one placement tried in 3 rounds, then a
    # message naming it and the catalogue keys that give the launch somewhere else to go.
    assert outcome.message.startswith("launch: no capacity for role 'fb-capacity'"), outcome.message
    assert "t3.medium in the default subnet: InsufficientInstanceCapacity" in outcome.message
    assert "instance_types" in outcome.message and "subnet_ids" in outcome.message
    assert len(proxy.injected()) == 3
    assert read_state(ws.root, role)["closed"] is True
    assert census.leaks() == []
    FaultTable.add("bake", "`launch:RunInstances` → `InsufficientInstanceCapacity` 500 on every attempt",
                   "no SDK retries (it persists); 3 rounds over the placements, then the launch fails naming them "
                   "and `instance_types`/`subnet_ids`; cleanup", "nothing")


def test_an_answer_that_is_not_the_services_xml_is_an_aws_error_not_a_traceback(devstack, proxy: FaultProxy):
    # Something between the bakery and AWS (a proxy, a load balancer) answers 200 with an HTML page:
    # botocore's ResponseParserError is not a BotoCoreError, and once ended a bake in a traceback.
    proxy.add(Rewrite("DescribeVpcs", "<?xml", "<html><body><p>The server encountered an internal error.</p>"
                      "</body></html><?xml", times=1))
    aws = direct_aws(devstack, proxy.url, max_attempts=0)
    with pytest.raises(AwsError) as info:
        aws.call("ec2", devstack.region, "DescribeVpcs")
    assert info.value.code == "ResponseParserError"
    assert len(str(info.value)) < 600, "the whole body in the message"
    assert aws.call("ec2", devstack.region, "DescribeVpcs")["Vpcs"]  # the next answer is read as usual
    FaultTable.add("bake", "an answer that is not the service's XML (HTML page with status 200)",
                   "AWS error `ResponseParserError` with the start of the body, failing the stage like any "
                   "other (was: a traceback)", "nothing")
