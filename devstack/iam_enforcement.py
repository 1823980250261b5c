"""IAM identities on a moto server that enforces IAM (``MotoServer(iam_enforcement=True)``), and what
moto's evaluation of their policies does and does not check.

What moto 5.2 evaluates (read in its source: ``moto/core/authorization.py``,
``moto/iam/access_control.py``, ``moto/iam/policy_conditions.py``, ``moto/core/responses.py``):

- Every request after ``INITIAL_NO_AUTH_ACTION_COUNT`` free ones must be SigV4-signed with an IAM
  user's access key (or an assumed role's session credentials), else ``InvalidClientTokenId`` /
  ``SignatureDoesNotMatch``.
- The caller's inline and attached policies (and its groups'): ``Action`` / ``NotAction`` with ``*``
  wildcards, ``Effect: Deny`` winning over ``Allow``, nothing allowed means ``AccessDenied`` /
  ``UnauthorizedOperation``.
- ``Resource`` only where moto names the request's resource: S3 (``arn:aws:s3:::BUCKET/KEY``), IAM
  calls naming an existing role (``RoleName``: the role's ARN), ``sts:AssumeRole`` (the role's ARN,
  whose trust policy is checked too). Every other request's resource is ``*``, which a scoped
  ``Resource`` pattern never matches.

What it does not evaluate: conditions (only ``StringEquals`` on ``sts:ExternalId``; every other
operator or key counts as met), permissions boundaries, service control policies, resource policies
(bucket and KMS key policies), the extra actions a call implies (``iam:PassRole`` for RunInstances
with a profile, ``iam:TagRole`` for CreateRole with tags, ``ec2:CreateTags`` for TagSpecifications),
and trust policies naming a service principal (``{"Service": "ec2.amazonaws.com"}`` makes its
AssumeRole check fail with a server error).

So a shipped policy is run here as :func:`as_moto_evaluates` makes it: every action exactly as
shipped, S3 resources as shipped, every other resource ``*`` (moto offers nothing else to match). What
moto cannot check (resources elsewhere, conditions, boundaries, implied actions) is checked by the unit
tests of the policy against the rules of the AWS documentation.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .moto import MotoServer

ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def as_moto_evaluates(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` with the resources moto never names widened to ``*`` (see the module docstring)."""
    out = copy.deepcopy(policy)
    for statement in out["Statement"]:
        resources = statement.get("Resource", "*")
        listed = [resources] if isinstance(resources, str) else list(resources)
        if statement["Effect"] == "Allow" and not all(r.startswith("arn:aws:s3:::") for r in listed):
            statement["Resource"] = "*"
        statement.pop("Condition", None)  # not evaluated by moto either way; kept out of its parser
    return out


def create_user(moto: MotoServer, name: str, policy: dict[str, Any]) -> tuple[str, str]:
    """An IAM user holding only ``policy`` (inline); returns its access key pair. Before enforce_iam()."""
    iam = moto.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


def replace_user_policy(admin_iam: Any, name: str, policy: dict[str, Any]) -> None:
    """Swap the user's only inline policy (with an admin's client, once enforcement is on)."""
    admin_iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))


def credentials_env(keys: tuple[str, str]) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1]}
