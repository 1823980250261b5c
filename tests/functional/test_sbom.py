"""The bootstrap stage's SBOM step and failure log tail (bakery_lib.inventory) against the session's moto:
the inventory the instance uploaded -> ``artifacts/ROLE.cdx.json``, the SBOM in S3, ``bakery:sbom`` on the
AMI, the package diff against the role's previous AMI; a missing inventory is a warning, never a failure;
a failed run's log tail (its ``bakery:bootstrap-log`` tag) is in the failure message.
"""

from __future__ import annotations

import json

import pytest
from support.stages import make_ctx, open_bake

from bakery_lib.ec2.images import image_tags
from bakery_lib.errors import BakeryError
from bakery_lib.inventory import inventory_key, record_sbom, sbom_key
from bakery_lib.stages.bootstrap import Watch

BUCKET = "acme-bakery"  # the one-stage tests' catalogue (support.stages.CATALOG)


def inventory(packages: dict[str, str]) -> bytes:
    return json.dumps({"schema": 1, "platform": "linux", "manager": "dpkg", "os": {"id": "debian", "version_id": "12"},
                       "packages": [{"name": n, "version": v, "arch": "amd64"} for n, v in packages.items()]}).encode()


@pytest.fixture()
def s3(moto_server):
    client = moto_server.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def test_inventory_becomes_sbom_artifact_s3_object_and_ami_tag_then_a_diff(moto_server, s3, tmp_path, base_ami, names):
    role = names.role("sbom")
    ec2 = moto_server.client("ec2")
    # The role's previous AMI, with its SBOM (as an earlier bake left them).
    first = make_ctx(moto_server, tmp_path / "one", role=role)
    open_bake(first, base_ami)
    s3.put_object(Bucket=BUCKET, Key=inventory_key(role, first.state.bake_id),
                  Body=inventory({"bash": "5.2.15-2", "nano": "7.2-1", "tzdata": "2024a"}))
    message = record_sbom(first)
    assert message.startswith(f"SBOM s3://{BUCKET}/{sbom_key(role, first.state.bake_id)} (3 packages, dpkg)"), message
    assert "first AMI of the role with an SBOM: no package diff" in message
    artifact = json.loads((tmp_path / "one" / "artifacts" / f"{role}.cdx.json").read_text())
    assert artifact["bomFormat"] == "CycloneDX" and len(artifact["components"]) == 3
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=sbom_key(role, first.state.bake_id))["Body"].read())
    assert stored["serialNumber"] == artifact["serialNumber"]
    assert first.state.sbom_uri == f"s3://{BUCKET}/{sbom_key(role, first.state.bake_id)}"
    assert image_tags(first)["bakery:sbom"] == first.state.sbom_uri  # what the image stage tags the AMI with
    reservation = ec2.run_instances(ImageId=base_ami, MinCount=1, MaxCount=1)
    old_ami = ec2.create_image(InstanceId=reservation["Instances"][0]["InstanceId"], Name=f"{role}-1", TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in image_tags(first).items()]}])["ImageId"]

    second = make_ctx(moto_server, tmp_path / "two", role=role)
    open_bake(second, base_ami)
    second.state.release = "2.0"
    s3.put_object(Bucket=BUCKET, Key=inventory_key(role, second.state.bake_id),
                  Body=inventory({"bash": "5.2.15-3", "curl": "7.88.1", "tzdata": "2024a"}))
    message = record_sbom(second)
    assert f"vs {old_ami} (release 1.0): 1 added, 1 removed, 1 changed" in message, message
    diff = json.loads((tmp_path / "two" / "artifacts" / f"{role}.packages.json").read_text())
    assert diff["previous"] == {"ami": old_ami, "release": "1.0", "sbom": first.state.sbom_uri}
    assert [p["name"] for p in diff["added"]] == ["curl"] and [p["name"] for p in diff["removed"]] == ["nano"]
    assert [(c["name"], c["from"], c["to"]) for c in diff["changed"]] == [("bash", "5.2.15-2", "5.2.15-3")]
    assert diff["bake_id"] == second.state.bake_id


