"""IAM for the calls the AMI layer answers itself, when its moto enforces IAM.

moto (started with ``INITIAL_NO_AUTH_ACTION_COUNT``) checks every call it serves against the caller's
policies (``devstack/iam_enforcement.py`` says what it evaluates). The calls the layer answers never
reach moto, so the layer checks them the same way: the caller's access key (from the SigV4
``Authorization`` header) names an IAM user (``iam:GetAccessKeyLastUsed``); the user's inline and
attached policies, and its groups', are read from moto with the layer's own administrator key
(created while moto still answers unauthenticated requests) and evaluated with moto's own policy
evaluation (``moto.iam.access_control.IAMPolicy``): ``Deny`` wins, nothing allowed is a refusal,
resources are ``*`` and conditions are not evaluated, exactly as moto does for the EC2 calls it serves.

The refusal is EC2's: ``UnauthorizedOperation`` (HTTP 403), "You are not authorized to perform this
operation. User: ARN is not authorized to perform: ec2:ACTION" (EC2 API reference, "Error codes";
the wording of moto's own refusals). An unknown key is ``AuthFailure`` (HTTP 401). What the layer does
not check: the request's signature (moto checks it on every call the layer forwards; the layer only
reads the key id), session credentials from ``sts:AssumeRole`` (refused as unknown keys).

The layer's own look-ups in moto (``DescribeImages``, ``DescribeSnapshots``) are signed with the
administrator key while enforcement is on, so they never count against the caller.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

_KEY_RE = re.compile(r"Credential=([^/]+)/")


class Denied(Exception):
    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class Enforcer:
    """The IAM check of the layer's own calls (off until :meth:`enable`)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.keys: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._iam: Any = None

    @property
    def on(self) -> bool:
        return self.keys is not None

    def enable(self, access_key: str, secret_key: str) -> None:
        with self._lock:
            self.keys = (access_key, secret_key)
            self._iam = None

    def client(self, service: str, region: str) -> Any:
        """A boto3 client to moto: with the administrator key when enforcing, else moto's dummy key."""
        from ._boto import client
        from .moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

        access, secret = self.keys or (DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY)
        return client(service, endpoint_url=self.upstream, region_name=region, aws_access_key_id=access,
                      aws_secret_access_key=secret)

    def _admin_iam(self) -> Any:
        with self._lock:
            if self._iam is None:
                self._iam = self.client("iam", "us-east-1")
            return self._iam

    def _policies(self, user: str) -> list[str]:
        iam = self._admin_iam()
        docs: list[str] = []
        for name in iam.list_user_policies(UserName=user)["PolicyNames"]:
            docs.append(_document(iam.get_user_policy(UserName=user, PolicyName=name)["PolicyDocument"]))
        attached = list(iam.list_attached_user_policies(UserName=user)["AttachedPolicies"])
        for group in iam.list_groups_for_user(UserName=user)["Groups"]:
            name = group["GroupName"]
            for policy in iam.list_group_policies(GroupName=name)["PolicyNames"]:
                docs.append(_document(iam.get_group_policy(GroupName=name, PolicyName=policy)["PolicyDocument"]))
            attached += iam.list_attached_group_policies(GroupName=name)["AttachedPolicies"]
        for policy in attached:
            version = iam.get_policy(PolicyArn=policy["PolicyArn"])["Policy"]["DefaultVersionId"]
            docs.append(_document(iam.get_policy_version(PolicyArn=policy["PolicyArn"],
                                                         VersionId=version)["PolicyVersion"]["Document"]))
        return docs

    def check(self, action: str, authorization: str) -> None:
        """Raise :class:`Denied` unless the caller may ``ec2:ACTION`` (a no-op while not enforcing)."""
        if not self.on:
            return
        from botocore.exceptions import ClientError
        from moto.iam.access_control import IAMPolicy, PermissionResult

        match = _KEY_RE.search(authorization or "")
        if not match:
            raise Denied("AuthFailure", "AWS was not able to validate the provided access credentials", 401)
        iam = self._admin_iam()
        try:
            user = iam.get_access_key_last_used(AccessKeyId=match.group(1))["UserName"]
        except ClientError:
            raise Denied("AuthFailure", "AWS was not able to validate the provided access credentials", 401) from None
        arn = iam.get_user(UserName=user)["User"]["Arn"]
        results = [IAMPolicy(doc).is_action_permitted(f"ec2:{action}") for doc in self._policies(user)]
        if PermissionResult.DENIED in results or PermissionResult.PERMITTED not in results:
            raise Denied("UnauthorizedOperation", "You are not authorized to perform this operation. "
                         f"User: {arn} is not authorized to perform: ec2:{action}", 403)


def _document(doc: Any) -> str:
    """A policy document as JSON text (boto3 decodes IAM's URL-encoded documents into dicts)."""
    return doc if isinstance(doc, str) else json.dumps(doc)
