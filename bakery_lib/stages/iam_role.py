"""iam-role: create or update the role's IAM role, inline policy and instance profile.

Least privilege for what the instance does itself: read its run list object and the validator key
in S3, write (PutObject only) the bake's records under ``bakes/ROLE/`` of the run-list bucket (package
inventory, a failed run's log tail: ``bakery_lib.inventory``), publish to the alert topic, and tag only
itself (the bootstrap result and the ``bakery:bootstrap-log`` URI). Licensed Chef
(``chef.license_key_s3`` / ``chef.license_key_ssm``): ``s3:GetObject`` on exactly that object, or
``ssm:GetParameter`` (``ssm:GetParameters`` too on Windows: ``Get-SSMParameterValue`` calls
GetParameters) on exactly that parameter, in each region of the role (an instance reads it in its own
region) and this account (one STS GetCallerIdentity, only for such a role). No ``kms:Decrypt``: a
SecureString under the AWS managed key ``aws/ssm`` needs none (that key's policy lets every principal of
the account decrypt through Parameter Store; AWS Systems Manager User Guide, "Restricting decryption of
SecureString parameter values"); a parameter or object under a customer managed key needs that key's
policy to allow this role, which is where the key's owner decides it.
Managed policies named in the catalogue are attached; managed policies no longer named are detached.
Writes ``iam_role_name``/``instance_profile_name`` to the state as soon as each exists.
Permissions boundary (``permissions_boundary``): CreateRole sets it, an existing role without it (or
with another) gets it with PutRolePermissionsBoundary before its policies are written; whatever the
inline and managed policies say, the instance can do no more than the boundary allows (IAM User Guide,
"Permissions boundaries for IAM entities"), and the bakery's own policy lets it create roles only so.
Calls: IAM GetRole, CreateRole, UpdateAssumeRolePolicy, PutRolePermissionsBoundary, PutRolePolicy, ListAttachedRolePolicies,
AttachRolePolicy, DetachRolePolicy, GetInstanceProfile, CreateInstanceProfile,
AddRoleToInstanceProfile. On a role's first bake: GetRole, CreateRole, PutRolePolicy,
CreateInstanceProfile, AddRoleToInstanceProfile and nothing else.
Cleanup: none; role and profile belong to the role, not to one bake.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from ..catalog import S3_URL_RE, RoleSpec
from ..errors import AwsError, BakeryError
from ..inventory import role_records_prefix
from .base import Context, RoleContext, no_cleanup, resource_name

cleanup = no_cleanup  # see the module docstring

POLICY_NAME = "bakery-instance"

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def partition_of(arn: str) -> str:
    return arn.split(":")[1]


def _s3_object_arn(part: str, url: str) -> str:
    m = S3_URL_RE.match(url)
    assert m, "validated by the catalogue"
    return f"arn:{part}:s3:::{m.group(1)}/{m.group(2)}"


def license_statements(role: RoleSpec, account: str | None) -> list[dict[str, Any]]:
    """What licensed Chef needs to read its key: exactly that S3 object or SSM parameter, nothing more."""
    part = partition_of(role.alert_topic_arn)
    if role.chef.license_key_s3:
        return [{"Sid": "ReadChefLicenseKey", "Effect": "Allow", "Action": "s3:GetObject",
                 "Resource": _s3_object_arn(part, role.chef.license_key_s3)}]
    if role.chef.license_key_ssm:
        if not account:
            raise BakeryError(f"role {role.name!r}: the account id is needed to grant the SSM license parameter")
        name = role.chef.license_key_ssm.lstrip("/")
        actions = ["ssm:GetParameter", "ssm:GetParameters"] if role.platform == "windows" else "ssm:GetParameter"
        return [{"Sid": "ReadChefLicenseKey", "Effect": "Allow", "Action": actions,
                 "Resource": sorted(f"arn:{part}:ssm:{r}:{account}:parameter/{name}" for r in role.regions)}]
    return []


def instance_policy(role: RoleSpec, account: str | None = None) -> dict[str, Any]:
    """The role's inline instance policy; ``account`` is needed only with ``chef.license_key_ssm``."""
    part = partition_of(role.alert_topic_arn)
    validator_arn = _s3_object_arn(part, role.chef.validation_key_s3)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadRunListAndValidatorKey",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": sorted({f"arn:{part}:s3:::{role.runlist_bucket}/{role.runlist_key}", validator_arn}),
            },
            {
                # The bake's records (package inventory, a failed run's log tail): write only, under the
                # role's own prefix; no read, no list, no delete, nothing of another role.
                "Sid": "WriteBakeRecords",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"arn:{part}:s3:::{role.runlist_bucket}/{role_records_prefix(role.name)}*",
            },
            {"Sid": "AlertOnFailure", "Effect": "Allow", "Action": "sns:Publish", "Resource": role.alert_topic_arn},
            {
                # An instance may only tag itself, and only with the result keys of a bake (bootstrap)
                # or of a boot test (boot-test).
                "Sid": "TagOnlyItself",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": f"arn:{part}:ec2:*:*:instance/*",
                "Condition": {
                    "StringEquals": {"aws:ARN": "${ec2:SourceInstanceARN}"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["bakery:bootstrap", "bakery:bootstrap-detail",
                                                                  "bakery:bootstrap-log", "bakery:boot-test",
                                                                  "bakery:boot-test-detail"]},
                },
            },
            *license_statements(role, account),
        ],
    }


def _doc(value: Any) -> Any:
    """IAM returns policy documents URL-encoded on AWS and as dicts through boto3; accept both."""
    if isinstance(value, str):
        return json.loads(unquote(value))
    return value


def _ensure_role(ctx: RoleContext, name: str, tags: list[dict[str, str]], actions: list[str]) -> bool:
    """Create the IAM role or check and converge an existing one; True when it was created just now."""
    try:
        existing = ctx.iam("GetRole", RoleName=name)["Role"]
    except AwsError as exc:
        if exc.code != "NoSuchEntity":
            raise
        params: dict[str, Any] = {}
        if ctx.role.permissions_boundary:
            # Set in the creating call: the bakery's policy allows CreateRole only with the boundary.
            params["PermissionsBoundary"] = ctx.role.permissions_boundary
        ctx.iam("CreateRole", RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                Description=f"AMI Bakery instances of role {ctx.role.name}", Tags=tags, MaxSessionDuration=3600,
                **params)
        actions.append("created role")
        return True
    existing_tags = {t["Key"]: t["Value"] for t in existing.get("Tags", [])}
    if not existing_tags:
        existing_tags = {t["Key"]: t["Value"] for t in ctx.aws.paginate("iam", ctx.region, "ListRoleTags", "Tags",
                                                                          RoleName=name)}
    if existing_tags.get("bakery:managed") != "true":
        raise BakeryError(f"IAM role {name} exists but is not managed by the bakery (no tag bakery:managed=true)")
    if _doc(existing.get("AssumeRolePolicyDocument")) != TRUST_POLICY:
        ctx.iam("UpdateAssumeRolePolicy", RoleName=name, PolicyDocument=json.dumps(TRUST_POLICY))
        actions.append("trust policy updated")
    boundary = (existing.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    if ctx.role.permissions_boundary and boundary != ctx.role.permissions_boundary:
        # A role made before the catalogue named a boundary (or with another one) gets it first,
        # before any policy is written to it. A boundary is never removed by the bakery.
        ctx.iam("PutRolePermissionsBoundary", RoleName=name, PermissionsBoundary=ctx.role.permissions_boundary)
        actions.append("permissions boundary set")
    return False


def _converge_inline(ctx: RoleContext, name: str, created: bool, actions: list[str]) -> None:
    account = None
    if ctx.role.chef.license_key_ssm:
        # Once per run: the parameter's ARN names the account (SSM has no account wildcard worth granting).
        account = ctx.session.once(("account",), lambda: ctx.aws.account_id(ctx.region))
    policy = instance_policy(ctx.role, account)
    current = None
    if not created:  # a role created just now has no policies: skip the reads
        try:
            current = _doc(ctx.iam("GetRolePolicy", RoleName=name, PolicyName=POLICY_NAME)["PolicyDocument"])
        except AwsError as exc:
            if exc.code != "NoSuchEntity":
                raise
    if current != policy:
        ctx.iam("PutRolePolicy", RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
        actions.append("inline policy written")
    if created:
        return
    for extra in ctx.aws.paginate("iam", ctx.region, "ListRolePolicies", "PolicyNames", RoleName=name):
        if extra != POLICY_NAME:
            ctx.iam("DeleteRolePolicy", RoleName=name, PolicyName=extra)
            actions.append(f"inline policy {extra} removed")


def _converge_managed(ctx: RoleContext, name: str, created: bool, actions: list[str]) -> None:
    attached = set() if created else {
        p["PolicyArn"] for p in ctx.aws.paginate("iam", ctx.region, "ListAttachedRolePolicies", "AttachedPolicies",
                                                 RoleName=name)}
    for arn in ctx.role.managed_policies:
        if arn not in attached:
            ctx.iam("AttachRolePolicy", RoleName=name, PolicyArn=arn)
            actions.append(f"attached {arn}")
    for arn in sorted(attached - set(ctx.role.managed_policies)):
        ctx.iam("DetachRolePolicy", RoleName=name, PolicyArn=arn)
        actions.append(f"detached {arn}")


def _create_profile(ctx: RoleContext, name: str, tags: list[dict[str, str]], actions: list[str]) -> dict[str, Any]:
    profile: dict[str, Any] = ctx.iam("CreateInstanceProfile", InstanceProfileName=name, Tags=tags)["InstanceProfile"]
    actions.append("created instance profile")
    return profile


def _ensure_profile(ctx: RoleContext, name: str, tags: list[dict[str, str]], created: bool,
                    actions: list[str]) -> dict[str, Any]:
    if created:
        # A role created just now: its profile most likely does not exist either, so create it
        # straight away and read it only when it does exist (one call saved on a role's first bake).
        try:
            return _create_profile(ctx, name, tags, actions)
        except AwsError as exc:
            if exc.code != "EntityAlreadyExists":
                raise
    try:
        profile: dict[str, Any] = ctx.iam("GetInstanceProfile", InstanceProfileName=name)["InstanceProfile"]
        return profile
    except AwsError as exc:
        if exc.code != "NoSuchEntity":
            raise
    return _create_profile(ctx, name, tags, actions)


def converge(ctx: RoleContext, on_role: Callable[[str], None] | None = None,
             on_profile: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Create or converge the role's IAM role, policies and instance profile (state-free: create-instance
    calls it too). ``on_role``/``on_profile`` run as soon as each exists. Returns (profile name, message)."""
    name = resource_name(ctx.role.name, 64)
    tags = [{"Key": "bakery:managed", "Value": "true"}, {"Key": "bakery:role", "Value": ctx.role.name}]
    actions: list[str] = []
    created = _ensure_role(ctx, name, tags, actions)
    if on_role is not None:
        on_role(name)
    _converge_inline(ctx, name, created, actions)
    _converge_managed(ctx, name, created, actions)
    profile = _ensure_profile(ctx, name, tags, created, actions)
    if on_profile is not None:
        on_profile(name)
    if name not in [r["RoleName"] for r in profile.get("Roles", [])]:
        for other in profile.get("Roles", []):
            ctx.iam("RemoveRoleFromInstanceProfile", InstanceProfileName=name, RoleName=other["RoleName"])
        ctx.iam("AddRoleToInstanceProfile", InstanceProfileName=name, RoleName=name)
        actions.append("role added to instance profile")
        # IAM is eventually consistent: EC2 may reject a new profile for some seconds. No waiter here
        # (IAM itself answers at once, so it would only cost a call): launch retries RunInstances
        # while EC2 reports the profile invalid.
    return name, f"IAM role and instance profile {name}: " + (", ".join(actions) or "unchanged")


def run(ctx: Context) -> str:
    state = ctx.require_state()

    def record_role(name: str) -> None:
        state.iam_role_name = name
        ctx.save()

    def record_profile(name: str) -> None:
        state.instance_profile_name = name
        ctx.save()

    _, message = converge(ctx, record_role, record_profile)
    return message


SAFE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
