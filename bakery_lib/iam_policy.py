"""The IAM policies of the bakery: its own identity's (``bakery_policy``) and its instances' (``instance_policy``).

One source of truth: ``OPERATIONS`` lists every AWS operation the bakery calls, with the IAM action it
needs (``aws.iam_action``) and the statement that grants it; ``bakery_policy`` builds the statements
from it, scoped to the catalogue (its account, regions, buckets, keys, launch templates, boundary).
``bakery iam-policy`` prints it; ``tests/unit/test_iam_policy.py`` checks that every operation called
in ``bakery_lib`` is listed here, and the e2e bake under IAM enforcement checks that nothing more is
needed. How AWS evaluates what is written here (IAM User Guide, Service Authorization Reference for
EC2, IAM, S3, SSM, KMS):

- Describe* calls of EC2, SSM DescribeParameters and Recycle Bin ListRules support no resource-level
  permissions: ``*``, limited to the catalogue's regions (``aws:RequestedRegion``).
- ``bakery setup`` (buckets, validator key, topic) is an administrator's one-off and not covered.
- What the bakery creates is tagged in the creating call (``TagSpecifications``): RunInstances is
  allowed only with a ``bakery:role`` request tag; CreateTags while creating (``ec2:CreateAction``)
  needs no other grant. Afterwards the bakery touches an instance, image or snapshot only when it
  carries the bakery's tags (``aws:ResourceTag/...``), and only writes tag keys it owns.
- IAM: only roles and instance profiles named ``bakery-*``; creating a role, and writing its policies,
  only with the catalogue's permissions boundary (``iam:PermissionsBoundary``), which the bakery may
  never remove; managed policies only those the catalogue names (``iam:PolicyARN``); ``iam:PassRole``
  only of those roles and only to EC2 (``iam:PassedToService``).
- KMS (when the catalogue names keys): the grants EBS needs to encrypt a volume or a copy with a
  customer managed key, only through EC2 (``kms:ViaService``) and only for AWS resources
  (``kms:GrantIsForAWSResource``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .catalog import Catalog, RoleSpec
from .stages.iam_role import instance_policy

__all__ = ["OPERATIONS", "bakery_policy", "instance_policy", "policy_actions"]

# Statement id -> the operations it grants ("service:Operation", as the code calls them).
OPERATIONS: dict[str, tuple[str, ...]] = {
    "Describe": ("ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeSecurityGroups",
                 "ec2:DescribeSubnets", "ec2:DescribeVpcs", "ec2:DescribeSnapshots",
                 "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeImageReferences",
                 "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes", "ssm:DescribeParameters",
                 "sts:GetCallerIdentity", "rbin:ListRules", "ec2:DescribeFastLaunchImages",
                 "ec2:DescribeImageAttribute"),  # summary --from-aws: launch permissions
    "LaunchTaggedInstances": ("ec2:RunInstances",),
    "LaunchFromImagesAndNetworks": ("ec2:RunInstances",),
    "TagWhileCreating": ("ec2:CreateTags",),
    "TagBakeryResources": ("ec2:CreateTags", "ec2:DeleteTags"),
    "BakeryInstances": ("ec2:StopInstances", "ec2:TerminateInstances", "ec2:GetConsoleOutput",
                        "ec2:CreateImage"),
    "CreateAndCopyImages": ("ec2:CreateImage", "ec2:CopyImage"),
    "BakeryImages": ("ec2:ModifyImageAttribute", "ec2:DeregisterImage", "ec2:ModifySnapshotAttribute",
                     "ec2:DeleteSnapshot", "ec2:EnableImageDeprecation", "ec2:EnableImageDeregistrationProtection",
                     "ec2:DisableImageDeregistrationProtection"),
    # Prune, cleanup and reap turn Fast Launch / fast snapshot restore off before deleting, whatever the
    # catalogue says today (a role may have had them); turning them on only for catalogues that ask.
    "SlowDownBakeryImages": ("ec2:DisableFastLaunch", "ec2:DisableFastSnapshotRestores"),
    "FastLaunch": ("ec2:EnableFastLaunch",),
    "FastLaunchServiceLinkedRole": ("iam:CreateServiceLinkedRole",),
    "FastSnapshotRestores": ("ec2:EnableFastSnapshotRestores",),
    "CreateSecurityGroups": ("ec2:CreateSecurityGroup",),
    "BakerySecurityGroups": ("ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"),
    "LaunchTemplates": ("ec2:CreateLaunchTemplateVersion", "ec2:ModifyLaunchTemplate"),
    "ReadInstanceRoles": ("iam:GetRole", "iam:GetRolePolicy", "iam:ListRolePolicies",
                          "iam:ListAttachedRolePolicies", "iam:ListRoleTags"),
    "WriteInstanceRolesWithinBoundary": ("iam:CreateRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy",
                                         "iam:UpdateAssumeRolePolicy", "iam:DetachRolePolicy",
                                         "iam:PutRolePermissionsBoundary"),
    "TagInstanceRoles": ("iam:TagRole",),
    "AttachCataloguePolicies": ("iam:AttachRolePolicy",),
    "InstanceProfiles": ("iam:GetInstanceProfile", "iam:CreateInstanceProfile", "iam:TagInstanceProfile",
                         "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile"),
    "PassInstanceRolesToEc2": ("iam:PassRole",),
    "RunLists": ("s3:PutObject", "s3:GetObject"),
    "RunListBuckets": ("s3:ListBucket",),
    "BakeRecords": ("s3:GetObject", "s3:PutObject"),
    "DeleteBakeRecords": ("s3:DeleteObject",),
    "LatestParameters": ("ssm:PutParameter", "ssm:GetParameter",
                         "ssm:GetParameterHistory"),  # summary --from-aws: what each release published
    "EncryptWithCatalogueKeys": ("kms:DescribeKey", "kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom",
                                 "kms:ReEncryptTo", "kms:GenerateDataKeyWithoutPlaintext"),
    "ReadCatalogueKeyPolicies": ("kms:DescribeKey", "kms:GetKeyPolicy", "kms:ListGrants"),
    "GrantCatalogueKeysToEbs": ("kms:CreateGrant",),
}

# Operations whose IAM action is not ``service:Operation`` (Service Authorization Reference).
IMPLIED = {"iam:TagRole": "CreateRole with Tags", "iam:TagInstanceProfile": "CreateInstanceProfile with Tags",
           "iam:PassRole": "RunInstances with an instance profile",
           # "When you start using EC2 Fast Launch for your AMI, Amazon EC2 creates the service-linked role
           # for you" (EC2 User Guide, "Service-linked role for EC2 Fast Launch"): with the caller's rights.
           "iam:CreateServiceLinkedRole": "EnableFastLaunch, the first time in the account"}


def _account_and_partition(roles: Iterable[RoleSpec]) -> tuple[str, str]:
    # The alert topic is in the bakery's own account (catalogue-validated SNS ARN).
    arns = sorted({r.alert_topic_arn for r in roles})
    if not arns:
        return "*", "aws"
    parts = arns[0].split(":")
    return parts[4], parts[1]


def _key_arns(roles: Iterable[RoleSpec], part: str, account: str) -> list[str]:
    keys: set[str] = set()
    for role in roles:
        for region, key in [(role.region, role.kms_key_id), *role.region_kms_keys]:
            if not key:
                continue
            if key.startswith("arn:"):
                keys.add(key)
            elif key.startswith("alias/"):
                keys.add(f"arn:{part}:kms:{region}:{account}:{key}")
            else:
                keys.add(f"arn:{part}:kms:{region}:{account}:key/{key}")
    return sorted(keys)


def _statement(sid: str, resources: str | list[str], condition: dict[str, Any] | None = None,
               effect: str = "Allow", actions: Iterable[str] | None = None) -> dict[str, Any]:
    acts = sorted(set(actions if actions is not None else OPERATIONS[sid]))
    out: dict[str, Any] = {"Sid": sid, "Effect": effect, "Action": acts if len(acts) > 1 else acts[0],
                           "Resource": resources}
    if condition:
        out["Condition"] = condition
    return out


def _fast_statements(part: str, account: str, image: str, snapshot: str, created_by: dict[str, Any],
                     roles: list[RoleSpec]) -> list[dict[str, Any]]:
    """Fast Launch and fast snapshot restore: off always (before a deletion), on only when asked."""
    out = [_statement("SlowDownBakeryImages", [image, snapshot], created_by)]
    if any(r.fast_launch for r in roles):
        out.append(_statement("FastLaunch", image, created_by))
        out.append(_statement("FastLaunchServiceLinkedRole", f"arn:{part}:iam::{account}:role/aws-service-role/"
                              "ec2fastlaunch.amazonaws.com/AWSServiceRoleForEC2FastLaunch",
                              {"StringEquals": {"iam:AWSServiceName": "ec2fastlaunch.amazonaws.com"}}))
    if any(r.fast_snapshot_restore for r in roles):
        out.append(_statement("FastSnapshotRestores", snapshot, created_by))
    return out


def _ec2_statements(part: str, account: str, regions: list[str], tag_keys: list[str],
                    templates: bool, roles: list[RoleSpec] | None = None) -> list[dict[str, Any]]:
    ec2 = f"arn:{part}:ec2:*:{account}"
    # Images and snapshots have no account in their ARN (Service Authorization Reference, EC2).
    image, snapshot = f"arn:{part}:ec2:*::image/*", f"arn:{part}:ec2:*::snapshot/*"
    bakery_resource = {"StringLike": {"aws:ResourceTag/bakery:role": "*"}}
    created_by = {"StringEquals": {"aws:ResourceTag/bakery:created-by": "bakery"}}
    out = [
        _statement("Describe", "*", {"StringEquals": {"aws:RequestedRegion": regions}}),
        _statement("LaunchTaggedInstances", [f"{ec2}:instance/*", f"{ec2}:volume/*"],
                   {"StringLike": {"aws:RequestTag/bakery:role": "*"}}),
        _statement("LaunchFromImagesAndNetworks", [
            image, f"{ec2}:subnet/*", f"{ec2}:security-group/*",
            f"{ec2}:network-interface/*", f"{ec2}:key-pair/*", f"{ec2}:launch-template/*"]),
        _statement("TagWhileCreating", "*", {"StringEquals": {"ec2:CreateAction": [
            "CopyImage", "CreateImage", "CreateSecurityGroup", "RunInstances"]}}),
        # Snapshots of a new image are tagged after CreateImage where the API gives no other way.
        _statement("TagBakeryResources", [image, f"{ec2}:instance/*", f"{ec2}:security-group/*", snapshot],
                   {"ForAllValues:StringLike": {"aws:TagKeys": tag_keys}}),
        _statement("BakeryInstances", f"{ec2}:instance/*", bakery_resource),
        _statement("CreateAndCopyImages", [image, snapshot]),
        _statement("BakeryImages", [image, snapshot], created_by),
        _statement("CreateSecurityGroups", [f"{ec2}:security-group/*", f"{ec2}:vpc/*"]),
        _statement("BakerySecurityGroups", f"{ec2}:security-group/*",
                   {"StringEquals": {"aws:ResourceTag/bakery:managed": "true"}}),
    ]
    out += _fast_statements(part, account, image, snapshot, created_by, roles or [])
    if templates:
        out.append(_statement("LaunchTemplates", f"{ec2}:launch-template/*"))
    return out


def _iam_statements(iam: str, boundaries: list[str], managed: list[str]) -> list[dict[str, Any]]:
    roles = f"{iam}:role/bakery-*"
    within = {"StringEquals": {"iam:PermissionsBoundary": boundaries}} if boundaries else None
    out = [
        _statement("ReadInstanceRoles", roles),
        _statement("WriteInstanceRolesWithinBoundary", roles, within),
        _statement("TagInstanceRoles", roles),
        _statement("InstanceProfiles", f"{iam}:instance-profile/bakery-*"),
        _statement("PassInstanceRolesToEc2", roles, {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
    ]
    if managed:
        condition: dict[str, Any] = {"ArnEquals": {"iam:PolicyARN": managed}}
        if within:
            condition.update(within)
        out.append(_statement("AttachCataloguePolicies", roles, condition))
    if boundaries:
        # The boundary is the ceiling: the bakery may never take it off a role.
        out.append(_statement("KeepTheBoundary", roles, effect="Deny", actions=["iam:DeleteRolePermissionsBoundary"]))
    return out


def _kms_statements(keys: list[str], regions: list[str], sharing: bool) -> list[dict[str, Any]]:
    """Key ARNs as resources; an alias cannot be a key operation's resource, so an alias key is any key
    of its region whose aliases include it (``kms:ResourceAliases``; AWS KMS Developer Guide, "Use
    aliases to control access to KMS keys")."""
    if not keys:
        return []
    via = {"StringEquals": {"kms:ViaService": sorted(f"ec2.{r}.amazonaws.com" for r in regions)}}
    grant = {**via, "Bool": {"kms:GrantIsForAWSResource": "true"}}
    by_arn = [k for k in keys if ":alias/" not in k]
    aliases = [k for k in keys if ":alias/" in k]
    out = []
    for suffix, resources, extra in (("", by_arn, {}), ("ByAlias", sorted({k.split(":alias/")[0] + ":key/*"
                                                                          for k in aliases}),
                                                        {"ForAnyValue:StringEquals": {"kms:ResourceAliases": sorted(
                                                            "alias/" + k.split(":alias/")[1] for k in aliases)}})):
        if not resources:
            continue
        out.append(_statement("EncryptWithCatalogueKeys", resources, {**via, **extra}) | {
            "Sid": "EncryptWithCatalogueKeys" + suffix})
        out.append(_statement("GrantCatalogueKeysToEbs", resources, {**grant, **extra}) | {
            "Sid": "GrantCatalogueKeysToEbs" + suffix})
        if sharing:  # preflight reads the key policies of a shared AMI's keys (bakery_lib.kms)
            out.append(_statement("ReadCatalogueKeyPolicies", resources, extra or None) | {
                "Sid": "ReadCatalogueKeyPolicies" + suffix})
    return out


def bakery_policy(catalog: Catalog) -> dict[str, Any]:
    """The identity policy the bakery needs to bake, publish, prune and reap every role of ``catalog``."""
    roles = list(catalog.roles.values())
    account, part = _account_and_partition(roles)
    regions = sorted({r for role in roles for r in role.regions})
    tag_keys = sorted({"Name", "bakery:*", *(k for role in roles for k, _ in role.tags)})
    statements = _ec2_statements(part, account, regions, tag_keys, any(r.launch_template for r in roles), roles)
    statements += _iam_statements(
        f"arn:{part}:iam::{account}",
        sorted({r.permissions_boundary for r in roles if r.permissions_boundary}),
        sorted({arn for r in roles for arn in r.managed_policies}))
    buckets = sorted({r.runlist_bucket for r in roles})
    statements.append(_statement("RunLists", [f"arn:{part}:s3:::{b}/runlists/*" for b in buckets]))
    # Bake records (bakery_lib.inventory): the instances' inventories and log tails, the bakery's SBOMs.
    statements.append(_statement("BakeRecords", [f"arn:{part}:s3:::{b}/bakes/*" for b in buckets]))
    # ... which go with their bake's AMI (prune, cleanup, reap: bakery_lib.records); nothing else is deleted.
    statements.append(_statement("DeleteBakeRecords", [f"arn:{part}:s3:::{b}/bakes/*" for b in buckets]))
    # `bakery validate` checks the bucket exists (HeadBucket needs s3:ListBucket on it); the records of a
    # bake are listed (ListObjectsV2, prefix bakes/ROLE/BAKE_ID/) before they are deleted.
    statements.append(_statement("RunListBuckets", [f"arn:{part}:s3:::{b}" for b in buckets]))
    statements.append(_statement("LatestParameters", sorted(
        f"arn:{part}:ssm:{r}:{account}:parameter/bakery/*" for r in regions)))
    sharing = any(r.share_with_accounts or r.share_with_organizations for r in roles)
    statements += _kms_statements(_key_arns(roles, part, account), regions, sharing)
    return {"Version": "2012-10-17", "Statement": statements}


def policy_actions(policy: dict[str, Any], effect: str = "Allow") -> set[str]:
    """Every action the statements of ``effect`` name."""
    out: set[str] = set()
    for st in policy["Statement"]:
        if st["Effect"] == effect:
            actions = st["Action"]
            out.update([actions] if isinstance(actions, str) else actions)
    return out
