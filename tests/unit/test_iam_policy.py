"""The bakery's own IAM policy (``bakery iam-policy``): every operation the code calls is granted, and
granted only as narrowly as AWS allows (IAM User Guide; Service Authorization Reference for EC2, IAM,
S3, SSM, KMS). moto's enforcement checks actions (tests/e2e/test_iam_enforced_bake.py); what moto does
not evaluate -- resources outside S3 and IAM roles, conditions, boundaries -- is checked here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bakery_lib.aws import iam_action
from bakery_lib.catalog import load_catalog, parse_catalog
from bakery_lib.iam_policy import OPERATIONS, bakery_policy, policy_actions

REPO = Path(__file__).resolve().parents[2]
# ctx.ec2("Op", ...) / ctx.iam("Op", ...) and aws.call("svc", region, "Op", ...) / paginate(...)
HELPER_CALL = re.compile(r"\.(ec2|iam)\(\s*\"([A-Z][A-Za-z]+)\"")
DIRECT_CALL = re.compile(r"(?:call|paginate)\(\s*\"(ec2|iam|s3|ssm|sns|sts|kms|rbin)\",\s*[\w.]+,\s*\"([A-Z][A-Za-z]+)\"")


def called_operations() -> set[str]:
    found = set()
    for path in (REPO / "bakery_lib").rglob("*.py"):
        if path.name == "setup.py":
            continue  # `bakery setup` runs as an administrator once; it prints this policy
        text = path.read_text(encoding="utf-8")
        for service, op in HELPER_CALL.findall(text) + DIRECT_CALL.findall(text):
            found.add(iam_action(service, op))
    return found


@pytest.fixture()
def catalog(tmp_path):
    path = tmp_path / "bakery.yaml"
    path.write_text("""
defaults:
  region: us-east-1
  copy_to_regions: [eu-west-1]
  runlist_bucket: acme-bakery
  alert_topic_arn: arn:aws:sns:us-east-1:123456789012:bakery-alerts
  permissions_boundary: arn:aws:iam::123456789012:policy/bakery-instance-boundary
  managed_policies: [arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore]
  kms_key_id: alias/bakery-ebs
  region_kms_keys: {eu-west-1: arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555}
  launch_template: web-template
  share_with_accounts: ["210987654321"]
  tags: {team: platform}
  chef:
    server_url: https://chef.example.com/organizations/acme
    validation_client_name: acme-validator
    validation_key_s3: s3://acme-bakery/chef/validator.pem
roles:
  web: {platform: linux, base_ami: ami-0123456789abcdef0, fast_snapshot_restore: [us-east-1a]}
  win: {platform: windows, base_ami: ami-0123456789abcdef1, fast_launch: {max_parallel_launches: 6}}
