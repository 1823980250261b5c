"""One stage at a time through the realism layer's counted behaviours (``support/realism.py``): what
AWS's eventual consistency, failures and limits do to a stage, each played a counted number of times
(or on a ``ManualClock``), so a loaded machine changes nothing.

- a ``failed`` image: wait-image fails on the first poll that shows it, with AWS's reason, and cleanup
  removes the image and its snapshots;
- flicker: an AMI wait-image recorded, shown ``pending`` again by the next describe, is kept by cleanup;
- vanish: an image seen, then missing from two describes, then seen again, is waited for (not gone);
- ``VcpuLimitExceeded``: launch fails at once naming the role and the instance type;
- per-API token buckets: an empty DescribeVpcs bucket throttles DescribeVpcs only, and the bakery's
  back-off is that API's alone;
- SSM read-after-write: publish's read-back of ``latest`` waits through a lagging value;
- sharing an AMI whose snapshots use the default ``aws/ebs`` key is refused as AWS does;
- snapshot tag lag: a cleanup killed right after DeregisterImage leaves the image's snapshots in its
  state, so the next cleanup deletes them although their tag does not show yet;
- launch template version lag: publish makes its new version the default although ModifyLaunchTemplate
  does not know it for two calls (no second version made).
"""

from __future__ import annotations

import types

import botocore.exceptions
import pytest
from support.bakes import direct_aws
from support.proxy import FaultProxy, Hold, Rule
from support.realism import ManualClock, Realism
from support.stages import make_ctx, open_bake, unique_role

from bakery_lib.cleanup import cleanup
from bakery_lib.clock import Clock
from bakery_lib.errors import BakeryError
from bakery_lib.stages import iam_role, image, launch, security_groups, stop, wait_image
from bakery_lib.stages.base import Context
from bakery_lib.stages.publish import put_ssm, update_launch_template
from devstack._boto import session as shared_session
from devstack.moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

# Nothing timed: every window of the layer is off unless a test sets it.
QUIET = {"invisible": 0, "pending": 0, "stopping": 0, "shutting_down": 0, "image_pending": 0, "iam": 0}


