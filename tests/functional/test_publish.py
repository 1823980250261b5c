"""Functional tests of the publish stage against moto server: copies, sharing, SSM, launch template,
run list in S3, artifacts, and the cleanup of an unfinished copy.
"""

from __future__ import annotations

import json

import pytest
from support.stages import baked_image, publish_ctx, unique_role

from bakery_lib.cleanup import cleanup
from bakery_lib.ec2.images import retag_image
from bakery_lib.errors import BakeryError
from bakery_lib.stages import publish

ACCOUNT = "111122223333"


@pytest.fixture()
def baked(moto_server, tmp_path, request):
    """A role with an available AMI in us-east-1, as wait-image leaves it."""
    role = unique_role(request)
    image_id, _ = baked_image(moto_server, f"bakery-{role}-1.0-x", role)
    return role, image_id


def _ctx(moto_server, tmp_path, role, image_id, **overrides):
    return publish_ctx(moto_server, tmp_path, role, image_id, overrides, bake_id="b-" + role)


def test_publish_copies_shares_and_writes_ssm_everywhere(moto_server, tmp_path, baked):
    role, image_id = baked
    ec2 = moto_server.client("ec2")
    lt = ec2.create_launch_template(LaunchTemplateName=f"lt-{role}",
                                    LaunchTemplateData={"ImageId": image_id, "InstanceType": "t3.small"})
    ctx = _ctx(moto_server, tmp_path, role, image_id, copy_to_regions=["eu-west-1", "ap-south-1"],
               share_with_accounts=[ACCOUNT], launch_template=f"lt-{role}", share_snapshots=True,
               kms_key_id="alias/bakery-ebs",
               region_kms_keys={"eu-west-1": "alias/bakery-ebs", "ap-south-1": "alias/bakery-ebs"})
    message = publish.run(ctx)
    assert "published" in message
    amis = ctx.state.amis
    assert set(amis) == {"us-east-1", "eu-west-1", "ap-south-1"}
    for region, ami in amis.items():
        regional = moto_server.client("ec2", region)
        img = regional.describe_images(ImageIds=[ami])["Images"][0]
        assert img["State"] == "available"
        tags = {t["Key"]: t["Value"] for t in img.get("Tags", [])}
        assert tags["bakery:role"] == role and tags["bakery:created-by"] == "bakery"
        perms = regional.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
        assert {"UserId": ACCOUNT} in perms
        param = moto_server.client("ssm", region).get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]
        assert param["Value"] == ami and param.get("DataType", "aws:ec2:image") == "aws:ec2:image"
    assert not ctx.state.pending_copies
    for region in ("eu-west-1", "ap-south-1"):  # each copy named once, not again per region
        assert message.count(amis[region]) == 1, message
    # the launch template's new default version points at the new AMI
    lt_id = lt["LaunchTemplate"]["LaunchTemplateId"]
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Default"])
    assert versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"] == image_id
    assert versions["LaunchTemplateVersions"][0]["VersionNumber"] == 2
    # the first-boot run list and the artifacts
    body = moto_server.client("s3").get_object(Bucket="acme-bakery", Key=f"runlists/{role}.json")["Body"].read()
    assert json.loads(body) == {"run_list": [f"recipe[roles::{role}_launch]"]}
    art = json.loads((tmp_path / "artifacts" / f"{role}.json").read_text())
    assert art["amis"] == amis
    props = (tmp_path / "artifacts" / "amis.properties").read_text()
    assert f"AMI_{role.upper()}_EU_WEST_1={amis['eu-west-1']}" in props
    assert ctx.state.closed and ctx.state.outcome == "succeeded"


def test_runlist_written_only_when_changed(moto_server, tmp_path, baked):
    role, image_id = baked
    ctx = _ctx(moto_server, tmp_path, role, image_id)
    assert publish.publish_runlist(ctx).endswith("written")
    assert publish.publish_runlist(ctx).endswith("unchanged")
    ctx2 = _ctx(moto_server, tmp_path, role, image_id, run_lists={"launch": ["recipe[base]", "role[x]"]})
    assert publish.publish_runlist(ctx2).endswith("written")


