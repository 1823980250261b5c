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
AssumeRole check fail with a server error: :class:`InstanceRoles` gives the instances their role's
policies another way).

So a shipped policy is run here as :func:`as_moto_evaluates` makes it: every action exactly as
shipped, S3 resources as shipped, every other resource ``*`` (moto offers nothing else to match). What
moto cannot check (resources elsewhere, conditions, boundaries, implied actions) is checked by the unit
tests of the policy against the rules of the AWS documentation.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
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


class InstanceRoles:
    """The instance role's own credentials for the IMDS double, on a moto enforcing IAM.

    On EC2 an instance gets temporary credentials of its instance profile's role (EC2 User Guide, "IAM
    roles for Amazon EC2"): what it may do is that role's policies, nothing else. moto cannot issue
    them: its AssumeRole fails (HTTP 500) on a trust policy naming a service principal such as
    ``ec2.amazonaws.com``, which is what the bakery writes. So each role gets a *mirror*: a role of
    the same policies -- its inline policies as :func:`as_moto_evaluates` makes them, its attached
    managed policies -- trusting the hypervisor's user, which assumes it. The session credentials
    (``ASIA...`` with a token) are what the IMDS double hands out, so moto evaluates every call the
    instance makes against the instance role's policy. The mirror is brought in line with the role when
    an instance first asks (the iam-role stage wrote the policy before the launch). ``drop`` removes the statements with those ``Sid``s from the mirror (a test proving each statement
    is needed).
    """

    def __init__(self, moto: MotoServer, hypervisor: tuple[str, str], region: str = "us-east-1"):
        from ._boto import client as shared_client

        def client(service: str) -> Any:
            return shared_client(service, endpoint_url=moto.url, region_name=region,
                                 aws_access_key_id=hypervisor[0], aws_secret_access_key=hypervisor[1])

        self.iam, self.sts, self.ec2 = client("iam"), client("sts"), client("ec2")
        self.drop: set[str] = set()
        self.issued: list[tuple[str, str]] = []  # (instance id, role), for tests
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, frozenset[str]], tuple[str, str, dict[str, str]] | None] = {}

    def __call__(self, instance_id: str) -> tuple[str, str, dict[str, str]] | None:
        # One set of credentials per instance (and per ``drop``): EC2 hands out the same until they
        # near expiry, and an AWS CLI waits only a second for IMDS (botocore's default timeout).
        key = (instance_id, frozenset(self.drop))
        with self._lock:
            if key not in self._cache:
                self._cache[key] = self._fetch(instance_id)
            return self._cache[key]

    def _fetch(self, instance_id: str) -> tuple[str, str, dict[str, str]] | None:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        profile = next((i.get("IamInstanceProfile") for r in found for i in r["Instances"]), None)
        if not profile:
            return None
        roles = self.iam.get_instance_profile(InstanceProfileName=profile["Arn"].rsplit("/", 1)[-1])[
            "InstanceProfile"]["Roles"]
        if not roles:
            return None
        role = roles[0]["RoleName"]
        mirror = self._mirror(role)
        creds = self.sts.assume_role(RoleArn=mirror, RoleSessionName=instance_id)["Credentials"]
        self.issued.append((instance_id, role))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        expires = creds["Expiration"]
        return profile["Arn"], role, {
            "Code": "Success", "LastUpdated": stamp, "Type": "AWS-HMAC", "AccessKeyId": creds["AccessKeyId"],
            "SecretAccessKey": creds["SecretAccessKey"], "Token": creds["SessionToken"],
            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(expires, "strftime") else str(expires)}

    def _mirror(self, role: str) -> str:
        name = f"{role}-as-instance"[:64]
        me = self.sts.get_caller_identity()["Arn"]
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": me}, "Action": "sts:AssumeRole"}]}
        try:
            arn = str(self.iam.get_role(RoleName=name)["Role"]["Arn"])
        except self.iam.exceptions.NoSuchEntityException:
            arn = str(self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])
        wanted = set(self.iam.list_role_policies(RoleName=role)["PolicyNames"])
        for stale in set(self.iam.list_role_policies(RoleName=name)["PolicyNames"]) - wanted:
            self.iam.delete_role_policy(RoleName=name, PolicyName=stale)
        for policy_name in wanted:
            doc = self.iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
            doc = json.loads(doc) if isinstance(doc, str) else doc
            doc["Statement"] = [st for st in doc["Statement"] if st.get("Sid") not in self.drop] or [
                {"Effect": "Deny", "Action": "*", "Resource": "*"}]
            self.iam.put_role_policy(RoleName=name, PolicyName=policy_name,
                                     PolicyDocument=json.dumps(as_moto_evaluates(doc)))
        attached = {p["PolicyArn"] for p in self.iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]}
        have = {p["PolicyArn"] for p in self.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]}
        for arn_ in attached - have:
            self.iam.attach_role_policy(RoleName=name, PolicyArn=arn_)
        for arn_ in have - attached:
            self.iam.detach_role_policy(RoleName=name, PolicyArn=arn_)
        return arn


@contextlib.contextmanager
def instance_role_credentials(roles: InstanceRoles) -> Iterator[InstanceRoles]:
    """Every IMDS double hands out ``roles``' credentials while this lasts."""
    from .imds import ImdsDouble

    before = ImdsDouble.role_credentials
    ImdsDouble.role_credentials = roles
    try:
        yield roles
    finally:
        ImdsDouble.role_credentials = before
