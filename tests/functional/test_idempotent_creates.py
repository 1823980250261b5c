"""Creates that stay single after a crash (moto server in process). AWS makes RunInstances and
CopyImage idempotent by ``ClientToken`` (same token, same parameters: the first call's answer; other
parameters: ``IdempotentParameterMismatch``; EC2 API reference, "Ensuring idempotency"), refuses a
second image of one name (``InvalidAMIName.Duplicate``), and tags at birth with ``TagSpecifications``.
moto honours none of the first three, so these tests check the requests the bakery sends and its
look-ups by tag, which work on both.
"""

from __future__ import annotations

import calendar
import time

import botocore.exceptions
import pytest
from support.stages import make_ctx, open_bake, unique_role

from bakery_lib.aws import tags_of
from bakery_lib.ec2.instances import instance_tags
from bakery_lib.errors import BakeryError
from bakery_lib.stages import iam_role, image, launch, publish, security_groups, stop


class Crash(Exception):
    """The process dies right after AWS carried the call out: its answer never reaches the state."""


def _prepared(moto_server, tmp_path, base_ami, role, **overrides):
    ctx = make_ctx(moto_server, tmp_path, overrides, role=role)
    open_bake(ctx, base_ami)
    security_groups.run(ctx)
    iam_role.run(ctx)
    for name in ("security-groups", "iam-role"):
        ctx.state.stage(name).status = "succeeded"
    ctx.save()
    return ctx


def _crash_after(ctx, operation):
    fired = []

    def hook(**_):
        if not fired:
            fired.append(1)
            raise Crash(operation)

    ctx.aws.add_hook(f"after-call.ec2.{operation}", hook)


def _recorder(ctx, operation):
    sent = []
    ctx.aws.add_hook(f"provide-client-params.ec2.{operation}", lambda params, **_: sent.append(dict(params)))
    return sent


def _rerun(ctx, stage_name):
    """A new process: the state as last saved, one more attempt of the stage."""
    ctx.state = ctx.ws.load(ctx.role.name)
    ctx.state.stage(stage_name).attempts = 2  # as run_stage counts the second attempt
    ctx.save()


def test_expires_at_comes_from_the_bake_id(moto_server, tmp_path, base_ami, request, monkeypatch):
    ctx = make_ctx(moto_server, tmp_path, {"bake_ttl": "2h"}, role=unique_role(request))
    open_bake(ctx, base_ami)
    first = instance_tags(ctx)
    monkeypatch.setattr(time, "time", lambda: 4102444800.0)  # a replay much later
    assert instance_tags(ctx) == first
    started = calendar.timegm(time.strptime(ctx.state.bake_id[:14], "%Y%m%d%H%M%S"))
    assert first["bakery:expires-at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started + 7200))


def test_kill_after_run_instances_then_rerun_one_instance(moto_server, tmp_path, base_ami, request):
    ctx = _prepared(moto_server, tmp_path, base_ami, unique_role(request))
    sent = _recorder(ctx, "RunInstances")
    _crash_after(ctx, "RunInstances")
    with pytest.raises(Crash):
        launch.run(ctx)
    _rerun(ctx, "launch")
    launch.run(ctx)
    ec2 = moto_server.client("ec2")
    found = ec2.describe_instances(Filters=[{"Name": "tag:bakery:bake-id", "Values": [ctx.state.bake_id]}])
    instances = [i for r in found["Reservations"] for i in r["Instances"]]
    assert [i["InstanceId"] for i in instances] == [ctx.state.instance_id]
    assert tags_of(instances[0])["bakery:role"] == ctx.role.name
    assert sent[0]["ClientToken"] == ctx.state.bake_id


def test_run_instances_read_timeout_retried_with_the_same_token(moto_server, tmp_path, base_ami, request):
    ctx = make_ctx(moto_server, tmp_path, role=unique_role(request))
    sent = _recorder(ctx, "RunInstances")
    lost = []

    def time_out(request, **_):
        if not lost:
            lost.append(1)
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=request.url)

    ctx.aws.add_hook("before-send.ec2.RunInstances", time_out)
    token = "tok-" + unique_role(request)
    out = ctx.aws.call("ec2", "us-east-1", "RunInstances", ImageId=base_ami, MinCount=1, MaxCount=1,
                       ClientToken=token)
    assert out["Instances"] and lost
    assert [p["ClientToken"] for p in sent] == [token, token]


