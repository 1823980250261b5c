"""What one ``bakery bake`` of many roles asks AWS, counted call by call against moto server.

The issue's goal: a role baked with others costs no more AWS API calls than a Packer amazon-ebs bake
(19, its waits included). What is the same for every role (the default VPC, the base AMI) is asked
once per run, the per-role look-ups of preflight and launch are batched across roles, and nothing is
read that the bake has just written. Every call but the polls is counted exactly; the polls -- how
many there are is the instances' time over the poll interval, i.e. the machine's load -- are checked
per poll round: one Describe per region and round serves every bake waiting. The benchmark
(``bench/bench_bake.py``) measures the same with latency added; this test keeps a regression from
landing unnoticed.

The bootstrap is simulated as in the fault tests (the instance tags itself and registers its Chef
node): the instance side is not what is counted here. So is each new AMI's boot test (its first boot
registers and tags ``bakery:boot-test=passed``): Packer has no such stage, so its calls are counted on
their own (``BOOT_TEST_PER_ROLE``), next to the bake's.
"""

from __future__ import annotations

import collections
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from support.bakes import direct_aws, fast_settings, simulate_boot_test, simulate_bootstrap
from support.stages import (
    make_ctx,
    new_aws,
    open_bake,
    record_role_amis,
    register_baked_ami,
    upload_inventory,
)

from bakery_lib.amis.protection import ROUNDING
from bakery_lib.amis.retire import parse_aws_time, utcnow
from bakery_lib.aws import tags_of
from bakery_lib.bake import bake_many
from bakery_lib.catalog import load_catalog
from bakery_lib.inventory import record_sbom
from bakery_lib.stages import publish
from bakery_lib.state import Workspace

PACKER_CALLS_PER_BAKE = 19  # Packer 1.6.6 amazon-ebs, communicator none, on the same moto (bench/README.md)
# The batched watches (aws.Batcher) poll with one Describe per region and round, filtered by id: how many
# rounds a wait takes is the Chef run's (or AWS's) time over the poll interval, so polls are checked per
# round, never counted against a budget.
POLL_FILTERS = {"ec2.DescribeInstances": "instance-id", "ec2.DescribeImages": "image-id"}
# The waits on one resource in a watch: a bake instance's bootstrap, stop's check and stop's wait; an
# image's wait-image and publish's (a boot-test instance has one).
WAITS_ON = {"ec2.DescribeInstances": 3, "ec2.DescribeImages": 2}
# Look-ups batched across the roles baked together (a short linger): at most one per role, however the
# bakes' threads are scheduled (how many share one call is the Batcher's unit tests' subject).
BATCHED_LOOKUPS = {("preflight", "ec2.DescribeInstances"), ("preflight", "ec2.DescribeImages"),
                   ("launch", "ec2.DescribeInstances")}
# Every other call of a first bake, per role, by stage (support.calls.BAKE_CALLS, polls and reruns
# aside); None: once per run, whatever the number of roles.
EXACT_PER_ROLE: dict[tuple[str, str], int | None] = {
    ("preflight", "ec2.DescribeImages#base"): None,
    ("preflight", "ec2.DescribeInstanceTypeOfferings"): None,
    ("preflight", "ec2.DescribeInstanceTypes"): None,
    ("security-groups", "ec2.DescribeVpcs"): None,
    ("security-groups", "ec2.DescribeSecurityGroups"): 1,
    ("security-groups", "ec2.CreateSecurityGroup"): 1,
    ("iam-role", "iam.GetRole"): 1,
    ("iam-role", "iam.CreateRole"): 1,
    ("iam-role", "iam.PutRolePolicy"): 1,
    ("iam-role", "iam.CreateInstanceProfile"): 1,
    ("iam-role", "iam.AddRoleToInstanceProfile"): 1,
    ("launch", "ec2.RunInstances"): 1,
    ("stop", "ec2.StopInstances"): 1,
    ("image", "ec2.CreateImage"): 1,
    ("wait-image", "ec2.ModifyImageAttribute"): 1,
    ("wait-image", "ec2.CreateTags"): 1,
    ("terminate", "ec2.TerminateInstances"): 1,
    ("publish", "ssm.DescribeParameters"): 1,
    ("publish", "ssm.PutParameter"): 1,
    ("publish", "ssm.GetParameter"): 1,
    ("publish", "s3.PutObject"): 1,
}
# boot-test per role besides its batched polls (no Packer counterpart: counted on their own).
BOOT_TEST_PER_ROLE = {"s3.PutObject": 1, "ec2.DescribeImages": 1, "ec2.RunInstances": 1, "ec2.CreateTags": 1,
                      "ec2.TerminateInstances": 1}
