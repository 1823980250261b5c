"""A bake's records in S3 (``bakes/ROLE/BAKE_ID/``: inventory, SBOM, log tails) go with its AMI
(``bakery_lib.records``): prune, a failed bake's cleanup and reap delete them with the AMI they remove,
unless an AMI that stays is of the same bake or points at them; a dry run shows them and deletes
nothing; and the shipped IAM policy lets the bakery delete objects under that prefix and nowhere else.

On the session's moto (the AMI layer in front), each test with its own role names; the IAM case on a
moto of its own that enforces IAM (the session's answers unauthenticated requests).
"""

from __future__ import annotations

import copy

import botocore.exceptions
import pytest
from support.stages import CATALOG, make_ctx, new_aws, open_bake, register_baked_ami

from bakery_lib.aws import Aws
from bakery_lib.catalog import parse_catalog
from bakery_lib.cleanup import cleanup
from bakery_lib.iam_policy import bakery_policy
from bakery_lib.inventory import SBOM_TAG, bake_records_prefix, sbom_key
from bakery_lib.lifecycle import prune, reap
from bakery_lib.records import deletion, list_records
from devstack._boto import session as shared_session
from devstack.iam_enforcement import as_moto_evaluates, create_user
from devstack.moto import MotoServer, seed_base_image

BUCKET = "acme-bakery"  # the one-stage tests' catalogue (support.stages.CATALOG)
RECORDS = ("inventory.json", "sbom.cdx.json", "firstboot/i-0123456789abcdef0.log")


@pytest.fixture()
def s3(moto_server):
    client = moto_server.client("s3")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


def put_records(s3, role: str, bake_id: str) -> list[str]:
    keys = [bake_records_prefix(role, bake_id) + name for name in RECORDS]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    return keys


def stored(s3, role: str) -> set[str]:
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"bakes/{role}/").get("Contents", [])
    return {o["Key"] for o in found}


def ami(moto_server, role: str, bake_id: str, region: str = "us-east-1", **tags: str) -> str:
    return seed_base_image(moto_server.client("ec2", region), f"bakery-{role}-{bake_id}-{region}", tags={
        "bakery:role": role, "bakery:created-by": "bakery", "bakery:bake-id": bake_id, **tags})


def test_prune_deletes_the_records_of_the_bakes_whose_amis_it_deletes(moto_server, s3, tmp_path, names):
    role = names.role("records")
    data = copy.deepcopy(CATALOG)
    data["roles"] = {role: {"platform": "linux", "base_ami": "ami-0123456789abcdef0",
                            "copy_to_regions": ["us-west-2"]}}
    spec = parse_catalog(data, str(tmp_path / "bakery.yaml")).roles[role]
    # Bake ids in creation order (moto's CreationDate has a one-second resolution; the id breaks ties).
    alone, copied, pointed, newest = (f"2026010100000{n}-{names.token}" for n in range(1, 5))
    for bake in (alone, copied, pointed):
        ami(moto_server, role, bake, **{SBOM_TAG: f"s3://{BUCKET}/{sbom_key(role, bake)}"})
    ami(moto_server, role, copied, "us-west-2")  # the copy of `copied` stays: the newest in us-west-2
    # The newest (kept) AMI names `pointed`'s SBOM as its own (as a hand-made or re-tagged AMI might).
    ami(moto_server, role, newest, **{SBOM_TAG: f"s3://{BUCKET}/{sbom_key(role, pointed)}"})
    records = {bake: put_records(s3, role, bake) for bake in (alone, copied, pointed, newest)}
    everything = {k for keys in records.values() for k in keys}
    s3.put_object(Bucket=BUCKET, Key=f"runlists/{role}.json", Body=b"{}")

    dry = prune(new_aws(moto_server), spec, 1, dry_run=True)
    text = dry.text()
    uri = f"s3://{BUCKET}/{bake_records_prefix(role, alone)}"
    assert (f"{uri} (firstboot/i-0123456789abcdef0.log, inventory.json, sbom.cdx.json): would delete: "
            f"the AMIs of bake {alone} would be deleted") in text, text
    assert stored(s3, role) == everything  # a dry run deletes nothing

    report = prune(new_aws(moto_server), spec, 1, dry_run=False)
    text = report.text()
    assert report.exit_code == 0, text
    assert stored(s3, role) == everything - set(records[alone]), text
    assert f"{uri} (firstboot/i-0123456789abcdef0.log, inventory.json, sbom.cdx.json): deleted" in text
    assert f"{bake_records_prefix(role, copied)}: kept: " in text and "an AMI of the same bake, stays" in text
    assert f"{bake_records_prefix(role, pointed)}: kept: " in text and f"its {SBOM_TAG} tag points at them" in text
    assert s3.get_object(Bucket=BUCKET, Key=f"runlists/{role}.json")["Body"].read() == b"{}"