class InstantClock(Clock):
    """The product's clock for these tests: a pause passes at once (the layer counts calls, not time)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0
        self.pauses: list[float] = []

    def now(self) -> float:
        return self.t

    def pause(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        self.t += max(0.0, seconds)
        return False


def _ctx(proxy: FaultProxy, tmp_path, base_ami: str, role: str):
    ctx = make_ctx(types.SimpleNamespace(url=proxy.url), tmp_path, role=role)
    open_bake(ctx, base_ami)
    ctx.state.chef_node = None  # no Chef server in these tests
    security_groups.run(ctx)
    iam_role.run(ctx)
    for name in ("security-groups", "iam-role"):
        ctx.state.stage(name).status = "succeeded"
    ctx.save()
    return ctx


def _imaged(proxy: FaultProxy, tmp_path, base_ami: str, role: str):
    ctx = _ctx(proxy, tmp_path, base_ami, role)
    launch.run(ctx)
    stop.run(ctx)
    image.run(ctx)
    return ctx


def _client(url: str, service: str = "ec2"):
    return shared_session().client(service, endpoint_url=url, region_name="us-east-1",
                                          aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)


def test_a_failed_image_fails_wait_image_at_once_with_its_reason_and_cleanup_leaves_nothing(
        moto_server, proxy: FaultProxy, tmp_path, base_ami, request):
    proxy.realism = realism = Realism(**QUIET, fail_images=1)
    ctx = _imaged(proxy, tmp_path, base_ami, unique_role(request))
    image_id = ctx.state.image_id
    ec2 = moto_server.client("ec2")
    snaps = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]
             ["BlockDeviceMappings"] if "Ebs" in m]
    mark = proxy.mark()
    with pytest.raises(BakeryError, match=rf"image {image_id} is failed: Server.InternalError"):
        wait_image.run(ctx)
    assert [c.operation for c in proxy.calls_since(mark)] == ["DescribeImages"], "not failed at the first poll"
    assert realism.count("failed") == 1 and ctx.state.amis == {}
    report = cleanup(ctx)
    assert not report.errors, report.text()
    assert ec2.describe_images(ImageIds=[image_id])["Images"] in ([], [{"State": "deregistered"}]) or \
        ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "deregistered"
    assert ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snaps}])["Snapshots"] == []


def test_a_recorded_ami_shown_pending_again_by_a_replica_behind_is_kept(moto_server, proxy: FaultProxy, tmp_path,
                                                                       base_ami, request):
    proxy.realism = realism = Realism(**QUIET, flicker=1)
    ctx = _imaged(proxy, tmp_path, base_ami, unique_role(request))
    wait_image.run(ctx)  # shows it available: the next describe of it shows it pending
    assert ctx.state.amis == {"us-east-1": ctx.state.image_id}
    report = cleanup(ctx)  # (a bake failing after wait-image, e.g. in publish, keeps its AMI)
    assert realism.count(f"flicker: {ctx.state.image_id}") == 1
    assert moto_server.client("ec2").describe_images(ImageIds=[ctx.state.image_id])["Images"][0]["State"] == \
        "available", report.text()


def test_an_image_seen_then_missing_from_two_describes_is_waited_for(proxy: FaultProxy, tmp_path, base_ami,
                                                                     request):
    clock = ManualClock()
    # Pending until the test's clock moves: it moves once the image went missing twice after being seen.
    proxy.realism = realism = Realism(**{**QUIET, "image_pending": 100.0}, vanish=2, clock=clock)
    realism.hooks["vanish: ami-"] = lambda: clock.advance(200) if realism.count("vanish: ami-") == 2 else None
    ctx = _imaged(proxy, tmp_path, base_ami, unique_role(request))
    assert "available" in wait_image.run(ctx)
    assert realism.count(f"vanish: {ctx.state.image_id}") == 2


def test_vcpu_limit_exceeded_fails_the_launch_naming_role_and_instance_type(proxy: FaultProxy, tmp_path, base_ami,
                                                                            request):
    role = unique_role(request)
    proxy.realism = realism = Realism(**QUIET, vcpu_limit=2)
    ctx = _ctx(proxy, tmp_path, base_ami, role)
    ec2 = _client(proxy.url)
    other = ec2.run_instances(ImageId=base_ami, MinCount=1, MaxCount=1, InstanceType="t3.small")
    try:
        with pytest.raises(BakeryError) as info:
            launch.run(ctx)
    finally:
        ec2.terminate_instances(InstanceIds=[other["Instances"][0]["InstanceId"]])
    text = str(info.value)
    itype = ctx.role.instance_types[0] if ctx.role.instance_types else ctx.role.instance_type
    assert f"role {role!r}: RunInstances refused instance type {itype} (VcpuLimitExceeded)" in text
    assert "vCPU quota" in text and ctx.state.instance_id is None
    assert realism.count("vcpu") == 1, "tried again: the quota does not free itself"


def test_an_empty_api_bucket_throttles_that_api_only_and_the_back_off_is_its_own(devstack, proxy: FaultProxy):
    clock = ManualClock()
    proxy.realism = realism = Realism(**QUIET, buckets={"non-mutating": (1, 1.0)}, clock=clock)
    realism.hooks["bucket"] = lambda: clock.advance(1.0)  # one token comes back once the bucket said empty
    aws = direct_aws(devstack, proxy.url, max_attempts=0)
    region = devstack.region
    aws.call("ec2", region, "DescribeVpcs")
    aws.call("ec2", region, "DescribeSubnets")  # its own bucket: full, whatever DescribeVpcs did
    assert proxy.injected() == []
    aws.call("ec2", region, "DescribeVpcs")  # empty: throttled once, backed off, served
    assert [c.operation for c in proxy.injected()] == ["DescribeVpcs"]
    assert aws.gate.tripped() == [aws.gate_key("ec2", region, "DescribeVpcs")]
    assert aws.gate.remaining(aws.gate_key("ec2", region, "DescribeSubnets")) == 0


def test_the_ssm_read_back_waits_through_a_lagging_value(proxy: FaultProxy, tmp_path, base_ami, request):
    role = unique_role(request)
    proxy.realism = realism = Realism(**QUIET, ssm_lag=2)
    ctx = make_ctx(types.SimpleNamespace(url=proxy.url), tmp_path, role=role)
    open_bake(ctx, base_ami)
    put_ssm(ctx, "us-east-1", base_ami)  # new: not found twice, then the value
    second = _client(proxy.url).copy_image(SourceImageId=base_ami, SourceRegion="us-east-1", Name=f"{role}-copy")
    put_ssm(ctx, "us-east-1", second["ImageId"])  # changed: the old value twice, then the new one
    assert realism.count("ssm: ") == 4
    assert _client(proxy.url, "ssm").get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]["Value"] == \
        second["ImageId"]


def test_sharing_an_ami_under_the_default_ebs_key_is_refused(moto_server, proxy: FaultProxy, base_ami):
    proxy.realism = realism = Realism(**QUIET)
    via = _client(proxy.url)
    root = moto_server.client("ec2").describe_images(ImageIds=[base_ami])["Images"][0]["RootDeviceName"]
    inst = via.run_instances(ImageId=base_ami, MinCount=1, MaxCount=1, BlockDeviceMappings=[
        {"DeviceName": root, "Ebs": {"VolumeSize": 8, "Encrypted": True}}])["Instances"][0]["InstanceId"]
    key = moto_server.client("kms").create_key()["KeyMetadata"]["Arn"]
    mine = via.create_image(InstanceId=inst, Name=f"share-default-{inst}")["ImageId"]
    via.terminate_instances(InstanceIds=[inst])
    cmk = via.copy_image(SourceImageId=mine, SourceRegion="us-east-1", Name=f"share-cmk-{inst}", Encrypted=True,
                         KmsKeyId=key)["ImageId"]
    share = {"Add": [{"UserId": "210987654321"}]}
    with pytest.raises(botocore.exceptions.ClientError, match="default AWS managed key") as info:
        via.modify_image_attribute(ImageId=mine, LaunchPermission=share)
    assert info.value.response["Error"]["Code"] == "InvalidParameter"
    via.modify_image_attribute(ImageId=cmk, LaunchPermission=share)  # a customer managed key: shared
    assert realism.count("share") == 1
    for image_id in (mine, cmk):
        via.deregister_image(ImageId=image_id)


def test_a_new_tag_lags_in_describes_and_in_their_tag_filters(proxy: FaultProxy, base_ami):
    proxy.realism = realism = Realism(**QUIET, tag_lag=1)
    via = _client(proxy.url)
    iid = via.run_instances(ImageId=base_ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    try:
        via.create_tags(Resources=[iid], Tags=[{"Key": "rl:lag", "Value": "new"}])
        by_tag = [{"Name": "tag:rl:lag", "Values": ["new"]}, {"Name": "instance-id", "Values": [iid]}]
        assert via.describe_instances(Filters=by_tag)["Reservations"] == []  # a replica without the tag
        shown = via.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert {t["Key"]: t["Value"] for t in shown.get("Tags", [])}.get("rl:lag") == "new"  # caught up
        assert realism.count(f"tag lag: {iid} not matched") == 1
    finally:
        via.terminate_instances(InstanceIds=[iid])


def test_a_new_launch_template_version_unknown_for_two_calls_is_made_the_default(proxy: FaultProxy, tmp_path,
                                                                                base_ami, request):
    role = unique_role(request)
    name = f"lt-{role}"
    proxy.realism = realism = Realism(**QUIET, lt_lag=2)
    via = _client(proxy.url)
    template = via.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": base_ami})
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    ctx = make_ctx(types.SimpleNamespace(url=proxy.url), tmp_path, {"launch_template": name}, role=role)
    open_bake(ctx, base_ami)
    ctx.clock = clock = InstantClock()
    image_id = via.copy_image(SourceImageId=base_ami, SourceRegion="us-east-1", Name=f"{role}-new")["ImageId"]
    assert update_launch_template(ctx, "us-east-1", image_id) == \
        f"launch template {name} in us-east-1 default version 2 -> {image_id}"
    assert realism.count(f"launch template: ModifyLaunchTemplate on {name} version 2") == 2
    assert len(clock.pauses) == 2, "not retried on the product's clock"
    versions = via.describe_launch_template_versions(LaunchTemplateId=template_id)["LaunchTemplateVersions"]
    assert sorted(v["VersionNumber"] for v in versions) == [1, 2]  # one new version, not one per try
    default = [v for v in versions if v["DefaultVersion"]]
    assert [(v["VersionNumber"], v["LaunchTemplateData"]["ImageId"]) for v in default] == [(2, image_id)]
    # A describe naming a version just made lags the same way (by name or id).
    via.create_launch_template_version(LaunchTemplateId=template_id, SourceVersion="2",
                                       LaunchTemplateData={"ImageId": base_ami})
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidLaunchTemplateId.VersionNotFound"):
        via.describe_launch_template_versions(LaunchTemplateName=name, Versions=["3"])


def test_a_cleanup_killed_after_deregister_image_leaves_its_snapshots_known_to_the_next(
        moto_server, proxy: FaultProxy, tmp_path, base_ami, request):
    """The image's snapshots are tagged by CreateTags here (moto refuses their TagSpecifications), and
    that tag shows late: a look-up by tag cannot be what the next cleanup relies on."""
    proxy.realism = realism = Realism(**QUIET, tag_lag=3)
    ctx = _imaged(proxy, tmp_path, base_ami, unique_role(request))
    wait_image.run(ctx)  # CreateTags on the image's snapshots: their bake-id tag lags from here
    snaps = sorted(ctx.state.snapshot_ids)
    assert snaps
    # A kill between that CreateTags and its state write (tag first, record second): no snapshot, no AMI.
    ctx.state.snapshot_ids, ctx.state.amis = [], {}
    ctx.save()
    # The cleanup of that bake, killed right after DeregisterImage went through: what its state file holds
    # then is all the next cleanup has (its DeleteSnapshot calls never got through).
    path = ctx.ws.state_path(ctx.role.name)
    left: list[bytes] = []
    hold = Hold("DeregisterImage", callback=lambda: (left.append(path.read_bytes()), hold.release.set()))
    proxy.add(hold, Rule("DeleteSnapshot", times=None))
    cleanup(ctx)
    assert left, "DeregisterImage was never sent"
    proxy.rules.clear()
    path.write_bytes(left[0])
    again = Context(ws=ctx.ws, catalog=ctx.catalog, role=ctx.role, aws=ctx.aws, settings=ctx.settings,
                    log_fn=lambda m: None)
    again.state = again.ws.load(ctx.role.name)
    report = cleanup(again)
    assert realism.count("tag lag: snap-") >= 1, "the snapshots' tag never lagged"
    assert not report.errors, report.text()
    assert moto_server.client("ec2").describe_snapshots(
        Filters=[{"Name": "snapshot-id", "Values": snaps}])["Snapshots"] == [], report.text()