# publish's AMI lifecycle (bakery_lib.amis.retire): the new AMI's deprecation time and deregistration
# protection, and the deprecation of the AMI it supersedes (none on a role's first bake, nor for a reused
# AMI: it supersedes nothing). The role's AMIs come from preflight's listing, which its reuse look-up
# makes anyway: no DescribeImages of publish's own. Packer sets neither, so they are counted apart,
# exactly (the goal for items 2-6 together: ``test_a_second_release_costs_six_calls_per_role``).
AMI_LIFECYCLE_CALLS_PER_ROLE = {"ec2.EnableImageDeprecation": 1, "ec2.EnableImageDeregistrationProtection": 1}


def is_ami_lifecycle(op: str, params: dict[str, Any], stage: str) -> bool:
    if stage != "publish":
        return False
    if op in ("ec2.EnableImageDeprecation", "ec2.EnableImageDeregistrationProtection"):
        return True
    return op == "ec2.DescribeImages" and "tag:bakery:created-by" in {f["Name"] for f in params.get("Filters", [])}


# bootstrap's SBOM step (bakery_lib.inventory): the inventory read and the SBOM written (plus the previous
# AMI's SBOM read when there is one: not on a role's first bake). The previous AMI comes from preflight's
# listing: no DescribeImages of its own. Packer makes no SBOM: counted apart, exactly.
SBOM_CALLS_PER_ROLE = {"s3.GetObject": 1, "s3.PutObject": 1}


def is_sbom(op: str, params: dict[str, Any], stage: str) -> bool:
    return stage == "bootstrap" and (op in ("s3.GetObject", "s3.PutObject") or (
        op == "ec2.DescribeImages" and "tag-key" in {f["Name"] for f in params.get("Filters", [])}))


ROLE_COUNT = 6

_STAGE = threading.local()