def test_missing_inventory_is_a_warning_and_no_tag(moto_server, s3, tmp_path, base_ami, names):
    ctx = make_ctx(moto_server, tmp_path, role=names.role("noinv"))
    open_bake(ctx, base_ami)
    message = record_sbom(ctx)
    where = f"s3://{BUCKET}/{inventory_key(ctx.role.name, ctx.state.bake_id)}"
    assert message.startswith(f"WARNING: the package inventory {where} is missing: no SBOM for this AMI"), message
    assert ctx.state.sbom_uri is None and "bakery:sbom" not in image_tags(ctx)
    assert not (tmp_path / "artifacts" / f"{ctx.role.name}.cdx.json").exists()


def test_unusable_inventory_is_a_warning_naming_it(moto_server, s3, tmp_path, base_ami, names):
    ctx = make_ctx(moto_server, tmp_path, role=names.role("badinv"))
    open_bake(ctx, base_ami)
    s3.put_object(Bucket=BUCKET, Key=inventory_key(ctx.role.name, ctx.state.bake_id), Body=b"{\"packages\": 3}")
    message = record_sbom(ctx)
    assert message.startswith("WARNING: s3://") and "expected an object with a \"packages\" list" in message
    assert ctx.state.sbom_uri is None


def _failed_instance(moto_server, base_ami, tags: dict[str, str]) -> dict:
    ec2 = moto_server.client("ec2")
    iid = ec2.run_instances(ImageId=base_ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.create_tags(Resources=[iid], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


def test_a_failed_run_shows_the_log_tail_the_instance_uploaded(moto_server, s3, tmp_path, base_ami, names):
    ctx = make_ctx(moto_server, tmp_path, role=names.role("tail"))
    open_bake(ctx, base_ami)
    key = f"bakes/{ctx.role.name}/{ctx.state.bake_id}/bootstrap-log.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"".join(f"line {n}\n".encode() for n in range(100))
                  + b"FATAL: Chef::Exceptions::Package: apt_package[nginx] had an error\n")
    inst = _failed_instance(moto_server, base_ami, {"bakery:bootstrap": "failed",
                                                    "bakery:bootstrap-detail": "cinc-client exited 1",
                                                    "bakery:bootstrap-log": f"s3://{BUCKET}/{key}"})
    with pytest.raises(BakeryError) as err:
        Watch(ctx, inst["InstanceId"]).check(inst)
    text = str(err.value)
    assert text.startswith(f"Chef role_ami run failed on {inst['InstanceId']}: cinc-client exited 1\n"
                           f"--- last lines of the bake log (s3://{BUCKET}/{key}) ---\n")
    assert "FATAL: Chef::Exceptions::Package: apt_package[nginx] had an error" in text
    assert "line 41\n" in text and "line 40\n" not in text  # the last 60 lines, not the whole object
    assert "--- console output (tail)" in text


def test_a_log_tail_outside_the_roles_prefix_is_not_read(moto_server, s3, tmp_path, base_ami, names):
    ctx = make_ctx(moto_server, tmp_path, role=names.role("other"))
    open_bake(ctx, base_ami)
    s3.put_object(Bucket=BUCKET, Key="chef/not-a-log.txt", Body=b"must not be shown\n")
    inst = _failed_instance(moto_server, base_ami, {"bakery:bootstrap": "failed", "bakery:bootstrap-detail": "x",
                                                    "bakery:bootstrap-log": f"s3://{BUCKET}/chef/not-a-log.txt"})
    with pytest.raises(BakeryError) as err:
        Watch(ctx, inst["InstanceId"]).check(inst)
    assert "must not be shown" not in str(err.value) and "not read" in str(err.value)
