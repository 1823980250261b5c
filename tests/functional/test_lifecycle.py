"""Functional tests of ``prune`` and ``reap`` against a real moto server and a real goiardi.

Moto's AMIs are always ``available`` at once: pending/failed images are injected with a botocore
``after-call`` hook on the test's own ``Aws`` object (the server is untouched), and a refused
DeregisterImage with a ``before-parameter-build`` hook. Assertions read the result back through the
AWS and Chef APIs, as an operator would.

Isolation on the shared session moto: prune tests use their own role names; each reap test scans
only a region no other test uses. Reap lists every node of a Chef server, so the Chef tests get a
goiardi of their own (started once for this module) instead of the session one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import botocore.exceptions
import pytest
from support.proxy import FaultProxy, Rule
from support.stages import CATALOG as STAGES_CATALOG
from support.stages import new_aws

from bakery_lib.aws import Aws
from bakery_lib.catalog import RoleSpec, parse_catalog
from bakery_lib.chef import ChefClient
from bakery_lib.errors import UsageError
from bakery_lib.lifecycle import parse_duration, prune, reap
from bakery_lib.state import BakeState
from devstack._proc import free_port
from devstack.goiardi import GoiardiServer
from devstack.moto import MotoServer, seed_base_image

# The one-stage tests' defaults, with no role of their own (each test adds its roles).
CATALOG = {**STAGES_CATALOG, "roles": {}}
MUTATING = ("DeregisterImage", "DeleteSnapshot", "TerminateInstances", "CreateTags", "DeleteTags")


# --- helpers ---------------------------------------------------------------------------------------


def role_spec(tmp_path, name: str, **overrides: Any) -> RoleSpec:
    data = copy.deepcopy(CATALOG)
    data["roles"] = {name: {"platform": "linux", "base_ami": "ami-0123456789abcdef0", **overrides}}
    return parse_catalog(data, str(tmp_path / "bakery.yaml")).roles[name]


def mutations(aws: Aws) -> dict[str, int]:
    return {k: v for k, v in aws.counter.counts.items() if k.split(".")[-1].startswith(MUTATING)}


def inject_image_states(aws: Aws, states: dict[str, str]) -> None:
    """Make DescribeImages (as seen by this Aws only) report these images in these states."""

    def hook(parsed: dict[str, Any], **_: Any) -> None:
        for image in parsed.get("Images", []):
            if image["ImageId"] in states:
                image["State"] = states[image["ImageId"]]

    aws.add_hook("after-call.ec2.DescribeImages", hook)


def refuse_deregister(aws: Aws, image_id: str) -> None:
    def hook(params: dict[str, Any], **_: Any) -> None:
        if params.get("ImageId") == image_id:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized"}}, "DeregisterImage")

    aws.add_hook("before-parameter-build.ec2.DeregisterImage", hook)


def bake_id(n: int, suffix: str = "a") -> str:
    """Bake ids in creation order (moto's CreationDate has a one-second resolution)."""
    return f"20240101{n:06d}-{suffix * 6}"[:21]


class Account:
    """Seeds bakery-shaped resources in one region of moto."""

    def __init__(self, moto: MotoServer, region: str):
        self.region = region
        self.ec2 = moto.client("ec2", region)
        self.base = seed_base_image(self.ec2, name=f"lifecycle-base-{region}")

    def instance(self, tags: dict[str, str] | None = None, image_id: str | None = None) -> str:
        params: dict[str, Any] = {"ImageId": image_id or self.base, "MinCount": 1, "MaxCount": 1}
        if tags:
            params["TagSpecifications"] = [{"ResourceType": "instance",
                                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        return self.ec2.run_instances(**params)["Instances"][0]["InstanceId"]

    def ami(self, role: str, bid: str, *, managed: bool = True, name: str | None = None) -> str:
        """An AMI as the image stage makes it: tagged on CreateImage, its snapshots tagged after."""
        source = self.instance()
        tags = {"Name": name or f"bakery-{role}-1.0-{bid}", "bakery:role": role, "bakery:bake-id": bid,
                "bakery:release": "1.0"}
        if managed:
            tags["bakery:created-by"] = "bakery"
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        image_id = self.ec2.create_image(InstanceId=source, Name=tags["Name"],
                                         TagSpecifications=[{"ResourceType": "image", "Tags": tag_list}])["ImageId"]
        self.ec2.create_tags(Resources=self.snapshots(image_id), Tags=tag_list)
        self.ec2.terminate_instances(InstanceIds=[source])
        return image_id

    def snapshots(self, image_id: str) -> list[str]:
        image = self.ec2.describe_images(ImageIds=[image_id])["Images"][0]
        return [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]

    def image_exists(self, image_id: str) -> bool:
        return bool(self.ec2.describe_images(Filters=[{"Name": "image-id", "Values": [image_id]}])["Images"])

    def snapshot_exists(self, snapshot_id: str) -> bool:
        found = self.ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snapshot_id]}])
        return bool(found["Snapshots"])

    def instance_state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]["State"]["Name"]

    def orphan_snapshot(self, tags: dict[str, str]) -> str:
        volume = self.ec2.create_volume(AvailabilityZone=f"{self.region}a", Size=1)["VolumeId"]
        snap = self.ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{
            "ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["SnapshotId"]
        self.ec2.delete_volume(VolumeId=volume)
        return snap


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def bake_tags(bid: str, role: str, expires: float | str, purpose: str = "bake") -> dict[str, str]:
    return {"Name": f"bakery-{purpose}-{role}-1.0", "bakery:bake-id": bid, "bakery:role": role,
            "bakery:release": "1.0", "bakery:purpose": purpose, "bakery:chef-node": f"bake-{role}-{bid}",
            "bakery:expires-at": expires if isinstance(expires, str) else iso(expires)}


def open_state(role: str, bid: str) -> BakeState:
    return BakeState(role=role, bake_id=bid, release="1.0", region="us-east-1", platform="linux",
                     chef_node=f"bake-{role}-{bid}")


def by_resource(report) -> dict[str, Any]:
    return {line.resource: line for line in report.lines}


@pytest.fixture(scope="module")
def chef_server() -> Iterator[GoiardiServer]:
    with GoiardiServer() as server:
        yield server


def add_node_and_client(chef: ChefClient, name: str, *, client: bool = True) -> None:
    chef.request("POST", "/nodes", {"name": name, "chef_type": "node", "json_class": "Chef::Node",
                                    "chef_environment": "_default", "run_list": [], "automatic": {},
                                    "normal": {}, "default": {}, "override": {}})
    if client:
        chef.create_client(name)


# --- prune -----------------------------------------------------------------------------------------


def test_prune_keeps_newest_in_use_template_and_ssm(moto_server, tmp_path):
    role = "prune-keep"
    spec = role_spec(tmp_path, role, copy_to_regions=["us-west-1"], launch_template="prune-keep-lt")
    east, west = Account(moto_server, "us-east-1"), Account(moto_server, "us-west-1")
    amis = [east.ami(role, bake_id(i)) for i in range(8)]  # amis[0] oldest
    failed = east.ami(role, bake_id(9))  # the newest of all, but failed
    unmanaged = east.ami(role, bake_id(10), managed=False)
    other_role = east.ami("prune-other", bake_id(1))
    user = east.instance({"Name": "app-server"}, image_id=amis[5])
    east.ec2.create_launch_template(LaunchTemplateName="prune-keep-lt", LaunchTemplateData={"ImageId": amis[3]})
    east.ec2.create_launch_template_version(LaunchTemplateName="prune-keep-lt", LaunchTemplateData={"ImageId": amis[4]})
    moto_server.client("ssm", "us-east-1").put_parameter(
        Name=f"/bakery/{role}/latest", Value=amis[2], Type="String", DataType="aws:ec2:image", Overwrite=True)
    # The copy region has neither the template nor the parameter: both are tolerated.
    west_amis = [west.ami(role, bake_id(i)) for i in range(3)]
    snaps = {a: east.snapshots(a) for a in amis + [failed]} | {a: west.snapshots(a) for a in west_amis}

    # The bakery's own scan, as when DescribeImageReferences is refused (tests/functional/test_fleet_amis.py
    # has EC2's references).
    with FaultProxy(moto_server.url) as proxy:
        proxy.add(Rule("DescribeImageReferences", times=None))
        aws = new_aws(SimpleNamespace(url=proxy.url))
        inject_image_states(aws, {failed: "failed"})
        logged: list[str] = []
        report = prune(aws, spec, 2, dry_run=False, log=logged.append)
    assert "DescribeImageReferences failed (UnauthorizedOperation)" in report.text()

    assert report.exit_code == 0, report.text()
    decisions = {d.image_id: d for d in report.decisions}
    gone = [amis[0], amis[1], failed, west_amis[0]]
    assert sorted(d.image_id for d in report.deleted) == sorted(gone)
    for image_id in gone:
        assert decisions[image_id].action == "deleted"
        region = west if image_id in west_amis else east
        assert not region.image_exists(image_id)
        assert snaps[image_id] and not any(region.snapshot_exists(s) for s in snaps[image_id])
    # What stays, each with its reason; the failed image did not take one of the two places.
    assert "newest 2" in decisions[amis[7]].reason and "newest 2" in decisions[amis[6]].reason
    assert f"in use by instance {user} (running)" in decisions[amis[5]].reason
    assert "latest version 2 of launch template prune-keep-lt" in decisions[amis[4]].reason
    assert "default version 1 of launch template prune-keep-lt" in decisions[amis[3]].reason
    assert f"SSM parameter /bakery/{role}/latest" in decisions[amis[2]].reason
    for image_id in amis[2:] + west_amis[1:] + [unmanaged, other_role]:
        region = west if image_id in west_amis else east
        assert region.image_exists(image_id), image_id
        assert all(region.snapshot_exists(s) for s in snaps.get(image_id, []))
    # Images without the bakery's tags, or of another role, are not even looked at.
    assert unmanaged not in decisions and other_role not in decisions
    text = report.text()
    assert f"us-east-1 {amis[5]}" in text and "kept: in use by instance" in text
    assert "4 AMI(s) deleted, 8 kept" in text
    assert any(amis[0] in line for line in logged)


def test_prune_dry_run_failure_and_rerun(moto_server, tmp_path):
    role = "prune-dry"
    spec = role_spec(tmp_path, role, launch_template="prune-dry-missing-lt")
    east = Account(moto_server, "us-east-1")
    amis = [east.ami(role, bake_id(i)) for i in range(3)]
    snaps = {a: east.snapshots(a) for a in amis}

    aws = new_aws(moto_server)
    dry = prune(aws, spec, 1, dry_run=True)
    assert dry.exit_code == 0
    assert [(d.image_id, d.action) for d in dry.decisions] == [
        (amis[2], "kept"), (amis[1], "would delete"), (amis[0], "would delete")]
    assert "2 AMI(s) would delete" in dry.text()
    assert mutations(aws) == {}
    assert all(east.image_exists(a) and all(east.snapshot_exists(s) for s in snaps[a]) for a in amis)

    # One deregistration is refused: the other AMI still goes, the report names what to do, exit 1.
    aws = new_aws(moto_server)
    refuse_deregister(aws, amis[1])
    report = prune(aws, spec, 1, dry_run=False)
    assert report.exit_code == 1
    decisions = {d.image_id: d for d in report.decisions}
    assert decisions[amis[1]].action == "failed" and "UnauthorizedOperation" in decisions[amis[1]].reason
    assert decisions[amis[0]].action == "deleted"
    assert f"aws ec2 deregister-image --region us-east-1 --image-id {amis[1]}" in report.text()
    assert east.image_exists(amis[1]) and all(east.snapshot_exists(s) for s in snaps[amis[1]])
    assert not east.image_exists(amis[0]) and not any(east.snapshot_exists(s) for s in snaps[amis[0]])

    # A rerun finishes the job; another one finds nothing to do and changes nothing.
    aws = new_aws(moto_server)
    assert prune(aws, spec, 1, dry_run=False).exit_code == 0
    assert not east.image_exists(amis[1]) and not any(east.snapshot_exists(s) for s in snaps[amis[1]])
    again = prune(aws := new_aws(moto_server), spec, 1, dry_run=False)
    assert [(d.image_id, d.action) for d in again.decisions] == [(amis[2], "kept")]
    assert mutations(aws) == {} and east.image_exists(amis[2])


def test_prune_refuses_keep_zero(moto_server, tmp_path):
    with pytest.raises(UsageError, match="--keep 0"):
        prune(new_aws(moto_server), role_spec(tmp_path, "prune-zero"), 0, dry_run=True)


def test_parse_duration():
    assert parse_duration("90s") == 90 and parse_duration("45m") == 2700 and parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400 and parse_duration("3d") == 259200 and parse_duration("0") == 0
    for bad in ("12", "2 hours", "h", "-1h", ""):
        with pytest.raises(UsageError, match="--older-than"):
            parse_duration(bad)


# --- reap ------------------------------------------------------------------------------------------


def test_reap_terminates_expired_bake_instances_only(moto_server):
    acct = Account(moto_server, "ca-central-1")
    now = time.time()
    expired = acct.instance(bake_tags(bake_id(1), "web", now - 2 * 3600))
    fresh = acct.instance(bake_tags(bake_id(2), "web", now + 3600))
    launch = acct.instance(bake_tags(bake_id(3), "web", now - 2 * 3600, purpose="launch"))
    plain = acct.instance({"Name": "someone-elses"})
    no_expiry = acct.instance(bake_tags(bake_id(4), "web", "soon"))
    regions = ["ca-central-1"]

    # Expired by 2 h, but --older-than 3h: kept.
    aws = new_aws(moto_server)
    report = reap(aws, regions, None, older_than=3 * 3600, now=now, dry_run=False)
    assert by_resource(report)[expired].action == "kept" and mutations(aws) == {}

    aws = new_aws(moto_server)
    dry = reap(aws, regions, None, older_than=3600, now=now, dry_run=True)
    assert by_resource(dry)[expired].action == "would terminate"
    assert mutations(aws) == {} and acct.instance_state(expired) == "running"

    report = reap(aws, regions, None, older_than=3600, now=now, dry_run=False)
    lines = by_resource(report)
    assert report.exit_code == 0, report.text()
    assert lines[expired].action == "terminated" and "expired 2.0 h ago" in lines[expired].reason
    assert acct.instance_state(expired) in ("shutting-down", "terminated")
    assert lines[fresh].action == "kept" and lines[no_expiry].action == "kept"
    assert "no valid bakery:expires-at" in lines[no_expiry].reason
    assert launch not in lines and plain not in lines
    for instance_id in (fresh, launch, plain, no_expiry):
        assert acct.instance_state(instance_id) == "running"
    assert report.chef_skipped == "not asked to (--no-chef)"

    # Idempotent: nothing left to do, no mutating call.
    aws = new_aws(moto_server)
    again = reap(aws, regions, None, now=now, dry_run=False)
    assert again.removed == [] and mutations(aws) == {} and again.exit_code == 0


def test_reap_unfinished_images_and_orphan_snapshots(moto_server):
    acct = Account(moto_server, "eu-north-1")
    now = time.time()
    abandoned = acct.ami("web", bake_id(1, "a"))  # pending, nobody owns it
    claimed = acct.ami("web", bake_id(2, "b"))  # failed, but its bake is open in the workspace
    good = acct.ami("web", bake_id(3, "c"))  # available: never reap's business
    unmanaged = acct.ami("web", bake_id(4, "d"), managed=False)  # pending, not the bakery's
    running = acct.ami("web", bake_id(5, "e"))  # pending, its bake instance is alive
    acct.instance(bake_tags(bake_id(5, "e"), "web", now + 3600))
    copy_src = acct.ami("web", bake_id(6, "f"))  # available ...
    copying = acct.ami("web", bake_id(6, "f"), name="bakery-web-1.0-copy")  # ... and its copy still pending
    failed_test = acct.ami("web", bake_id(9, "1"))  # available, but its boot test failed: never usable
    passed_test = acct.ami("web", bake_id(9, "2"))  # available and passed: prune's business
    acct.ec2.create_tags(Resources=[failed_test], Tags=[{"Key": "bakery:boot-test", "Value": "failed"}])
    acct.ec2.create_tags(Resources=[passed_test], Tags=[{"Key": "bakery:boot-test", "Value": "passed"}])
    orphan = acct.orphan_snapshot({"bakery:bake-id": bake_id(7, "0"), "bakery:role": "web"})
    untagged = acct.orphan_snapshot({"Name": "hand-made"})
    snaps = {i: acct.snapshots(i) for i in (abandoned, claimed, good, unmanaged, running, copy_src, copying,
                                            failed_test, passed_test)}
    states = {abandoned: "pending", claimed: "failed", unmanaged: "pending", running: "pending", copying: "pending"}
    workspace = [open_state("web", bake_id(2, "b"))]
    regions = ["eu-north-1"]

    def aws_with_states() -> Aws:
        aws = new_aws(moto_server)
        inject_image_states(aws, states)
        return aws

    # Everything was made just now: with --older-than 1d nothing goes.
    aws = aws_with_states()
    young = reap(aws, regions, None, older_than=86400, workspace_states=workspace, now=now, dry_run=False)
    assert young.removed == [] and mutations(aws) == {}
    assert "within --older-than" in by_resource(young)[abandoned].reason

    aws = aws_with_states()
    dry = reap(aws, regions, None, workspace_states=workspace, now=now, dry_run=True)
    # The display-only executor shows what the teardown loop would remove: the image, then its snapshots.
    assert {(r.resource, r.action) for r in dry.removed} == {
        (abandoned, "would deregister"), (failed_test, "would deregister"), (orphan, "would delete")} | {
        (s, "would delete") for s in snaps[abandoned] + snaps[failed_test]}
    assert mutations(aws) == {} and acct.image_exists(abandoned) and acct.snapshot_exists(orphan)

    report = reap(aws_with_states(), regions, None, workspace_states=workspace, now=now, dry_run=False)
    assert report.exit_code == 0, report.text()
    lines = by_resource(report)
    assert lines[abandoned].action == "deregistered" and "pending image of bake" in lines[abandoned].reason
    assert not acct.image_exists(abandoned) and not any(acct.snapshot_exists(s) for s in snaps[abandoned])
    assert all(lines[s].action == "deleted" for s in snaps[abandoned])
    assert lines[orphan].action == "deleted" and not acct.snapshot_exists(orphan)
    assert lines[claimed].action == "kept" and "open in the workspace" in lines[claimed].reason
    assert lines[running].action == "kept" and "still running" in lines[running].reason
    assert lines[copying].action == "kept" and "copy in progress" in lines[copying].reason
    assert lines[failed_test].action == "deregistered" and not acct.image_exists(failed_test)
    assert not any(acct.snapshot_exists(s) for s in snaps[failed_test])
    for image_id in (claimed, good, unmanaged, running, copy_src, copying, passed_test):
        assert acct.image_exists(image_id) and all(acct.snapshot_exists(s) for s in snaps[image_id])
    assert good not in lines and passed_test not in lines and unmanaged not in lines and untagged not in lines
    assert acct.snapshot_exists(untagged)

    aws = aws_with_states()
    again = reap(aws, regions, None, workspace_states=workspace, now=now, dry_run=False)
    assert again.removed == [] and mutations(aws) == {}


def test_reap_chef_nodes_without_live_instance(moto_server, chef_server):
    acct = Account(moto_server, "sa-east-1")
    chef = chef_server.client()
    now = time.time()
    orphan, live, expired, claimed = (f"bake-web-{bake_id(1, 'a')}", f"bake-web-{bake_id(2, 'b')}",
                                      f"bake-web-{bake_id(3, 'c')}", f"bake-api-{bake_id(4, 'd')}")
    for name in (orphan, live, expired, claimed):
        add_node_and_client(chef, name)
    add_node_and_client(chef, "bake-server-01", client=False)  # hand-made: not the bakery's naming
    add_node_and_client(chef, "prod-web-1")
    live_instance = acct.instance(bake_tags(bake_id(2, "b"), "web", now + 3600))
    expired_instance = acct.instance(bake_tags(bake_id(3, "c"), "web", now - 3600))
    workspace = [open_state("api", bake_id(4, "d"))]  # between preflight and launch: no instance yet

    aws = new_aws(moto_server)
    dry = reap(aws, ["sa-east-1"], chef, workspace_states=workspace, now=now, dry_run=True)
    assert {(r.kind, r.resource, r.action) for r in dry.removed} == {
        ("instance", expired_instance, "would terminate"),
        ("chef-node", orphan, "would delete"), ("chef-client", orphan, "would delete"),
        ("chef-node", expired, "would delete"), ("chef-client", expired, "would delete")}
    assert mutations(aws) == {}
    assert chef.node_exists(orphan) and chef.client_exists(orphan) and chef.node_exists(expired)

    report = reap(aws, ["sa-east-1"], chef, workspace_states=workspace, now=now, dry_run=False)
    assert report.exit_code == 0, report.text()
    assert report.chef_skipped is None
    for name in (orphan, expired):
        assert not chef.node_exists(name) and not chef.client_exists(name)
    for name in (live, claimed):
        assert chef.node_exists(name) and chef.client_exists(name)
    assert chef.node_exists("bake-server-01") and chef.node_exists("prod-web-1") and chef.client_exists("prod-web-1")
    assert acct.instance_state(live_instance) == "running"
    assert acct.instance_state(expired_instance) in ("shutting-down", "terminated")
    kept = {(r.kind, r.resource): r.reason for r in report.lines if r.action == "kept"}
    assert "live instance" in kept[("chef-node", live)]
    assert "not a bakery bake name" in kept[("chef-node", "bake-server-01")]
    assert ("chef-node", "prod-web-1") not in kept
    assert f"chef-client {orphan}: deleted" in report.text()

    again = reap(aws, ["sa-east-1"], chef, workspace_states=workspace, now=now, dry_run=False)
    assert again.removed == [] and again.exit_code == 0


def test_reap_with_chef_unreachable_still_cleans_aws(moto_server, chef_server):
    acct = Account(moto_server, "ap-southeast-2")
    now = time.time()
    expired = acct.instance(bake_tags(bake_id(1), "web", now - 60))
    down = ChefClient(f"http://127.0.0.1:{free_port()}", chef_server.admin_name, chef_server.admin_key_path,
                      timeout=2)

    report = reap(new_aws(moto_server), ["ap-southeast-2"], down, now=now, dry_run=False)
    assert report.exit_code == 1
    assert by_resource(report)[expired].action == "terminated"
    assert acct.instance_state(expired) in ("shutting-down", "terminated")
    assert "unreachable" in (report.chef_skipped or "")
    assert "Chef SKIPPED: Chef server http://127.0.0.1:" in report.text()

    # No Chef identity configured at all: said so, exit 1 (a cron job must not look green).
    report = reap(new_aws(moto_server), ["ap-southeast-2"], None, now=now, dry_run=False,
                  chef_error="Chef API identity not configured: CHEF_SERVER_URL not set")
    assert report.exit_code == 1 and "CHEF_SERVER_URL not set" in report.text()


def test_reap_removes_the_chef_identity_of_an_instance_it_terminates(moto_server, chef_server):
    """Even when --older-than would keep a node by its age: its instance is gone, so is the identity."""
    acct = Account(moto_server, "eu-north-1")
    chef = chef_server.client()
    now = time.time()
    bid = time.strftime("%Y%m%d%H%M%S", time.gmtime(now - 600)) + "-e1e1e1"  # a bake started 10 min ago
    node = f"bake-web-{bid}"
    add_node_and_client(chef, node)
    expired = acct.instance(bake_tags(bid, "web", now - 3 * 3600))  # its TTL ran out 3 h ago

    report = reap(new_aws(moto_server), ["eu-north-1"], chef, older_than=3600, now=now, dry_run=False)
    assert report.exit_code == 0, report.text()
    assert by_resource(report)[expired].action == "terminated"
    assert not chef.client_exists(node) and not chef.node_exists(node)
    assert "its bake instance was terminated by this reap" in report.text()


def test_reap_bake_id_removes_one_bake_whatever_its_expiry(moto_server, chef_server):
    acct = Account(moto_server, "ca-central-1")
    chef = chef_server.client()
    now = time.time()
    target, other = bake_id(5, "f"), bake_id(6, "e")
    target_instance = acct.instance(bake_tags(target, "web", now + 3600))  # not expired: a bake "in flight"
    other_instance = acct.instance(bake_tags(other, "web", now - 3600))  # expired, but not the one named
    pending = acct.ami("web", target)
    pending_snaps = acct.snapshots(pending)
    add_node_and_client(chef, f"bake-web-{target}")
    add_node_and_client(chef, f"bake-web-{other}")
    aws = new_aws(moto_server)
    inject_image_states(aws, {pending: "pending"})

    dry = reap(aws, ["ca-central-1"], chef, now=now, dry_run=True, bake_id=target)
    assert {(r.kind, r.resource) for r in dry.removed} == {
        ("instance", target_instance), ("image", pending),
        ("chef-client", f"bake-web-{target}"), ("chef-node", f"bake-web-{target}")} | {
        ("snapshot", s) for s in pending_snaps}
    assert mutations(aws) == {}

    report = reap(aws, ["ca-central-1"], chef, now=now, dry_run=False, bake_id=target)
    assert report.exit_code == 0, report.text()
    assert acct.instance_state(target_instance) in ("shutting-down", "terminated")
    assert acct.instance_state(other_instance) == "running"
    assert not acct.image_exists(pending) and not any(acct.snapshot_exists(s) for s in pending_snaps)
    assert not chef.node_exists(f"bake-web-{target}") and chef.node_exists(f"bake-web-{other}")


def test_reap_tears_a_bake_down_through_its_stages_cleanups_boot_test_included(moto_server, chef_server):
    """reap knows nothing of a boot test: the abandoned bake's record goes through every stage's cleanup,
    and the boot-test stage's own cleanup finds its instance by the bake id and removes it with its Chef
    identity. A dry run shows the same removals and changes nothing."""
    acct = Account(moto_server, "ap-northeast-2")
    chef = chef_server.client()
    now = time.time()
    bid = bake_id(8, "b")
    node, test_node = f"bake-web-{bid}", f"bake-web-boot-test-{bid}"
    add_node_and_client(chef, node)
    add_node_and_client(chef, test_node)
    image = acct.ami("web", bid)  # available, untested: the bake was stopped during its boot test
    snaps = acct.snapshots(image)
    test_tags = dict(bake_tags(bid, "web", now - 2 * 3600, purpose="boot-test"), **{"bakery:chef-node": test_node})
    tester = acct.instance(test_tags, image_id=image)
    regions = ["ap-northeast-2"]

    aws = new_aws(moto_server)
    dry = reap(aws, regions, chef, now=now, dry_run=True)
    # (Chef leftovers of the other tests on this module's Chef server are reaped too: not looked at here.)
    mine = {tester, node, test_node}
    mine |= {image, *snaps}
    assert {(r.kind, r.resource, r.action) for r in dry.removed if r.resource in mine} == {
        ("instance", tester, "would terminate"),
        ("chef-client", test_node, "would delete"), ("chef-node", test_node, "would delete"),
        ("chef-client", node, "would delete"), ("chef-node", node, "would delete"),
        ("image", image, "would deregister"), *{("snapshot", s, "would delete") for s in snaps}}, dry.text()
    assert mutations(aws) == {} and acct.instance_state(tester) == "running" and chef.node_exists(test_node)

    report = reap(aws, regions, chef, now=now, dry_run=False)
    assert report.exit_code == 0, report.text()
    assert by_resource(report)[tester].action == "terminated"
    assert "expired 2.0 h ago" in by_resource(report)[tester].reason
    assert acct.instance_state(tester) in ("shutting-down", "terminated")
    for name in (node, test_node):
        assert not chef.node_exists(name) and not chef.client_exists(name)
    assert f"chef-node {test_node}: deleted: its instance was terminated by this reap" in report.text()
    # Its AMI never passed the boot test, so nothing may ever use it: it goes, with its snapshots.
    assert not acct.image_exists(image) and not any(acct.snapshot_exists(s) for s in snaps)

    aws = new_aws(moto_server)
    again = reap(aws, regions, chef, now=now, dry_run=False)
    assert again.removed == [] and mutations(aws) == {}
