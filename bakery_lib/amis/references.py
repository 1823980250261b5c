"""What in the account points at an AMI, as EC2 itself says it: DescribeImageReferences.

One call per region for all of prune's candidates (instances, launch templates, SSM parameters of
data type ``aws:ec2:image`` anywhere in the account, not only the role's own template and
parameter). Prune falls back to its own scan (``lifecycle.prune._protections``) when the call is not
available (an older partition, a policy without ``ec2:DescribeImageReferences``) and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..aws import Aws

_CHUNK = 100
_KINDS = {"instance": "instance", "launch-template": "launch template", "parameter": "SSM parameter"}


def describe_reference(ref: dict[str, Any]) -> str:
    """``instance i-…``, ``launch template lt-…``, ``SSM parameter /bakery/web/latest`` from its ARN."""
    arn = ref.get("Arn") or ""
    resource = arn.split(":", 5)[-1] if arn.count(":") >= 5 else arn
    kind, _, name = resource.partition("/")
    if kind == "parameter":
        name = "/" + name
    return f"{_KINDS.get(kind, ref.get('ResourceType') or kind)} {name or arn}"


def referenced_by(aws: Aws, region: str, image_ids: Sequence[str]) -> dict[str, list[str]]:
    """image id -> "referenced by ..." reasons (raises AwsError when the call is refused)."""
    reasons: dict[str, list[str]] = {}
    for start in range(0, len(image_ids), _CHUNK):
        params: dict[str, Any] = {"ImageIds": list(image_ids[start:start + _CHUNK]), "IncludeAllResourceTypes": True}
        while True:
            answer = aws.call("ec2", region, "DescribeImageReferences", **params)
            for ref in answer.get("ImageReferences", []):
                reasons.setdefault(ref["ImageId"], []).append(f"referenced by {describe_reference(ref)}")
            if not answer.get("NextToken"):
                break
            params["NextToken"] = answer["NextToken"]
    return reasons