""", encoding="utf-8")
    return load_catalog(str(path))


def statements(policy):
    return {st["Sid"]: st for st in policy["Statement"]}


def test_every_operation_the_code_calls_is_granted(catalog):
    called = called_operations()
    assert {"ec2:RunInstances", "iam:CreateRole", "ssm:PutParameter", "s3:PutObject"} <= called
    granted = policy_actions(bakery_policy(catalog))
    assert called - granted == set()
    listed = {op for ops in OPERATIONS.values() for op in ops}
    assert called - listed == set()


def test_no_wildcard_action_and_resources_scoped(catalog):
    policy = bakery_policy(catalog)
    for st in policy["Statement"]:
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        assert all("*" not in a for a in actions), st
        if st["Resource"] == "*":
            # Only where AWS supports no resource-level permission, or a condition narrows it.
            assert st["Sid"] in ("Describe", "TagWhileCreating") and st.get("Condition"), st
    by_sid = statements(policy)
    assert by_sid["RunLists"]["Resource"] == ["arn:aws:s3:::acme-bakery/runlists/*"]
    # The bakery deletes objects only under the bake records' prefix (bakery_lib.records), nothing else.
    assert by_sid["DeleteBakeRecords"] == {"Sid": "DeleteBakeRecords", "Effect": "Allow", "Action": "s3:DeleteObject",
                                           "Resource": ["arn:aws:s3:::acme-bakery/bakes/*"]}
    deleting = [st["Sid"] for st in policy["Statement"]
                if st["Effect"] == "Allow" and "s3:DeleteObject" in policy_actions({"Statement": [st]})]
    assert deleting == ["DeleteBakeRecords"]
    assert by_sid["LatestParameters"]["Resource"] == [
        "arn:aws:ssm:eu-west-1:123456789012:parameter/bakery/*",
        "arn:aws:ssm:us-east-1:123456789012:parameter/bakery/*"]
    assert by_sid["Describe"]["Condition"] == {"StringEquals": {"aws:RequestedRegion": ["eu-west-1", "us-east-1"]}}


def test_instance_roles_only_within_the_boundary(catalog):
    by_sid = statements(bakery_policy(catalog))
    boundary = "arn:aws:iam::123456789012:policy/bakery-instance-boundary"
    write = by_sid["WriteInstanceRolesWithinBoundary"]
    assert "iam:CreateRole" in write["Action"] and "iam:PutRolePolicy" in write["Action"]
    assert write["Resource"] == "arn:aws:iam::123456789012:role/bakery-*"
    assert write["Condition"] == {"StringEquals": {"iam:PermissionsBoundary": [boundary]}}
    attach = by_sid["AttachCataloguePolicies"]
    assert attach["Condition"]["ArnEquals"] == {
        "iam:PolicyARN": ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]}
    assert attach["Condition"]["StringEquals"] == {"iam:PermissionsBoundary": [boundary]}
    keep = by_sid["KeepTheBoundary"]
    assert keep["Effect"] == "Deny" and keep["Action"] == "iam:DeleteRolePermissionsBoundary"
    passrole = by_sid["PassInstanceRolesToEc2"]
    assert passrole["Resource"] == "arn:aws:iam::123456789012:role/bakery-*"
    assert passrole["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    # No statement lets the bakery write any other role, or any role's policy without the boundary.
    for st in bakery_policy(catalog)["Statement"]:
        if st["Sid"] == "FastLaunchServiceLinkedRole":
            continue  # EC2's own role for Fast Launch, by service name (see the Fast Launch test)
        if st["Effect"] == "Allow" and any(a.startswith("iam:") for a in policy_actions({"Statement": [st]})):
            resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
            assert all(r.startswith("arn:aws:iam::123456789012:") and "/bakery-" in r for r in resources), st


def test_bakery_instances_and_images_by_tag(catalog):
    by_sid = statements(bakery_policy(catalog))
    assert by_sid["LaunchTaggedInstances"]["Condition"] == {"StringLike": {"aws:RequestTag/bakery:role": "*"}}
    assert by_sid["BakeryInstances"]["Condition"] == {"StringLike": {"aws:ResourceTag/bakery:role": "*"}}
    assert by_sid["BakeryImages"]["Condition"] == {"StringEquals": {"aws:ResourceTag/bakery:created-by": "bakery"}}
    assert by_sid["BakeryImages"]["Resource"] == ["arn:aws:ec2:*::image/*", "arn:aws:ec2:*::snapshot/*"]
    assert by_sid["TagBakeryResources"]["Condition"] == {
        "ForAllValues:StringLike": {"aws:TagKeys": ["Name", "bakery:*", "team"]}}


def test_catalogue_keys_only_through_ec2(catalog):
    by_sid = statements(bakery_policy(catalog))
    assert by_sid["EncryptWithCatalogueKeys"]["Resource"] == [
        "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"]
    # An alias is no key operation's resource: any key of the region that carries the alias.
    by_alias = by_sid["EncryptWithCatalogueKeysByAlias"]
    assert by_alias["Resource"] == ["arn:aws:kms:us-east-1:123456789012:key/*"]
    assert by_alias["Condition"]["ForAnyValue:StringEquals"] == {"kms:ResourceAliases": ["alias/bakery-ebs"]}
    # preflight reads the key policies of a shared AMI's keys
    assert by_sid["ReadCatalogueKeyPoliciesByAlias"]["Action"] == ["kms:DescribeKey", "kms:GetKeyPolicy",
                                                                   "kms:ListGrants"]
    grant = by_sid["GrantCatalogueKeysToEbs"]
    assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    assert grant["Condition"]["StringEquals"]["kms:ViaService"] == ["ec2.eu-west-1.amazonaws.com",
                                                                    "ec2.us-east-1.amazonaws.com"]


def test_cli_prints_the_policy(catalog, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bakery_lib.cli", "--catalog", catalog.path, "iam-policy"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == bakery_policy(catalog)
    proc = subprocess.run([sys.executable, "-m", "bakery_lib.cli", "--catalog", catalog.path, "iam-policy",
                           "--instance-role", "web"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert {st["Sid"] for st in json.loads(proc.stdout)["Statement"]} >= {"ReadRunListAndValidatorKey", "TagOnlyItself"}


def test_fast_launch_and_restores_are_granted_only_to_catalogues_that_use_them(catalog, tmp_path):
    """Turning them off is always allowed (prune, cleanup and reap do it before deleting); turning them on
    only when a role asks, and EC2's Fast Launch service-linked role only by its service name."""
    used = statements(bakery_policy(catalog))
    assert used["FastLaunch"]["Action"] == "ec2:EnableFastLaunch"
    assert used["FastSnapshotRestores"]["Action"] == "ec2:EnableFastSnapshotRestores"
    assert used["FastLaunchServiceLinkedRole"]["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": "ec2fastlaunch.amazonaws.com"}}
    assert used["SlowDownBakeryImages"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/bakery:created-by": "bakery"}}
    data = {"defaults": {"region": "us-east-1", "runlist_bucket": "acme-bakery",
                         "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:bakery-alerts",
                         "chef": {"server_url": "https://chef.example.com/organizations/acme",
                                  "validation_client_name": "acme-validator",
                                  "validation_key_s3": "s3://acme-bakery/chef/validator.pem"}},
            "roles": {"web": {"platform": "windows", "base_ami": "ami-0123456789abcdef0"}}}
    plain = bakery_policy(parse_catalog(data, str(tmp_path / "plain.yaml")))
    actions = policy_actions(plain)
    assert {"ec2:DisableFastLaunch", "ec2:DisableFastSnapshotRestores", "ec2:DescribeFastLaunchImages"} <= actions
    assert not {"ec2:EnableFastLaunch", "ec2:EnableFastSnapshotRestores", "iam:CreateServiceLinkedRole"} & actions
