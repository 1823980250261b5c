"""Recycle Bin retention rules for the AMI layer (``devstack.ami_layer``): moto 5.2 has no ``rbin``.

From the Recycle Bin API reference (docs.aws.amazon.com/recyclebin/latest/APIReference/): ``CreateRule``
(``POST /rules``, 201) requires ``ResourceType`` (``EBS_SNAPSHOT`` | ``EC2_IMAGE`` | ``EBS_VOLUME``)
and ``RetentionPeriod`` (``RetentionPeriodValue`` 1..3650, ``RetentionPeriodUnit`` ``DAYS``); a rule
without ``ResourceTags`` is a Region-level rule. ``ListRules`` (``POST /list-rules``) requires
``ResourceType`` and answers ``Rules`` (``Identifier``, ``Description``, ``RetentionPeriod``,
``LockState``, ``RuleArn``). A missing or invalid parameter is ``ValidationException`` (400). What is
not modelled: retention itself (DeregisterImage does not put an AMI in a bin here), locks, tags.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
from typing import Any

from .moto import ACCOUNT_ID

RESOURCE_TYPES = ("EBS_SNAPSHOT", "EC2_IMAGE", "EBS_VOLUME")


class RbinError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.status, self.code = 400, "ValidationException"

    def body(self) -> bytes:
        return json.dumps({"message": str(self), "Reason": "INVALID_PARAMETER_VALUE"}).encode()


class RecycleBin:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: dict[str, list[dict[str, Any]]] = {}

    def handle(self, path: str, region: str, body: bytes) -> tuple[int, bytes] | None:
        """(status, JSON body) for the calls modelled here, None for any other path."""
        request = json.loads(body or b"{}")
        kind = request.get("ResourceType")
        if path.split("?")[0] not in ("/rules", "/list-rules"):
            return None
        if kind not in RESOURCE_TYPES:
            raise RbinError(f"1 validation error detected: Value '{kind}' at 'resourceType' failed to satisfy "
                            f"constraint: Member must satisfy enum value set: {list(RESOURCE_TYPES)}")
        if path.startswith("/list-rules"):
            with self.lock:
                rules = [{k: r[k] for k in ("Identifier", "Description", "RetentionPeriod", "LockState", "RuleArn")}
                         for r in self.rules.get(region, []) if r["ResourceType"] == kind]
            return 200, json.dumps({"Rules": rules}).encode()
        return 201, json.dumps(self._create(region, kind, request)).encode()

    def _create(self, region: str, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        period = request.get("RetentionPeriod") or {}
        value = period.get("RetentionPeriodValue")
        if not isinstance(value, int) or not 1 <= value <= 3650 or period.get("RetentionPeriodUnit") != "DAYS":
            raise RbinError("RetentionPeriod must be 1..3650 DAYS")
        ident = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(11))
        rule = {"Identifier": ident, "Description": request.get("Description", ""), "ResourceType": kind,
                "RetentionPeriod": period, "ResourceTags": request.get("ResourceTags", []),
                "Tags": request.get("Tags", []), "Status": "available", "LockState": "unlocked",
                "RuleArn": f"arn:aws:rbin:{region}:{ACCOUNT_ID}:rule/{ident}"}
        with self.lock:
            self.rules.setdefault(region, []).append(rule)
        return rule