def test_missing_launch_template_is_a_clear_failure(moto_server, tmp_path, baked):
    role, image_id = baked
    ctx = _ctx(moto_server, tmp_path, role, image_id, launch_template="no-such-template")
    with pytest.raises(BakeryError, match="launch_template.*does not exist"):
        publish.run(ctx)


def test_failed_copy_fails_publish_and_cleanup_removes_it(moto_server, tmp_path, baked):
    role, image_id = baked
    ctx = _ctx(moto_server, tmp_path, role, image_id, copy_to_regions=["eu-central-1"])

    def copy_failed(parsed, **_):
        for img in parsed.get("Images", []):
            if img["ImageId"] != image_id:
                img["State"] = "failed"
                img["StateReason"] = {"Code": "x", "Message": "copy broke"}

    ctx.aws.add_hook("after-call.ec2.DescribeImages", copy_failed)
    with pytest.raises(BakeryError, match="eu-central-1.*copy broke"):
        publish.run(ctx)
    copy_id = ctx.state.pending_copies["eu-central-1"]
    assert not ctx.state.closed
    ctx.state.chef_node = None
    ctx.state.instance_terminated = True
    report = cleanup(ctx)
    assert not report.errors, report.text()
    left = moto_server.client("ec2", "eu-central-1").describe_images(
        Filters=[{"Name": "image-id", "Values": [copy_id]}])["Images"]
    assert left == []
    # the good AMI in the build region is kept
    assert moto_server.client("ec2").describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available"


def test_reused_ami_gets_the_catalogues_tags_of_today(moto_server, tmp_path, baked):
    """retag_image, as preflight calls it with its reuse look-up's image (no extra Describe call)."""
    role, image_id = baked
    ec2 = moto_server.client("ec2")
    snap = ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    old = [{"Key": "team", "Value": "old-team"}, {"Key": "cost-center", "Value": "42"}]
    ec2.create_tags(Resources=[image_id, snap], Tags=old)
    ctx = _ctx(moto_server, tmp_path, role, image_id, tags={"team": "platform", "env": "prod"})
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    note = retag_image(ctx, "us-east-1", image)
    assert note == f"{image_id} re-tagged in us-east-1 (set env, team; removed cost-center)"
    for resource in (image_id, snap):
        found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource]}])["Tags"]
        tags = {t["Key"]: t["Value"] for t in found}
        assert tags.get("team") == "platform" and tags.get("env") == "prod", (resource, tags)
        assert "cost-center" not in tags, (resource, tags)  # a catalogue tag no longer listed
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    image_tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert image_tags["bakery:role"] == role and image_tags["bakery:created-by"] == "bakery"
    assert retag_image(ctx, "us-east-1", image) == ""  # unchanged catalogue: no call, no note


def test_an_older_bake_finishing_late_never_moves_latest_backwards(moto_server, tmp_path, baked):
    """Two deploys in quick succession: the bake of the older release finishes after the newer one's.
    The newer image stays /bakery/ROLE/latest and the launch template's default; the older bake says so."""
    role, older_image = baked
    ec2 = moto_server.client("ec2")
    ssm = moto_server.client("ssm")
    newer_image, base = baked_image(moto_server, f"bakery-{role}-2.0-x")
    lt = ec2.create_launch_template(LaunchTemplateName=f"lt-{role}", LaunchTemplateData={"ImageId": base})
    lt_id = lt["LaunchTemplate"]["LaunchTemplateId"]

    def bake(image_id, bake_id, release, where):
        ctx = _ctx(moto_server, tmp_path / where, role, image_id, launch_template=f"lt-{role}")
        ctx.state.bake_id, ctx.state.release = bake_id, release
        ctx.save()
        return publish.run(ctx)

    bake(newer_image, "20261129110000-bbbbbb", "2.0", "newer")
    message = bake(older_image, "20261129100000-aaaaaa", "1.0", "older")
    latest = ssm.get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]["Value"]
    assert latest == newer_image, message
    assert "kept: bake 20261129110000-bbbbbb of release 2.0 published after this bake started" in message
    default = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["$Default"])
    assert default["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"] == newer_image

    # A later bake (a newer deploy, or a deliberate rebuild of an old release) moves it on.
    bake(older_image, "20261129120000-cccccc", "1.0", "rebuild")
    assert ssm.get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]["Value"] == older_image
