"""AWS's AMI features in the bakery, against moto behind the devstack's AMI layer: base images from SSM
parameters, deprecation and deregistration protection at publish, prune on deprecated AMIs only with
the protection lifted (and AWS's cooldown) once nothing points at an AMI; and the layer's own
strictness (what EC2 refuses), since a stand-in more lenient than EC2 would hide product bugs.

The cooldown test runs on a moto + layer of its own: it moves the layer's clock forward a day, which
would put every other test's "now" in the layer's past.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import botocore.exceptions
import pytest
from support import stages as support_stages
from support.proxy import FaultProxy, Rule
from support.stages import make_ctx, new_aws, open_bake, unique_role

from bakery_lib.amis.retire import parse_aws_time
from bakery_lib.catalog import parse_catalog
from bakery_lib.errors import BakeryError, CatalogError
from bakery_lib.lifecycle import prune
from bakery_lib.stages import preflight, publish
from devstack.ami_layer import LayeredMoto
from devstack.moto import seed_base_image

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _image(moto, image_id: str, region: str = "us-east-1") -> dict:
    return moto.client("ec2", region).describe_images(ImageIds=[image_id])["Images"][0]


def _baked_ami(moto, role: str, n: int) -> str:
    """An available AMI of ``role`` as wait-image leaves it (tagged like the bakery's)."""
    ec2 = moto.client("ec2")
    try:
        moto.client("s3").create_bucket(Bucket="acme-bakery")
    except botocore.exceptions.ClientError:
        pass
    return seed_base_image(ec2, f"bakery-{role}-{n}", tags={
        "bakery:role": role, "bakery:created-by": "bakery", "bakery:bake-id": f"2026010100000{n}-{role[:6]}"})


def _publish(moto, tmp_path, role: str, image_id: str, **overrides):
    ctx = make_ctx(moto, tmp_path / image_id, overrides, role=role)
    open_bake(ctx, "ami-00000000")
    ctx.state.image_id = image_id
    ctx.state.amis = {"us-east-1": image_id}
    ctx.save()
    return ctx, publish.run(ctx)


# --- the layer: as strict as EC2 ------------------------------------------------------------------


def test_layer_refuses_what_ec2_refuses(moto_server):
    ec2 = moto_server.client("ec2")
    image = seed_base_image(ec2, "layer-strict-1")

    def code(call, **params) -> str:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            call(**params)
        return err.value.response["Error"]["Code"]

    assert code(ec2.enable_image_deprecation, ImageId="ami-0123456789abcdef0",
                DeprecateAt=_now() + timedelta(days=1)) == "InvalidAMIID.NotFound"
    assert code(ec2.enable_image_deprecation, ImageId=image,
                DeprecateAt=_now() - timedelta(hours=1)) == "InvalidParameterValue"
    assert code(ec2.enable_image_deprecation, ImageId=image,
                DeprecateAt=_now() + timedelta(days=3660)) == "InvalidParameterValue"
    assert code(ec2.enable_image_deregistration_protection, ImageId="ami-0123456789abcdef0") == "InvalidAMIID.NotFound"
    # Seconds are rounded to the nearest minute, as EC2 documents.
    ec2.enable_image_deprecation(ImageId=image, DeprecateAt=datetime(2030, 1, 1, 10, 0, 40, tzinfo=timezone.utc))
    assert _image(moto_server, image)["DeprecationTime"] == "2030-01-01T10:01:00.000Z"
    ec2.disable_image_deprecation(ImageId=image)
    assert "DeprecationTime" not in _image(moto_server, image)
    # Protected without cooldown: refused until disabled, then deregistrable at once.
    ec2.enable_image_deregistration_protection(ImageId=image, WithCooldown=False)
    assert _image(moto_server, image)["DeregistrationProtection"] == "enabled-without-cooldown"
    assert code(ec2.deregister_image, ImageId=image) == "OperationNotPermitted"
    ec2.disable_image_deregistration_protection(ImageId=image)
    assert "DeregistrationProtection" not in _image(moto_server, image)
    ec2.deregister_image(ImageId=image)


# --- 1. base images from SSM parameters -----------------------------------------------------------


def test_ssm_base_ami_is_resolved_in_the_region_and_moves_the_bake_key(moto_server, tmp_path, request):
    role = unique_role(request)
    # moto seeds AWS's public Amazon Linux parameters, with images behind them.
    ctx = make_ctx(moto_server, tmp_path, {"base_ami": f"resolve:ssm:{AL2023}"}, role=role)
    public = moto_server.client("ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]
    assert preflight.resolve_base_ami(ctx) == public

    # An account's own parameter: a new value is a new bake key, the same value the same key.
    ssm, ec2 = moto_server.client("ssm"), moto_server.client("ec2")
    first, second = seed_base_image(ec2, "ssm-base-1"), seed_base_image(ec2, "ssm-base-2")
    name = f"/acme/{role}/base"
    ssm.put_parameter(Name=name, Value=first, Type="String", DataType="aws:ec2:image", Overwrite=True)
    ctx = make_ctx(moto_server, tmp_path, {"base_ami": f"resolve:ssm:{name}"}, role=role)
    resolved = preflight.resolve_base_ami(ctx)
    key = preflight.bake_key(ctx.role, resolved, {})
    assert resolved == first
    ssm.put_parameter(Name=name, Value=second, Type="String", DataType="aws:ec2:image", Overwrite=True)
    ctx = make_ctx(moto_server, tmp_path, {"base_ami": f"resolve:ssm:{name}"}, role=role)
    assert preflight.resolve_base_ami(ctx) == second
    assert preflight.bake_key(ctx.role, second, {}) != key
    assert preflight.bake_key(ctx.role, first, {}) == key

    missing = make_ctx(moto_server, tmp_path, {"base_ami": f"resolve:ssm:/acme/{role}/nothing"}, role=role)
    with pytest.raises(BakeryError, match=rf"role '{role}', key 'base_ami': SSM parameter /acme/{role}/nothing "
                                          "does not exist in us-east-1"):
        preflight.resolve_base_ami(missing)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("base_ami", "resolve:ssm:aws/service/x", "is not an SSM parameter reference"),
    ("deprecate_after", 0, "out of range 1..3650"),
    ("deprecate_after", "3 weeks", "expected a number of days"),
])
def test_new_keys_are_validated_at_load(key, value, message):
    data = {**support_stages.CATALOG, "roles": {"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0",
                                                        key: value}}}
    with pytest.raises(CatalogError, match=rf"role 'web', key '{key}': .*{message}"):
        parse_catalog(data, "bakery.yaml")