def _failed_bake(moto_server, tmp_path, role: str, *, with_ami: bool, published: bool = False):
    ctx = make_ctx(moto_server, tmp_path, role=role)
    open_bake(ctx, "ami-00000000")
    ctx.state.chef_node = None  # no Chef identity to remove here (the Chef part is launch's business)
    if with_ami:
        register_baked_ami(moto_server.client("ec2"), ctx)
        if not published:
            ctx.state.amis = {}  # wait-image did not finish it: an image the teardown removes
    ctx.save()
    return ctx


def test_cleanup_of_a_failed_bake_deletes_the_records_only_with_its_ami(moto_server, s3, tmp_path, names):
    removed, kept, no_ami = (names.role(stem) for stem in ("removed", "kept", "noami"))
    ctxs = {role: _failed_bake(moto_server, tmp_path / role, role, with_ami=role != no_ami, published=role == kept)
            for role in (removed, kept, no_ami)}
    records = {role: put_records(s3, role, ctx.state.bake_id) for role, ctx in ctxs.items()}
    reports = {role: cleanup(ctx) for role, ctx in ctxs.items()}
    assert all(not r.errors for r in reports.values()), {k: r.text() for k, r in reports.items()}
    # The image the failed bake left is deregistered: its records go with it.
    assert not moto_server.client("ec2").describe_images(ImageIds=[ctxs[removed].state.image_id])["Images"]
    assert stored(s3, removed) == set()
    assert f"deleted the S3 records of bake {ctxs[removed].state.bake_id}" in reports[removed].text()
    # A bake whose AMI stays (a publish failed after wait-image), or that made none (its log tail is
    # what says why it failed), keeps them.
    assert stored(s3, kept) == set(records[kept]) and stored(s3, no_ami) == set(records[no_ami])


def test_reap_deletes_an_abandoned_bakes_records_with_its_ami_and_dry_run_shows_them(moto_server, s3, names):
    role = names.role("reaped")
    bake = f"20260101000001-{names.token}"
    # A leftover AMI to reap: its boot test failed.
    image = ami(moto_server, role, bake, **{"bakery:boot-test": "failed"})
    keys = put_records(s3, role, bake)
    uri = f"s3://{BUCKET}/{bake_records_prefix(role, bake)}"
    unknown = reap(new_aws(moto_server), ["us-east-1"], None, bake_id=bake, dry_run=True).text()
    assert f"bakes/{role}/{bake}/: kept: role {role} is not in the catalogue" in unknown, unknown
    dry = reap(new_aws(moto_server), ["us-east-1"], None, bake_id=bake, dry_run=True,
               buckets={role: BUCKET}).text()
    assert (f"records {uri} (firstboot/i-0123456789abcdef0.log, inventory.json, sbom.cdx.json): would delete: "
            "the bake's AMI would be deregistered by this reap") in dry, dry
    assert stored(s3, role) == set(keys)
    report = reap(new_aws(moto_server), ["us-east-1"], None, bake_id=bake, dry_run=False, buckets={role: BUCKET})
    assert report.errors == [], report.text()
    assert (f"records {uri} (firstboot/i-0123456789abcdef0.log, inventory.json, sbom.cdx.json): deleted: the "
            "bake's AMI was deregistered by this reap") in report.text(), report.text()
    assert stored(s3, role) == set()
    assert not moto_server.client("ec2").describe_images(ImageIds=[image])["Images"]


def test_the_shipped_policy_deletes_under_the_bake_records_prefix_only(tmp_path):
    """moto evaluates S3 resources: the policy `bakery iam-policy` prints lets the bakery list and delete a
    bake's records, and refuses a delete anywhere else in the bucket."""
    catalog = parse_catalog(copy.deepcopy(CATALOG), str(tmp_path / "bakery.yaml"))
    with MotoServer(iam_enforcement=True) as server:
        admin = server.client("s3")
        admin.create_bucket(Bucket=BUCKET)
        keys = put_records(admin, "web", "20260101000001-abcdef")
        admin.put_object(Bucket=BUCKET, Key="runlists/web.json", Body=b"{}")
        access, secret = create_user(server, "bakery", as_moto_evaluates(bakery_policy(catalog)))
        server.enforce_iam()
        aws = Aws(endpoint_url=server.url, session=shared_session(
            aws_access_key_id=access, aws_secret_access_key=secret))
        listed = list_records(aws, "us-east-1", BUCKET, "web", "20260101000001-abcdef")
        assert sorted(listed) == sorted(keys)
        assert "deleted the S3 records" in deletion(aws, "us-east-1", BUCKET, "web", "20260101000001-abcdef",
                                                    listed).remove()
        bakery_s3 = shared_session().client("s3", endpoint_url=server.url, region_name="us-east-1",
                                                   aws_access_key_id=access, aws_secret_access_key=secret)
        assert bakery_s3.list_objects_v2(Bucket=BUCKET, Prefix="bakes/").get("KeyCount") == 0
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            bakery_s3.delete_object(Bucket=BUCKET, Key="runlists/web.json")