def test_create_image_tags_snapshots_at_birth_else_falls_back(moto_server, tmp_path, base_ami, request):
    """moto answers 500 to a snapshot TagSpecification: the bakery tries it (AWS takes it), then
    creates the image with the image's only, once, and asks no more in that region."""
    ctx = _prepared(moto_server, tmp_path, base_ami, unique_role(request))
    sent = _recorder(ctx, "CreateImage")
    launch.run(ctx)
    stop.run(ctx)
    image.run(ctx)
    kinds = [[spec["ResourceType"] for spec in p["TagSpecifications"]] for p in sent]
    assert kinds == [["image", "snapshot"], ["image"]]
    assert "us-east-1" in ctx.aws.no_snapshot_tag_specs
    ec2 = moto_server.client("ec2")
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:bake-id",
                                                            "Values": [ctx.state.bake_id]}])["Images"]
    assert [i["ImageId"] for i in images] == [ctx.state.image_id]


def test_kill_after_create_image_then_rerun_one_image(moto_server, tmp_path, base_ami, request):
    ctx = _prepared(moto_server, tmp_path, base_ami, unique_role(request))
    launch.run(ctx)
    stop.run(ctx)
    _crash_after(ctx, "CreateImage")
    with pytest.raises(Crash):
        image.run(ctx)
    _rerun(ctx, "image")
    assert "already exists" in image.run(ctx)
    ec2 = moto_server.client("ec2")
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:bake-id",
                                                            "Values": [ctx.state.bake_id]}])["Images"]
    assert [i["ImageId"] for i in images] == [ctx.state.image_id]
    assert tags_of(images[0])["bakery:created-by"] == "bakery"


def _duplicate(**_):
    raise botocore.exceptions.ClientError({"Error": {"Code": "InvalidAMIName.Duplicate",
                                                     "Message": "AMI name is already in use"}}, "CreateImage")


def test_duplicate_name_of_our_own_image_is_adopted(moto_server, tmp_path, base_ami, request):
    """A CreateImage whose answer was lost, not seen by the look-up yet (eventual consistency): AWS
    refuses the second with InvalidAMIName.Duplicate, and the image of that name is this bake's."""
    ctx = _prepared(moto_server, tmp_path, base_ami, unique_role(request))
    launch.run(ctx)
    stop.run(ctx)
    name = f"bakery-{ctx.role.name}-1.0-{ctx.state.bake_id}"
    ec2 = moto_server.client("ec2")
    ours = ec2.create_image(InstanceId=ctx.state.instance_id, Name=name, TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": "bakery:bake-id", "Value": ctx.state.bake_id}]}])["ImageId"]
    ctx.aws.add_hook("before-call.ec2.CreateImage", _duplicate)
    image.run(ctx)
    assert ctx.state.image_id == ours


def test_duplicate_name_of_another_image_is_an_error(moto_server, tmp_path, base_ami, request):
    ctx = _prepared(moto_server, tmp_path, base_ami, unique_role(request))
    launch.run(ctx)
    stop.run(ctx)
    name = f"bakery-{ctx.role.name}-1.0-{ctx.state.bake_id}"
    other = moto_server.client("ec2").create_image(InstanceId=ctx.state.instance_id, Name=name)["ImageId"]
    ctx.aws.add_hook("before-call.ec2.CreateImage", _duplicate)
    with pytest.raises(BakeryError, match=f"an image named {name} already exists and is not this bake's \\({other}"):
        image.run(ctx)
    assert ctx.state.image_id is None


def test_copy_image_token_and_tags_at_birth(moto_server, tmp_path, base_ami, request):
    role = unique_role(request)
    s3 = moto_server.client("s3")
    try:
        s3.create_bucket(Bucket="acme-bakery")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    ctx = _prepared(moto_server, tmp_path, base_ami, role, copy_to_regions=["eu-west-2"])
    launch.run(ctx)
    stop.run(ctx)
    image.run(ctx)
    ctx.state.amis = {"us-east-1": ctx.state.image_id}
    ctx.save()
    sent = _recorder(ctx, "CopyImage")
    _crash_after(ctx, "CopyImage")
    with pytest.raises(Crash):
        publish.run(ctx)
    _rerun(ctx, "publish")
    publish.run(ctx)
    copies = moto_server.client("ec2", "eu-west-2").describe_images(Owners=["self"], Filters=[
        {"Name": "tag:bakery:bake-id", "Values": [ctx.state.bake_id]}])["Images"]
    # The first copy's answer was lost with the process and moto has no token: the rerun found no
    # tagged copy (moto ignores the copy's TagSpecifications too) and copied again with the same token,
    # which AWS would answer with the first copy. What the bakery recorded is tagged; the token is fixed.
    assert ctx.state.amis["eu-west-2"] in [c["ImageId"] for c in copies]
    assert {p["ClientToken"] for p in sent} == {f"copy-{ctx.state.bake_id}-eu-west-2"}
    assert all([s["ResourceType"] for s in p["TagSpecifications"]] == ["image", "snapshot"] for p in sent)
    assert all(tags_of(c)["bakery:role"] == role for c in copies if c["ImageId"] == ctx.state.amis["eu-west-2"])