# --- 2./3. deprecation and protection at publish --------------------------------------------------


def test_publish_deprecates_later_protects_and_supersedes_at_once(moto_server, tmp_path, request):
    role = unique_role(request)
    old, new = _baked_ami(moto_server, role, 1), _baked_ami(moto_server, role, 2)
    before = _now()
    _, message = _publish(moto_server, tmp_path, role, old, deprecate_after=30)
    image = _image(moto_server, old)
    deprecates = parse_aws_time(image["DeprecationTime"])
    assert deprecates is not None
    assert before + timedelta(days=30) - timedelta(minutes=1) <= deprecates <= _now() + timedelta(days=30, minutes=1)
    assert image["DeregistrationProtection"] == "enabled-with-cooldown"
    assert "deregistration protection on" in message

    _, message = _publish(moto_server, tmp_path, role, new, deprecate_after=30)
    superseded = parse_aws_time(_image(moto_server, old)["DeprecationTime"])
    assert superseded is not None and superseded <= _now() + timedelta(minutes=1)
    assert f"deprecated superseded us-east-1 {old}" in message
    assert parse_aws_time(_image(moto_server, new)["DeprecationTime"]) > _now() + timedelta(days=29)
    # A person cannot deregister the AMI the fleet launches from (nor the previous one, for rollback).
    for image_id in (old, new):
        with pytest.raises(botocore.exceptions.ClientError, match="OperationNotPermitted"):
            moto_server.client("ec2").deregister_image(ImageId=image_id)


