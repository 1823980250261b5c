"""Sharing an AMI the other account can launch (moto server in process): a customer managed key per
region is required at catalogue load, preflight's key-policy check names what is missing, snapshots
are shared only when asked, organizations and OUs get launch permission.
"""

from __future__ import annotations

import json

import pytest
from support.stages import CATALOG, baked_image, make_ctx, publish_ctx, unique_role

from bakery_lib.catalog import parse_catalog
from bakery_lib.errors import BakeryError, CatalogError
from bakery_lib.kms import check_sharing_keys, missing_actions
from bakery_lib.stages import publish
from devstack.moto import ACCOUNT_ID

OTHER = "210987654321"
ORG = "arn:aws:organizations::111111111111:organization/o-abcdefghij"
OU = "arn:aws:organizations::111111111111:ou/o-abcdefghij/ou-ab12-cdefghij"
USE = ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncrypt*"]


def _catalog(tmp_path, **role):
    import copy
    data = copy.deepcopy(CATALOG)
    data["roles"] = {"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0", **role}}
    return parse_catalog(data, str(tmp_path / "bakery.yaml"))


def test_sharing_without_a_customer_key_is_refused_at_load(tmp_path):
    with pytest.raises(CatalogError) as exc:
        _catalog(tmp_path, share_with_accounts=[OTHER])
    assert exc.value.exit_code == 2 and exc.value.key == "kms_key_id"
    assert "customer managed KMS key in us-east-1" in str(exc.value) and "aws/ebs" in str(exc.value)
    with pytest.raises(CatalogError, match="kms_key_id"):
        _catalog(tmp_path, share_with_organizations=[ORG], kms_key_id="alias/aws/ebs")
    with pytest.raises(CatalogError) as exc:
        _catalog(tmp_path, share_with_accounts=[OTHER], kms_key_id="alias/bakery", copy_to_regions=["eu-west-1"])
    assert exc.value.key == "region_kms_keys" and "eu-west-1" in str(exc.value)
    ok = _catalog(tmp_path, share_with_accounts=[OTHER], kms_key_id="alias/bakery", copy_to_regions=["eu-west-1"],
                  region_kms_keys={"eu-west-1": "alias/bakery"})
    assert ok.roles["web"].share_with_accounts == (OTHER,)
    with pytest.raises(CatalogError, match="share_with_organizations"):
        _catalog(tmp_path, share_with_organizations=["o-abcdefghij"], kms_key_id="alias/bakery")


def _key(moto_server, region, statements):
    kms = moto_server.client("kms", region)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Owner", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
         "Action": "kms:*", "Resource": "*"}, *statements]}
    return kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]


def test_preflight_check_names_the_missing_statement(moto_server, tmp_path, request):
    key = _key(moto_server, "us-east-1", [])
    ctx = make_ctx(moto_server, tmp_path, {"share_with_accounts": [OTHER], "kms_key_id": key},
                   role=unique_role(request))
    with pytest.raises(BakeryError) as exc:
        check_sharing_keys(ctx)
    text = str(exc.value)
    assert f"KMS key {key} in us-east-1: its key policy does not let {OTHER} use it" in text
    assert "kms:CreateGrant" in text and f'"AWS": "arn:aws:iam::{OTHER}:root"' in text
    good = _key(moto_server, "us-east-1", [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OTHER}:root"},
                                            "Action": USE, "Resource": "*"}])
    ctx = make_ctx(moto_server, tmp_path, {"share_with_accounts": [OTHER], "kms_key_id": good},
                   role=unique_role(request))
    assert good in check_sharing_keys(ctx)


def test_key_policy_rules():
    statement = {"Effect": "Allow", "Principal": {"AWS": OTHER}, "Action": ["kms:Decrypt", "kms:DescribeKey"],
                 "Resource": "*"}
    assert missing_actions({"Statement": [statement]}, OTHER) == [
        "kms:CreateGrant", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"]
    everything = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{OTHER}:root"}, "Action": "kms:*",
                  "Resource": "*"}
    assert missing_actions({"Statement": [everything]}, OTHER) == []
    denied_elsewhere = dict(everything, Principal={"AWS": "arn:aws:iam::999999999999:root"})
    assert missing_actions({"Statement": [denied_elsewhere]}, OTHER) != []
    org = {"Effect": "Allow", "Principal": "*", "Action": USE, "Resource": "*",
           "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-abcdefghij"}}}
    assert missing_actions({"Statement": [org]}, ORG) == []
    assert missing_actions({"Statement": [dict(org, Condition={})]}, ORG) != []


@pytest.fixture()
def image_id(moto_server, request):
    return baked_image(moto_server, f"bakery-kms-{unique_role(request)}")[0]


def _published(moto_server, tmp_path, role, image_id, **overrides):
    ctx = publish_ctx(moto_server, tmp_path, role, image_id, {"kms_key_id": "alias/bakery", **overrides})
    sent = []
    ctx.aws.add_hook("provide-client-params.ec2.ModifySnapshotAttribute", lambda params, **_: sent.append(params))
    return ctx, publish.run(ctx), sent


def test_snapshots_shared_only_when_asked(moto_server, tmp_path, image_id, request):
    ec2 = moto_server.client("ec2")
    ctx, message, sent = _published(moto_server, tmp_path / "a", unique_role(request), image_id,
                                    share_with_accounts=[OTHER])
    assert sent == [] and f"shared with {OTHER}" in message
    perms = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"]
    assert {"UserId": OTHER} in perms
    ctx, message, sent = _published(moto_server, tmp_path / "b", unique_role(request) + "b", image_id,
                                    share_with_accounts=[OTHER], share_snapshots=True)
    assert sent and all(p["UserIds"] == [OTHER] for p in sent) and "(snapshots too)" in message


def test_shared_with_organizations_and_ous(moto_server, tmp_path, image_id, request):
    sent = []
    role = unique_role(request)
    ctx = make_ctx(moto_server, tmp_path, {"kms_key_id": "alias/bakery", "share_with_organizations": [ORG, OU]},
                   role=role)
    ctx.aws.add_hook("provide-client-params.ec2.ModifyImageAttribute", lambda params, **_: sent.append(params))
    publish.share(ctx, "us-east-1", image_id)
    assert sent[0]["LaunchPermission"] == {"Add": [{"OrganizationArn": ORG}, {"OrganizationalUnitArn": OU}]}
