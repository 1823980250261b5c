"""Whether a deregistered AMI can come back: the Recycle Bin retention rules for EC2 images in a region.

Prune asks (Recycle Bin ListRules, ``ResourceType=EC2_IMAGE``, once per region where it deletes) and
says so in its output: a Region-level rule keeps every deregistered AMI for its retention period,
restorable with ``aws ec2 restore-image-from-recycle-bin``; a rule with resource tags keeps only the
AMIs carrying them. No rule: a deregistered AMI is gone.
"""

from __future__ import annotations

from typing import Any

from ..aws import Aws
from ..errors import AwsError


def _rule(rule: dict[str, Any]) -> str:
    period = rule.get("RetentionPeriod") or {}
    days = period.get("RetentionPeriodValue", "?")
    return f"rule {rule.get('Identifier', '?')} ({days} {str(period.get('RetentionPeriodUnit', 'DAYS')).lower()})"


def retention_note(aws: Aws, region: str) -> str:
    """One line about the region's Recycle Bin rules for EC2 images."""
    try:
        rules = aws.call("rbin", region, "ListRules", ResourceType="EC2_IMAGE").get("Rules", [])
    except AwsError as exc:
        return f"{region}: Recycle Bin rules could not be read ({exc.code}): a deregistered AMI may be gone for good"
    if not rules:
        return f"{region}: no Recycle Bin retention rule for EC2 images: a deregistered AMI is gone for good"
    return (f"{region}: Recycle Bin retention {', '.join(_rule(r) for r in rules)} for EC2 images: a deregistered "
            f"AMI the rule covers is recoverable for that long (aws ec2 restore-image-from-recycle-bin "
            f"--region {region} --image-id ID)")