@pytest.mark.parametrize("operation", ["EnableImageDeprecation", "EnableImageDeregistrationProtection"])
def test_publish_failing_on_a_new_call_publishes_nothing(moto_server, tmp_path, request, operation):
    role = unique_role(request)
    image = _baked_ami(moto_server, role, 1)
    with FaultProxy(moto_server.url) as proxy:
        proxy.add(Rule(operation))
        via_proxy = SimpleNamespace(url=proxy.url)
        with pytest.raises(BakeryError, match="UnauthorizedOperation"):
            _publish(via_proxy, tmp_path, role, image)
    with pytest.raises(botocore.exceptions.ClientError, match="ParameterNotFound"):
        moto_server.client("ssm").get_parameter(Name=f"/bakery/{role}/latest")
    # A rerun publishes it whole.
    _, message = _publish(moto_server, tmp_path, role, image)
    assert moto_server.client("ssm").get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]["Value"] == image
    assert _image(moto_server, image)["DeregistrationProtection"] == "enabled-with-cooldown"


def test_superseding_failing_once_leaves_the_publish_whole(moto_server, tmp_path, request):
    role = unique_role(request)
    old, new = _baked_ami(moto_server, role, 1), _baked_ami(moto_server, role, 2)
    _publish(moto_server, tmp_path, role, old)
    with FaultProxy(moto_server.url) as proxy:
        # The new AMI's own deprecation goes through; the superseded one's (the second call) fails.
        proxy.add(Rule("EnableImageDeprecation", skip=1))
        _, message = _publish(SimpleNamespace(url=proxy.url), tmp_path, role, new)
    assert "the next publish does it" in message
    assert moto_server.client("ssm").get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]["Value"] == new
    assert parse_aws_time(_image(moto_server, old)["DeprecationTime"]) > _now() + timedelta(days=80)


# --- prune: deprecated AMIs only; protection lifted with AWS's cooldown ---------------------------


@pytest.fixture()
def own_moto() -> Iterator[LayeredMoto]:
    # One per test: tests move the layer's clock forward (AWS's cooldowns), which must not reach the
    # next test, whatever the order.
    with LayeredMoto() as server:
        yield server


def test_prune_acts_on_deprecated_amis_and_waits_out_the_cooldown(own_moto, tmp_path):
    role = "prune-fleet"
    amis = [_baked_ami(own_moto, role, n) for n in range(1, 4)]
    for image_id in amis:  # three releases, in order: each supersedes the one before
        ctx, _ = _publish(own_moto, tmp_path, role, image_id)
    spec = ctx.role
    # An AMI of the role that a newer one has not superseded (its deprecation ahead) stays.
    current = amis[2]

    dry = prune(new_aws(own_moto), spec, 1, dry_run=True)
    decisions = {d.image_id: d for d in dry.decisions}
    assert "value of SSM parameter" in decisions[current].reason or "newest 1" in decisions[current].reason
    assert "would lift its deregistration protection" in decisions[amis[0]].reason
    assert _image(own_moto, amis[0])["DeregistrationProtection"] == "enabled-with-cooldown"

    report = prune(new_aws(own_moto), spec, 1, dry_run=False)
    decisions = {d.image_id: d for d in report.decisions}
    assert report.exit_code == 0, report.text()
    for image_id in amis[:2]:
        assert decisions[image_id].action == "kept"
        assert "deregistration protection lifted, deletable after" in decisions[image_id].reason
        assert _image(own_moto, image_id)["DeregistrationProtection"].startswith("disabled-until ")
    # Within the cooldown a second prune still keeps them, and says until when.
    again = {d.image_id: d for d in prune(new_aws(own_moto), spec, 1, dry_run=False).decisions}
    assert "in AWS's cooldown until" in again[amis[0]].reason
    assert _image(own_moto, current)["DeregistrationProtection"] == "enabled-with-cooldown"

    own_moto.advance(24 * 3600 + 60)
    later = prune(new_aws(own_moto), spec, 1, dry_run=False, now=lambda: _now() + timedelta(hours=24, minutes=1))
    assert sorted(d.image_id for d in later.deleted) == sorted(amis[:2]), later.text()
    assert own_moto.client("ec2").describe_images(ImageIds=[current])["Images"]


def test_prune_keeps_an_available_ami_not_yet_deprecated(own_moto, tmp_path):
    role = "prune-notdep"
    amis = [_baked_ami(own_moto, role, n) for n in range(1, 4)]
    ec2 = own_moto.client("ec2")
    ec2.enable_image_deprecation(ImageId=amis[0], DeprecateAt=_now() + timedelta(days=10))
    spec = make_ctx(own_moto, tmp_path, role=role).role
    report = prune(new_aws(own_moto), spec, 1, dry_run=True)
    decisions = {d.image_id: d for d in report.decisions}
    assert decisions[amis[0]].action == "kept" and "not deprecated (deprecates" in decisions[amis[0]].reason
    # No deprecation time at all: published before the bakery deprecated AMIs, pruned by age as before.
    assert decisions[amis[1]].action == "would delete"


