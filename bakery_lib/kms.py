"""Preflight's check that the KMS keys of a shared AMI let the other accounts launch it.

An AMI shared with another account can be launched there only if that account may use the key its
snapshots are encrypted with: the key policy (or a grant) must allow the account ``kms:CreateGrant``,
``kms:Decrypt``, ``kms:DescribeKey``, ``kms:GenerateDataKeyWithoutPlaintext`` and ``kms:ReEncrypt*``
(EC2 User Guide, "Share an AMI with specific AWS accounts"; AWS KMS Developer Guide, "Allowing users in
other accounts to use a KMS key"). An AWS managed key (``aws/ebs``) cannot be shared at all. For an
organization or OU, a statement for every principal (``*``) narrowed by ``aws:PrincipalOrgID`` /
``aws:PrincipalOrgPaths`` to it counts.

Calls: KMS DescribeKey, GetKeyPolicy, ListGrants (only when the policy does not already allow it),
per key of a role that shares its AMI.
"""

from __future__ import annotations

import fnmatch
import json
from typing import TYPE_CHECKING, Any

from .errors import AwsError, BakeryError

if TYPE_CHECKING:
    from .stages.base import Context

NEEDED = ("kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
          "kms:ReEncryptFrom", "kms:ReEncryptTo")
_SHOWN = ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
          "kms:ReEncrypt*"]


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _principals(statement: dict[str, Any]) -> list[str]:
    principal = statement.get("Principal")
    if principal == "*":
        return ["*"]
    return _listed((principal or {}).get("AWS")) if isinstance(principal, dict) else []


def _allows(statement: dict[str, Any], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(statement.get("Action")))


def _for_account(statement: dict[str, Any], account: str) -> bool:
    return any(p in (account, f"arn:aws:iam::{account}:root") or p.endswith(f"::{account}:root")
               for p in _principals(statement))


def _for_org(statement: dict[str, Any], arn: str) -> bool:
    if "*" not in _principals(statement):
        return False
    org_id = arn.split("/")[1]
    values = [v for cond in (statement.get("Condition") or {}).values() if isinstance(cond, dict)
              for key, v in cond.items() if key.lower() in ("aws:principalorgid", "aws:principalorgpaths")]
    return any(org_id in value for v in values for value in _listed(v))


def missing_actions(policy: dict[str, Any], target: str) -> list[str]:
    """The needed actions no Allow statement of ``policy`` grants to ``target`` (account id or org ARN)."""
    match = _for_org if target.startswith("arn:") else _for_account
    mine = [st for st in _listed_statements(policy) if st.get("Effect") == "Allow" and match(st, target)]
    return [a for a in NEEDED if not any(_allows(st, a) for st in mine)]


def _listed_statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy.get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements)


def _granted(ctx: Context, region: str, key_id: str, account: str, missing: list[str]) -> bool:
    grants = ctx.aws.call("kms", region, "ListGrants", KeyId=key_id).get("Grants", [])
    for grant in grants:
        if grant.get("GranteePrincipal") in (account, f"arn:aws:iam::{account}:root"):
            ops = {f"kms:{op}" for op in grant.get("Operations", [])}
            if set(missing) <= ops:
                return True
    return False


def _statement_to_add(target: str) -> str:
    if target.startswith("arn:"):
        statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": _SHOWN,
                                     "Resource": "*",
                                     "Condition": {"StringEquals": {"aws:PrincipalOrgID": target.split("/")[1]}}}
    else:
        statement = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{target}:root"}, "Action": _SHOWN,
                     "Resource": "*"}
    return json.dumps(statement)


def check_key(ctx: Context, region: str, key: str) -> None:
    """The key exists, is customer managed, and lets every target of the role use it."""
    try:
        meta = ctx.aws.call("kms", region, "DescribeKey", KeyId=key)["KeyMetadata"]
    except AwsError as exc:
        raise BakeryError(f"KMS key {key} in {region} (catalogue {ctx.catalog.path}, role {ctx.role.name!r}): "
                          f"{exc.code}: {exc.message}") from None
    if meta.get("KeyManager") == "AWS":
        raise BakeryError(f"KMS key {key} in {region} is AWS managed: an AMI encrypted with it cannot be shared; "
                          "name a customer managed key (catalogue kms_key_id / region_kms_keys)")
    key_id = str(meta["KeyId"])
    policy = json.loads(ctx.aws.call("kms", region, "GetKeyPolicy", KeyId=key_id, PolicyName="default")["Policy"])
    for target in (*ctx.role.share_with_accounts, *ctx.role.share_with_organizations):
        missing = missing_actions(policy, target)
        if missing and not (not target.startswith("arn:") and _granted(ctx, region, key_id, target, missing)):
            raise BakeryError(
                f"KMS key {key} in {region}: its key policy does not let {target} use it to launch the shared "
                f"AMI (missing {', '.join(missing)}); add this statement to the key policy: "
                f"{_statement_to_add(target)}")


def check_sharing_keys(ctx: Context) -> str:
    """Check every key of a role that shares its AMI; '' when the role shares nothing."""
    role = ctx.role
    if not (role.share_with_accounts or role.share_with_organizations):
        return ""
    keys = {role.region: role.kms_key_id, **dict(role.region_kms_keys)}
    checked = []
    for region in role.regions:
        key = keys.get(region)
        if key:  # the catalogue refuses a sharing role without one (catalog.merge)
            check_key(ctx, region, key)
            checked.append(f"{key} ({region})")
    return "KMS keys usable by the shared accounts: " + ", ".join(checked)
