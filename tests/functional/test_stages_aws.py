"""Functional tests: one stage at a time against a real moto server (no Chef needed here).

The bake record is built by hand where a test starts in the middle of a bake; assertions read what
a user would see through the AWS API.
"""

from __future__ import annotations

import json

import pytest
from support.stages import CATALOG, make_ctx, open_bake, unique_role  # noqa: F401

from bakery_lib.cleanup import cleanup
from bakery_lib.errors import AwsError, BakeryError
from bakery_lib.stages import iam_role, image, launch, run_stage, security_groups, stop, terminate, wait_image
from bakery_lib.state import Workspace


def test_security_group_default_no_ingress_then_converges(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = make_ctx(moto_server, tmp_path, role=role)
    open_bake(ctx, base_ami)
    security_groups.run(ctx)
    ec2 = moto_server.client("ec2")
    group = ec2.describe_security_groups(GroupIds=[ctx.state.security_group_id])["SecurityGroups"][0]
    assert group["GroupName"] == f"bakery-{role}"
    assert group["IpPermissions"] == []
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert tags["bakery:managed"] == "true" and tags["bakery:role"] == role

    # Someone opens SSH by hand; the catalogue now wants 443 from the VPC only.
    ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ctx2 = make_ctx(moto_server, tmp_path, {"ingress": [{"port": 443, "cidr": "10.0.0.0/8"}]}, role=role)
    ctx2.state = ctx.state
    message = security_groups.run(ctx2)
    assert "1 rule(s) added, 1 revoked" in message
    perms = ec2.describe_security_groups(GroupIds=[group["GroupId"]])["SecurityGroups"][0]["IpPermissions"]
    assert [(p["FromPort"], p["IpRanges"][0]["CidrIp"]) for p in perms] == [(443, "10.0.0.0/8")]
    # Converged: a rerun changes nothing and keeps the same group.
    assert "0 rule(s) added, 0 revoked" in security_groups.run(ctx2)
    assert ctx2.state.security_group_id == group["GroupId"]


def test_security_group_not_managed_is_refused(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ec2 = moto_server.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    ec2.create_security_group(GroupName=f"bakery-{role}", Description="hand made", VpcId=vpc)
    ctx = make_ctx(moto_server, tmp_path, role=role)
    open_bake(ctx, base_ami)
    with pytest.raises(BakeryError, match="not managed by the bakery"):
        security_groups.run(ctx)


def test_iam_role_least_privilege_and_converges(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    arn = moto_server.client("iam").create_policy(
        PolicyName=f"extra-{role}", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "arn:aws:ssm:*:*:parameter/x"}]}),
    )["Policy"]["Arn"]
    ctx = make_ctx(moto_server, tmp_path, {"managed_policies": [arn]}, role=role)
    open_bake(ctx, base_ami)
    iam_role.run(ctx)
    iam = moto_server.client("iam")
    name = f"bakery-{role}"
    got = iam.get_role(RoleName=name)["Role"]
    assert {t["Key"]: t["Value"] for t in got["Tags"]} == {"bakery:managed": "true", "bakery:role": role}
    policy = iam.get_role_policy(RoleName=name, PolicyName="bakery-instance")["PolicyDocument"]
    if isinstance(policy, str):
        policy = json.loads(policy)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert sorted(by_sid["ReadRunListAndValidatorKey"]["Resource"]) == [
        "arn:aws:s3:::acme-bakery/chef/validator.pem", f"arn:aws:s3:::acme-bakery/runlists/{role}.json"]
    assert by_sid["AlertOnFailure"]["Resource"] == CATALOG["defaults"]["alert_topic_arn"]
    assert by_sid["TagOnlyItself"]["Condition"]["StringEquals"] == {"aws:ARN": "${ec2:SourceInstanceARN}"}
    assert not any(s["Action"] == "*" or s.get("Resource") == "*" for s in policy["Statement"])
    attached = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]]
    assert attached == [arn]
    profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [name]
    # The catalogue drops the managed policy: the next run detaches it.
    ctx2 = make_ctx(moto_server, tmp_path, role=role)
    ctx2.state = ctx.state
    assert "detached" in iam_role.run(ctx2)
    assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []


def _prepared(moto_server, tmp_path, base_ami, role):
    ctx = make_ctx(moto_server, tmp_path, role=role)
    open_bake(ctx, base_ami)
    security_groups.run(ctx)
    iam_role.run(ctx)
    for name in ("security-groups", "iam-role"):
        ctx.state.stage(name).status = "succeeded"
    ctx.save()
    return ctx


def test_launch_secure_defaults_and_rerun_never_launches_twice(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = _prepared(moto_server, tmp_path, base_ami, role)
    launch.run(ctx)
    ec2 = moto_server.client("ec2")
    instance_id = ctx.state.instance_id
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/bakery-{role}")
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    for key in ("Name", "bakery:bake-id", "bakery:role", "bakery:release", "bakery:purpose", "bakery:chef-node",
                "bakery:expires-at"):
        assert key in tags
    assert tags["bakery:purpose"] == "bake" and tags["bakery:chef-node"] == ctx.state.chef_node
    vol_ids = [m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]]
    vols = ec2.describe_volumes(VolumeIds=vol_ids)["Volumes"]
    assert vols and all(v["Encrypted"] for v in vols)
    userdata = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    import base64
    assert b"PRIVATE KEY" not in base64.b64decode(userdata)

    # A rerun after a lost state write finds the instance by its bake-id tag.
    ctx.state.instance_id = None
    ctx.state.stage("launch").attempts = 2  # as run_stage counts a second attempt
    ctx.save()
    assert "already exists" in launch.run(ctx)
    assert ctx.state.instance_id == instance_id
    running = ec2.describe_instances(Filters=[{"Name": "tag:bakery:bake-id", "Values": [ctx.state.bake_id]}])
    assert sum(len(r["Instances"]) for r in running["Reservations"]) == 1