def test_prune_keeps_an_ami_launched_within_keep_if_launched_within(own_moto, tmp_path):
    role = "prune-launched"
    amis = [_baked_ami(own_moto, role, n) for n in range(1, 4)]
    ec2 = own_moto.client("ec2")
    instance = ec2.run_instances(ImageId=amis[0], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[instance])  # no instance holds it: only the launch time can
    spec = make_ctx(own_moto, tmp_path, {"keep_if_launched_within": "7d"}, role=role).role

    def decisions() -> dict:
        report = prune(new_aws(own_moto), spec, 1, dry_run=True,
                       now=lambda: _now() + timedelta(seconds=own_moto.offset))
        return {d.image_id: d for d in report.decisions}

    # EC2 reports a launch a day later: until then nothing keeps the AMI.
    assert decisions()[amis[0]].action == "would delete"
    own_moto.advance(25 * 3600)
    seen = decisions()
    assert seen[amis[0]].action == "kept"
    assert "within keep_if_launched_within (7 days)" in seen[amis[0]].reason
    assert seen[amis[1]].action == "would delete"
    assert "LastLaunchedTime" in _image(own_moto, amis[0])


def test_prune_keeps_what_ec2_says_references_an_ami(moto_server, tmp_path, request):
    role = unique_role(request)
    amis = [_baked_ami(moto_server, role, n) for n in range(1, 6)]
    ec2, ssm = moto_server.client("ec2"), moto_server.client("ssm")
    # References anywhere in the account, not only the role's own template and parameter.
    instance = ec2.run_instances(ImageId=amis[0], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    template = ec2.create_launch_template(LaunchTemplateName=f"other-{role}",
                                          LaunchTemplateData={"ImageId": amis[1]})["LaunchTemplate"]
    ssm.put_parameter(Name=f"/team/{role}/golden", Value=amis[2], Type="String", DataType="aws:ec2:image")
    spec = make_ctx(moto_server, tmp_path, role=role).role
    aws = new_aws(moto_server)
    report = prune(aws, spec, 1, dry_run=True)
    decisions = {d.image_id: d for d in report.decisions}
    assert decisions[amis[0]].reason == f"referenced by instance {instance}"
    assert decisions[amis[1]].reason == f"referenced by launch template {template['LaunchTemplateId']}"
    assert decisions[amis[2]].reason == f"referenced by SSM parameter /team/{role}/golden"
    assert decisions[amis[3]].action == "would delete" and decisions[amis[4]].action == "kept"
    calls = aws.counter.counts
    assert not any(k.endswith(("DescribeInstances", "DescribeLaunchTemplateVersions", "GetParameter")) for k in calls)
    with pytest.raises(botocore.exceptions.ClientError, match="MissingParameter"):
        ec2.describe_image_references(ImageIds=[amis[0]])


def test_prune_says_whether_the_recycle_bin_keeps_what_it_deletes(own_moto, tmp_path):
    role = "prune-rbin"
    for n in (1, 2):
        _baked_ami(own_moto, role, n)
    spec = make_ctx(own_moto, tmp_path, role=role).role
    text = prune(new_aws(own_moto), spec, 1, dry_run=True).text()
    assert "note: us-east-1: no Recycle Bin retention rule for EC2 images" in text
    rbin = own_moto.client("rbin")
    with pytest.raises(botocore.exceptions.ClientError, match="ValidationException"):
        rbin.list_rules(ResourceType="EC2_AMI")
    rule = rbin.create_rule(ResourceType="EC2_IMAGE", RetentionPeriod={
        "RetentionPeriodValue": 7, "RetentionPeriodUnit": "DAYS"})["Identifier"]
    text = prune(new_aws(own_moto), spec, 1, dry_run=True).text()
    assert f"Recycle Bin retention rule {rule} (7 days) for EC2 images" in text
    assert "restore-image-from-recycle-bin --region us-east-1" in text
