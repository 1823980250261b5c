"""What one ``bakery bake`` of many roles asks AWS, counted call by call against moto server.

The issue's goal: a role baked with others costs no more AWS API calls than a Packer amazon-ebs bake
(19, its waits included). This test holds the bakery to it *with every poll counted*, and checks
why it holds: what is the same for every role (the default VPC, the base AMI) is asked once per
run, the per-role look-ups of preflight and launch are batched across roles, and nothing is read
that the bake has just written. The benchmark (``bench/bench_bake.py``) measures the same with
latency added; this test keeps a regression from landing unnoticed.

The bootstrap is simulated as in the fault tests (the instance tags itself and registers its Chef
node): the instance side is not what is counted here. So is each new AMI's boot test (its first boot
registers and tags ``bakery:boot-test=passed``): Packer has no such stage, so its calls are counted on
their own (``BOOT_TEST_CALLS_PER_ROLE``), next to the bake's.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any

import pytest
from support.bakes import direct_aws, fast_settings, simulate_boot_test, simulate_bootstrap

from bakery_lib.aws import tags_of
from bakery_lib.bake import bake_many
from bakery_lib.catalog import load_catalog
from bakery_lib.state import Workspace

PACKER_CALLS_PER_BAKE = 19  # Packer 1.6.6 amazon-ebs, communicator none, on the same moto (bench/README.md)
ROLES = [f"budget{i}" for i in range(6)]
# boot-test per role: PutObject (run list), DescribeImages (root device), RunInstances, CreateTags (the
# AMI), TerminateInstances, plus its batched polls.
BOOT_TEST_CALLS_PER_ROLE = 7
# publish's AMI lifecycle (bakery_lib.amis.retire): the new AMI's deprecation time and deregistration
# protection, the role's AMIs listed to deprecate the superseded one, and that deprecation. Packer sets
# neither, so they are counted apart, against the issue's own goal: at most 4 per role.
AMI_LIFECYCLE_CALLS_PER_ROLE = 4


def is_ami_lifecycle(op: str, params: dict[str, Any], stage: str) -> bool:
    if stage != "publish":
        return False
    if op in ("ec2.EnableImageDeprecation", "ec2.EnableImageDeregistrationProtection"):
        return True
    return op == "ec2.DescribeImages" and "tag:bakery:created-by" in {f["Name"] for f in params.get("Filters", [])}


_STAGE = threading.local()


class Recorder:
    """Every AWS call the bakery process makes: operation, parameters, and the stage of the bake
    whose thread made it (a batched poll serves several bakes; it counts for the one that made it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self._lock = threading.Lock()

    def __call__(self, event_name: str = "", params: dict[str, Any] | None = None, **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        with self._lock:
            self.calls.append((f"{service}.{operation}", dict(params or {}), getattr(_STAGE, "name", "")))

    def count(self, operation: str, filter_name: str | None = None, param: str | None = None) -> int:
        n = 0
        for op, params, _stage in self.calls:
            if op != operation:
                continue
            if filter_name and filter_name not in {f["Name"] for f in params.get("Filters", [])}:
                continue
            if param and param not in params:
                continue
            n += 1
        return n

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()


class Bootstrapper(threading.Thread):
    """Plays the bake instances' user data: each running bake instance of ``roles`` reports success,
    and each boot-test instance passes."""

    def __init__(self, devstack, roles: list[str]):
        super().__init__(daemon=True)
        self.devstack, self.roles, self.stop = devstack, roles, threading.Event()
        self.ec2 = devstack.moto.client("ec2")

    def run(self) -> None:
        while not self.stop.wait(0.1):
            found = self.ec2.describe_instances(Filters=[
                {"Name": "tag:bakery:role", "Values": self.roles},
                {"Name": "tag:bakery:purpose", "Values": ["bake", "boot-test"]},
                {"Name": "instance-state-name", "Values": ["running"]}])
            for inst in (i for r in found["Reservations"] for i in r["Instances"]):
                tags = tags_of(inst)
                if tags.get("bakery:purpose") == "boot-test":
                    if "bakery:boot-test" not in tags:
                        simulate_boot_test(self.devstack, inst["InstanceId"], tags["bakery:chef-node"])
                elif "bakery:bootstrap" not in tags:
                    simulate_bootstrap(self.devstack, inst["InstanceId"], tags["bakery:chef-node"])


@pytest.fixture()
def baked_twice(devstack, tmp_path: Path, monkeypatch):
    """Bake ROLES together (first bake of each), then again for a new release (all unchanged)."""
    catalog = load_catalog(devstack.write_catalog(tmp_path / "bakery.yaml", roles=ROLES))
    ws = Workspace(tmp_path / "ws")
    recorder = Recorder()
    aws = direct_aws(devstack)
    aws.add_hook("provide-client-params", recorder)
    from bakery_lib import bake

    def run_stage(ctx, name, **kwargs):
        _STAGE.name = name
        try:
            return original(ctx, name, **kwargs)
        finally:
            _STAGE.name = ""

    original = bake.run_stage
    monkeypatch.setattr(bake, "run_stage", run_stage)
    runs = {}
    booter = Bootstrapper(devstack, ROLES)
    booter.start()
    try:
        for release in ("1.0", "1.1"):
            recorder.reset()
            outcomes = bake_many(ws, catalog, ROLES, release, aws, threading.Event(), jobs=len(ROLES),
                                 settings=fast_settings(devstack, 0.2), log=lambda _m: None)
            runs[release] = (outcomes, list(recorder.calls))
    finally:
        booter.stop.set()
        booter.join(5)
    return runs, recorder


def _recorder_of(calls: list[tuple[str, dict[str, Any], str]]) -> Recorder:
    r = Recorder()
    r.calls = calls
    return r


def test_roles_baked_together_stay_within_packers_calls(baked_twice):
    runs, _ = baked_twice
    outcomes, calls = runs["1.0"]
    assert [o.status for o in outcomes] == ["succeeded"] * len(ROLES), [o.message for o in outcomes]
    rec = _recorder_of(calls)
    per_op = collections.Counter(op for op, _, _ in calls)
    # The goal: Packer's calls per bake, plus the polls for the instance's Chef run (their number is
    # the Chef run's time over the poll interval; here 0.2 s, against 15 s by default).
    # Also apart: publish's release-order guard (who last wrote /bakery/ROLE/latest), one call per role;
    # Packer publishes nothing, so it has no counterpart either.
    guard = [c for c in calls if c[0] == "ssm.DescribeParameters"]
    assert len(guard) == len(ROLES) and {c[2] for c in guard} == {"publish"}
    lifecycle = [c for c in calls if is_ami_lifecycle(*c)]
    assert len(lifecycle) / len(ROLES) <= AMI_LIFECYCLE_CALLS_PER_ROLE, collections.Counter(c[0] for c in lifecycle)
    counted = [c for c in calls if c[2] not in ("bootstrap", "boot-test") and c[0] != "ssm.DescribeParameters"
               and not is_ami_lifecycle(*c)]
    per_role = len(counted) / len(ROLES)
    by_stage = collections.Counter(f"{stage}:{op}" for op, _, stage in counted)
    assert per_role <= PACKER_CALLS_PER_BAKE, f"{per_role:.1f} AWS calls per role besides bootstrap polls: {by_stage}"
    assert all(op == "ec2.DescribeInstances" for op, _, stage in calls if stage == "bootstrap")
    # The boot test (no Packer counterpart): a few calls per role besides its batched polls.
    boot_test = [c for c in calls if c[2] == "boot-test"]
    assert len(boot_test) / len(ROLES) <= BOOT_TEST_CALLS_PER_ROLE + 2, collections.Counter(c[0] for c in boot_test)
    # The same for every role: asked once per run.
    assert rec.count("ec2.DescribeVpcs") == 1
    assert rec.count("ec2.DescribeImages", filter_name="name") == 1  # base AMI resolution
    # Per-role look-ups, batched across the roles baked together.
    assert rec.count("ec2.DescribeImages", filter_name="tag:bakery:bake-key") < len(ROLES)
    assert rec.count("ec2.DescribeInstances", filter_name="tag:bakery:role") < 2 * len(ROLES)
    # Nothing read back that the bake has just written or is about to overwrite.
    assert per_op["iam.GetInstanceProfile"] == 0
    assert per_op["s3.GetObject"] == 0
    assert per_op["ec2.RunInstances"] == 2 * len(ROLES)  # the bake instance and the boot test's


def test_unchanged_roles_cost_a_few_calls_each(baked_twice):
    runs, _ = baked_twice
    outcomes, calls = runs["1.1"]
    assert [o.status for o in outcomes] == ["reused"] * len(ROLES), [o.message for o in outcomes]
    per_op = collections.Counter(op for op, _, _ in calls)
    assert per_op["ec2.RunInstances"] == 0
    # Per role: the SSM parameter (who wrote it last, so latest never moves backwards; then the write)
    # and the run list; shared: base AMI, in-flight check, bake-key look-up.
    assert per_op["ssm.PutParameter"] == len(ROLES) and per_op["s3.PutObject"] == len(ROLES)
    assert per_op["ssm.DescribeParameters"] == len(ROLES)
    lifecycle = [c for c in calls if is_ami_lifecycle(*c)]
    assert len(lifecycle) / len(ROLES) <= AMI_LIFECYCLE_CALLS_PER_ROLE, collections.Counter(c[0] for c in lifecycle)
    assert len(calls) - len(lifecycle) <= 3 * len(ROLES) + 2 * 3, per_op