def test_launch_retries_iam_propagation(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = _prepared(moto_server, tmp_path, base_ami, role)
    failures = {"left": 2}

    def inject(params, **_):
        if failures["left"]:
            failures["left"] -= 1
            from botocore.exceptions import ClientError
            raise ClientError({"Error": {"Code": "InvalidParameterValue",
                                         "Message": "Value (bakery-x) for parameter iamInstanceProfile.name is "
                                                    "invalid. Invalid IAM Instance Profile name"}}, "RunInstances")

    ctx.aws.add_hook("before-call.ec2.RunInstances", inject)
    launch.run(ctx)
    assert failures["left"] == 0 and ctx.state.instance_id


def test_stop_image_wait_terminate_and_tags(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = _prepared(moto_server, tmp_path, base_ami, role)
    launch.run(ctx)
    stop.run(ctx)
    ec2 = moto_server.client("ec2")
    assert ec2.describe_instances(InstanceIds=[ctx.state.instance_id])["Reservations"][0]["Instances"][0][
        "State"]["Name"] == "stopped"
    assert "stopped" in stop.run(ctx)  # already stopped (a Windows bake stops itself) is accepted
    image.run(ctx)
    image_id = ctx.state.image_id
    assert image_id and json.loads((tmp_path / ".bakery" / f"{role}.json").read_text())["image_id"] == image_id
    wait_image.run(ctx)
    img = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in img["Tags"]}
    assert tags["bakery:role"] == role and tags["bakery:created-by"] == "bakery"
    assert tags["bakery:bake-key"] == "k" * 32 and tags["bakery:base-ami"] == base_ami
    assert img["Name"] == f"bakery-{role}-1.0-{ctx.state.bake_id}"
    snaps = [m["Ebs"]["SnapshotId"] for m in img["BlockDeviceMappings"] if "Ebs" in m]
    assert snaps and sorted(snaps) == sorted(ctx.state.snapshot_ids)
    for snap in ec2.describe_snapshots(SnapshotIds=snaps)["Snapshots"]:
        assert {t["Key"]: t["Value"] for t in snap["Tags"]}["bakery:bake-id"] == ctx.state.bake_id
    assert ctx.state.amis == {"us-east-1": image_id}
    # rerun of image adopts, never creates a second one
    ctx.state.stage("image").attempts = 2
    assert "already exists" in image.run(ctx)
    terminate.run(ctx)
    assert ec2.describe_instances(InstanceIds=[ctx.state.instance_id])["Reservations"][0]["Instances"][0][
        "State"]["Name"] == "terminated"


def test_wait_image_failed_reports_reason_and_timeout_keeps_id(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = _prepared(moto_server, tmp_path, base_ami, role)
    launch.run(ctx)
    stop.run(ctx)
    image.run(ctx)

    def as_state(state, reason=None):
        def hook(parsed, **_):
            for img in parsed.get("Images", []):
                img["State"] = state
                if reason:
                    img["StateReason"] = {"Code": "Server.InternalError", "Message": reason}
        return hook

    ctx.aws.add_hook("after-call.ec2.DescribeImages", as_state("failed", "Snapshot creation failed"))
    with pytest.raises(BakeryError, match="is failed: Snapshot creation failed"):
        wait_image.run(ctx)

    ctx2 = make_ctx(moto_server, tmp_path, {"image_timeout": "1s"}, role=role)
    ctx2.state = ctx.state
    ctx2.aws.add_hook("after-call.ec2.DescribeImages", as_state("pending"))
    from bakery_lib.errors import StageTimeout
    with pytest.raises(StageTimeout, match="rerun"):
        wait_image.run(ctx2)
    assert Workspace(tmp_path).load(role).image_id == ctx.state.image_id


def test_cleanup_removes_pending_image_keeps_available_and_is_idempotent(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = _prepared(moto_server, tmp_path, base_ami, role)
    ctx.state.chef_node = None  # no Chef in this test
    launch.run(ctx)
    stop.run(ctx)
    image.run(ctx)
    ec2 = moto_server.client("ec2")
    img = ec2.describe_images(ImageIds=[ctx.state.image_id])["Images"][0]
    snaps = [m["Ebs"]["SnapshotId"] for m in img["BlockDeviceMappings"] if "Ebs" in m]

    def pending(parsed, **_):
        for i in parsed.get("Images", []):
            i["State"] = "pending"

    ctx.aws.add_hook("after-call.ec2.DescribeImages", pending)
    report = cleanup(ctx)
    assert not report.errors, report.text()
    assert ec2.describe_images(ImageIds=[img["ImageId"]])["Images"] == [] or \
        ec2.describe_images(ImageIds=[img["ImageId"]])["Images"][0]["State"] == "deregistered"
    left = ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snaps}])["Snapshots"]
    assert left == []
    inst = ec2.describe_instances(InstanceIds=[ctx.state.instance_id])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "terminated"
    saved = Workspace(tmp_path).load(role)
    assert saved.closed and saved.instance_terminated
    assert "nothing" in cleanup(ctx).text() or not cleanup(ctx).errors  # idempotent


def test_cleanup_keeps_available_image(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = _prepared(moto_server, tmp_path, base_ami, role)
    ctx.state.chef_node = None
    launch.run(ctx)
    stop.run(ctx)
    image.run(ctx)
    wait_image.run(ctx)
    report = cleanup(ctx)
    assert any("available image" in k for k in report.kept)
    assert moto_server.client("ec2").describe_images(ImageIds=[ctx.state.image_id])["Images"][0]["State"] == "available"


def test_out_of_order_stage_refused_with_junit(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    ctx = make_ctx(moto_server, tmp_path, role=role)
    open_bake(ctx, base_ami)
    result = run_stage(ctx, "stop")
    assert result.exit_code == 2
    assert "stage 'security-groups' must run first" in result.message
    xml = (tmp_path / "reports" / f"{role}-stop.xml").read_text()
    assert "<failure" in xml and "must run first" in xml


def test_aws_errors_are_translated(moto_server, tmp_path):
    ctx = make_ctx(moto_server, tmp_path)
    with pytest.raises(AwsError) as err:
        ctx.ec2("TerminateInstances", InstanceIds=["i-0123456789abcdef0"])
    assert err.value.code.startswith("InvalidInstanceID")
    assert "TerminateInstances" in str(err.value)