class Recorder:
    """Every AWS call the bakery process makes: operation, parameters, and the stage of the bake
    whose thread made it (a batched poll serves several bakes; it counts for the one that made it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.lock = threading.Lock()

    def __call__(self, event_name: str = "", params: dict[str, Any] | None = None, **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        with self.lock:
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
        with self.lock:
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


@pytest.fixture(scope="module")
def baked_twice(devstack, tmp_path_factory: pytest.TempPathFactory):
    """Bake ROLE_COUNT roles of this module's own together (first bake of each), then again for a new
    release (all unchanged). Module-scoped: both tests read the same two runs."""
    token = uuid.uuid4().hex[:6]
    roles = [f"budget{i}-{token}" for i in range(ROLE_COUNT)]
    tmp = tmp_path_factory.mktemp("budget")
    catalog = load_catalog(devstack.write_catalog(tmp / "bakery.yaml", roles=roles))
    ws = Workspace(tmp / "ws")
    recorder = Recorder()
    aws = direct_aws(devstack)
    aws.add_hook("provide-client-params", recorder)
    rounds: collections.Counter[str] = collections.Counter()  # poll rounds by stage, counted by the waits

    def count_round(_what: str) -> None:
        with recorder.lock:
            rounds[getattr(_STAGE, "name", "")] += 1

    aws.rounds.add_hook(count_round)
    from bakery_lib import bake  # patched below: each call is attributed to the stage that made it

    original = bake.run_stage

    def run_stage(ctx, name, **kwargs):
        _STAGE.name = name
        try:
            return original(ctx, name, **kwargs)
        finally:
            _STAGE.name = ""

    runs = {}
    booter = Bootstrapper(devstack, roles)
    booter.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bake, "run_stage", run_stage)
            for release in ("1.0", "1.1"):
                recorder.reset()
                rounds.clear()
                outcomes = bake_many(ws, catalog, roles, release, aws, threading.Event(), jobs=len(roles),
                                     settings=fast_settings(devstack, 0.2), log=lambda _m: None)
                runs[release] = (outcomes, list(recorder.calls), collections.Counter(rounds))
    finally:
        booter.stop.set()
        booter.join(5)
    return runs, roles


Call = tuple[str, dict[str, Any], str]


def _filters(params: dict[str, Any]) -> dict[str, list[str]]:
    return {f["Name"]: list(f.get("Values", [])) for f in params.get("Filters", [])}


def is_poll(call: Call) -> bool:
    name = POLL_FILTERS.get(call[0])
    return name is not None and name in _filters(call[1])


def _key(call: Call) -> tuple[str, str]:
    op, params, stage = call
    if stage == "preflight" and op == "ec2.DescribeImages" and "name" in _filters(params):
        return stage, f"{op}#base"  # the base AMI, resolved once for every role
    return stage, op


def assert_polls_are_batched(calls: list[Call]) -> None:
    """Each poll round is one Describe per region and watch for every bake waiting then: an id, once
    asked for, is in every poll of its watch until its wait ends. So its polls form one unbroken run
    per wait on it (``WAITS_ON``), however many rounds each took; polled on their own, one call per
    bake and round, the other bakes' calls would break each id's run at every round."""
    for op, name in POLL_FILTERS.items():
        polls = [set(_filters(params)[name]) for o, params, _ in calls if o == op and is_poll((o, params, ""))]
        for key in set().union(*polls) if polls else ():
            rounds = [i for i, ids in enumerate(polls) if key in ids]
            runs = 1 + sum(1 for a, b in zip(rounds, rounds[1:], strict=False) if b != a + 1)
            assert runs <= WAITS_ON[op], (
                f"{op}: {key} polled in {runs} separate runs (rounds {rounds}) for {WAITS_ON[op]} waits: "
                "the bakes' polls were not one call per round")


def test_roles_baked_together_stay_within_packers_calls(baked_twice):
    runs, roles = baked_twice
    n = len(roles)
    outcomes, calls, rounds = runs["1.0"]
    assert [o.status for o in outcomes] == ["succeeded"] * n, [o.message for o in outcomes]
    assert all(op == "ec2.DescribeInstances" and is_poll((op, p, s)) for op, p, s in calls
               if s == "bootstrap" and not is_sbom(op, p, s))
    sbom = collections.Counter(op for op, p, s in calls if is_sbom(op, p, s))
    assert dict(sbom) == {op: k * n for op, k in SBOM_CALLS_PER_ROLE.items()}, sbom
    polls = [c for c in calls if is_poll(c)]
    assert_polls_are_batched(polls)
    # At most one Describe per poll round (a round counted by the wait itself; one region): a bake's
    # poll either fetches for every waiting bake or uses the answer another fetched. Besides its
    # rounds, stop looks once at each instance before waiting (is it stopped already?).
    polls_by_stage = collections.Counter(stage for _, _, stage in polls)
    for stage, made in polls_by_stage.items():
        outside_rounds = n if stage == "stop" else 0
        assert made <= rounds[stage] + outside_rounds, f"{stage}: {made} polls for {rounds[stage]} rounds"
    # publish's AMI lifecycle calls (no Packer counterpart), exactly.
    lifecycle = collections.Counter(c[0] for c in calls if is_ami_lifecycle(*c))
    assert dict(lifecycle) == {op: k * n for op, k in AMI_LIFECYCLE_CALLS_PER_ROLE.items()}, lifecycle
    others = [c for c in calls if not is_poll(c) and not is_ami_lifecycle(*c) and not is_sbom(*c)]
    # Batched look-ups: never more than one per role (fewer when the bakes' threads meet).
    batched = collections.Counter(_key(c) for c in others if _key(c) in BATCHED_LOOKUPS)
    assert set(batched) == BATCHED_LOOKUPS and all(1 <= k <= n for k in batched.values()), batched
    # Every other call, exactly: per role, or once per run for what every role shares (default VPC,
    # base AMI). Nothing read back that the bake has just written (no GetInstanceProfile, no GetObject).
    exact = collections.Counter(_key(c) for c in others if _key(c) not in BATCHED_LOOKUPS and c[2] != "boot-test")
    expected = {k: (1 if per is None else per * n) for k, per in EXACT_PER_ROLE.items()}
    # moto answers 500 to CreateImage with a snapshot TagSpecification (AWS accepts it): the first
    # CreateImage of the region is sent again without it, and the region is remembered.
    expected[("image", "ec2.CreateImage")] += 1
    assert dict(exact) == expected, f"calls besides polls and batched look-ups: {dict(exact)}"
    boot_test = collections.Counter(op for op, _, stage in others if stage == "boot-test")
    assert dict(boot_test) == {op: k * n for op, k in BOOT_TEST_PER_ROLE.items()}, boot_test
    # The goal: Packer's calls per bake (its waits' polls included). Ours without the polls (publish's
    # release-order guard aside: Packer publishes nothing), look-ups as batched: within it as well.
    per_role = (sum(exact.values()) - exact[("publish", "ssm.DescribeParameters")] + sum(batched.values())) / n
    assert per_role <= PACKER_CALLS_PER_BAKE, f"{per_role:.1f} AWS calls per role besides polls: {dict(exact)}"


def test_unchanged_roles_cost_a_few_calls_each(baked_twice):
    runs, roles = baked_twice
    n = len(roles)
    outcomes, calls, _ = runs["1.1"]
    assert [o.status for o in outcomes] == ["reused"] * n, [o.message for o in outcomes]
    per_op = collections.Counter(op for op, _, _ in calls)
    assert per_op["ec2.RunInstances"] == 0
    # Per role: the SSM parameter (who wrote it last, so latest never moves backwards; then the write)
    # and the run list; shared: base AMI, in-flight check, bake-key look-up.
    assert per_op["ssm.PutParameter"] == n and per_op["s3.PutObject"] == n
    assert per_op["ssm.DescribeParameters"] == n
    # The reused AMI gets a fresh deprecation time and stays protected; it supersedes nothing.
    lifecycle = collections.Counter(c[0] for c in calls if is_ami_lifecycle(*c))
    assert dict(lifecycle) == {op: k * n for op, k in AMI_LIFECYCLE_CALLS_PER_ROLE.items()}, lifecycle
    # Besides: the SSM value read back after each write, and the instance-type checks once per run.
    assert len(calls) - sum(lifecycle.values()) <= 4 * n + 2 * 3 + 2, per_op


# Items 2-6 of the AMI lifecycle issue in a role's second release (a new AMI superseding the previous
# one, whose SBOM the package diff reads), per role and API: the inventory read, the SBOM written, the
# previous SBOM read; the new AMI's deprecation time and protection, the superseded AMI's deprecation.
# Both the previous AMI and the superseded ones come from preflight's listing of the role's AMIs (its
# reuse look-up: batched, and made whether or not these features were there).
SECOND_RELEASE_PER_ROLE = {"s3.GetObject": 2, "s3.PutObject": 1, "ec2.EnableImageDeprecation": 2,
                           "ec2.EnableImageDeregistrationProtection": 1}
SECOND_RELEASE_ROLES = 3


def _first_release(direct: dict, ctx, packages: dict[str, str]) -> str:
    """A role's first release, stage by stage in process: preflight's listing, the SBOM step, the AMI as
    wait-image leaves it, publish. Returns the AMI."""
    open_bake(ctx, "ami-00000000")
    upload_inventory(direct["s3"], ctx, packages)
    record_role_amis(ctx)
    assert record_sbom(ctx).startswith("SBOM s3://")
    image_id = register_baked_ami(direct["ec2"], ctx)
    publish.run(ctx)
    return image_id


def test_a_second_release_costs_six_calls_per_role(moto_server, tmp_path, names):
    """The exact calls per role of items 2-6 (one stage at a time, no bake): 6, against the issue's goal
    of 4 -- each of the six is needed (bench/README.md says why); nothing is listed or read twice."""
    direct = {name: moto_server.client(name) for name in ("s3", "ec2")}
    try:
        direct["s3"].create_bucket(Bucket="acme-bakery")
    except direct["s3"].exceptions.BucketAlreadyOwnedByYou:
        pass
    roles = [names.role(f"second{i}") for i in range(SECOND_RELEASE_ROLES)]
    # Every context on one Aws, as the roles of `bakery bake` are (and its clients made once).
    aws = new_aws(moto_server)

    def context(role: str, release: str):
        ctx = make_ctx(moto_server, tmp_path / role / release, role=role)
        ctx.aws = aws
        return ctx
    first = {role: _first_release(direct, context(role, "1"), {"bash": "5.2.15-2", "nano": "7.2-1"})
             for role in roles}
    recorder = Recorder()
    aws.add_hook("provide-client-params", recorder)
    ctxs = {role: context(role, "2") for role in roles}
    for ctx in ctxs.values():
        open_bake(ctx, "ami-00000000")
        ctx.state.release = "2.0"
        upload_inventory(direct["s3"], ctx, {"bash": "5.2.15-3", "curl": "7.88.1"})
    with ThreadPoolExecutor(len(roles)) as pool:  # preflights starting together share their listing
        list(pool.map(record_role_amis, ctxs.values()))
    listings = recorder.count("ec2.DescribeImages")
    recorder.reset()
    messages = {}
    for role, ctx in ctxs.items():
        sbom = record_sbom(ctx)
        messages[role] = (sbom, publish.run(ctx) if register_baked_ami(direct["ec2"], ctx) else "")
    for role, (sbom, published) in messages.items():
        assert f"vs {first[role]} (release 1.0): 1 added, 1 removed, 1 changed" in sbom, sbom
        assert f"deprecated superseded us-east-1 {first[role]}" in published, published
        old, new = direct["ec2"].describe_images(ImageIds=[first[role], ctxs[role].state.image_id])["Images"]
        old, new = sorted((old, new), key=lambda i: i["ImageId"] != first[role])
        assert parse_aws_time(old["DeprecationTime"]) <= utcnow() + ROUNDING  # deprecated at once
        assert parse_aws_time(new["DeprecationTime"]) > utcnow() + ROUNDING
        assert new["DeregistrationProtection"].startswith("enabled")
    counted = collections.Counter(op for op, _, _ in recorder.calls)
    # publish's own calls besides these: who wrote latest, its write and read-back, the run list.
    publish_own = {"ssm.DescribeParameters": 1, "ssm.PutParameter": 1, "ssm.GetParameter": 1, "s3.PutObject": 1}
    expected: collections.Counter[str] = collections.Counter()
    for op, k in (*SECOND_RELEASE_PER_ROLE.items(), *publish_own.items()):
        expected[op] += k * len(roles)
    assert counted == expected, f"{dict(counted)} (no DescribeImages: the AMIs come from preflight's listing)"
    assert 1 <= listings <= len(roles)
    assert sum(SECOND_RELEASE_PER_ROLE.values()) == 6
