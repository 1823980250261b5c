"""``bakery setup``: what a bake needs in the account before the first one, planned first, then made.

From the catalogue: every run-list bucket (and the bucket of ``chef.validation_key_s3``) exists and is
encrypted (SSE-S3 by default), versioned and has every public access block on; the validator key
object exists (uploaded from ``--validator-key PATH`` with server-side encryption: the bucket is
private, and only the bake's instance roles are granted read on it); the alert topic of every role
exists. The plan is made with Head/Get calls only; ``--dry-run`` prints it, every call of it, and
stops; without it the calls are made in order and each line says what was done. A rerun finds
nothing to do. The bakery identity's IAM policy is printed at the end (``bakery iam-policy``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .aws import Aws
from .catalog import Catalog
from .errors import AwsError, UsageError
from .iam_policy import bakery_policy

PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                       "RestrictPublicBuckets": True}
ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]}


@dataclass(frozen=True)
class Call:
    service: str
    region: str
    operation: str
    params: dict[str, Any]

    def text(self) -> str:
        shown = {k: ("<file contents>" if k == "Body" else v) for k, v in self.params.items()}
        return f"{self.service} {self.operation} {json.dumps(shown, sort_keys=True)}"


@dataclass
class Step:
    what: str
    status: str  # ok | create | fix
    calls: list[Call] = field(default_factory=list)
    needs: str = ""  # what the step lacks to be applied (the validator's PEM)


def _missing(code: str) -> bool:
    return code in ("404", "NoSuchBucket", "NotFound", "NoSuchKey", "NotFoundException",
                    "ServerSideEncryptionConfigurationNotFoundError", "NoSuchPublicAccessBlockConfiguration")


def _probe(fn: Callable[[], Any]) -> Any | None:
    """The answer of a Head/Get call, or None when what it asks about does not exist."""
    try:
        return fn()
    except AwsError as exc:
        if _missing(exc.code):
            return None
        raise


def _bucket_step(aws: Aws, bucket: str, region: str) -> Step:
    s3 = "s3"
    calls: list[Call] = []
    exists = _probe(lambda: aws.call(s3, region, "HeadBucket", Bucket=bucket)) is not None
    if not exists:
        params: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        calls.append(Call(s3, region, "CreateBucket", params))
    enc = _probe(lambda: aws.call(s3, region, "GetBucketEncryption", Bucket=bucket)) if exists else None
    if not enc:
        calls.append(Call(s3, region, "PutBucketEncryption",
                          {"Bucket": bucket, "ServerSideEncryptionConfiguration": ENCRYPTION}))
    ver = aws.call(s3, region, "GetBucketVersioning", Bucket=bucket) if exists else {}
    if ver.get("Status") != "Enabled":
        calls.append(Call(s3, region, "PutBucketVersioning",
                          {"Bucket": bucket, "VersioningConfiguration": {"Status": "Enabled"}}))
    pab = _probe(lambda: aws.call(s3, region, "GetPublicAccessBlock", Bucket=bucket)) if exists else None
    if not pab or pab.get("PublicAccessBlockConfiguration") != PUBLIC_ACCESS_BLOCK:
        calls.append(Call(s3, region, "PutPublicAccessBlock",
                          {"Bucket": bucket, "PublicAccessBlockConfiguration": PUBLIC_ACCESS_BLOCK}))
    what = f"bucket {bucket} ({region}): encrypted, versioned, public access blocked"
    return Step(what, "ok" if not calls else ("create" if not exists else "fix"), calls)


def _validator_step(aws: Aws, url: str, region: str, key_path: Path | None, bucket_exists: bool) -> Step:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    what = f"validator key {url}"
    head = _probe(lambda: aws.call("s3", region, "HeadObject", Bucket=bucket, Key=key)) if bucket_exists else None
    if head is not None:
        return Step(what + ": present", "ok")
    needs = "" if key_path is not None else (f"{what} does not exist: give the Chef validator's PEM with "
                                               "--validator-key PATH (it is uploaded encrypted to that key)")
    body = key_path.read_bytes() if key_path is not None else b""
    return Step(what + f": upload {key_path or '--validator-key PATH'}", "create", [Call("s3", region, "PutObject", {
        "Bucket": bucket, "Key": key, "Body": body, "ServerSideEncryption": "AES256"})], needs)


def _topic_step(aws: Aws, arn: str) -> Step:
    parts = arn.split(":")
    region, name = parts[3], parts[5]
    found = _probe(lambda: aws.call("sns", region, "GetTopicAttributes", TopicArn=arn))
    if found is not None:
        return Step(f"alert topic {arn}: present", "ok")
    return Step(f"alert topic {arn}", "create", [Call("sns", region, "CreateTopic", {"Name": name})])


def plan(aws: Aws, catalog: Catalog, validator_key: Path | None) -> list[Step]:
    """Every step, with the calls it needs (none when it is in place). Head/Get calls only."""
    if validator_key is not None and not validator_key.is_file():
        raise UsageError(f"--validator-key {validator_key}: no such file")
    roles = list(catalog.roles.values())
    if not roles:
        raise UsageError(f"catalogue {catalog.path}: no roles, nothing to set up")
    buckets: dict[str, str] = {}
    for r in roles:
        buckets.setdefault(r.runlist_bucket, r.region)
        vb = r.chef.validation_key_s3.removeprefix("s3://").partition("/")[0]
        buckets.setdefault(vb, r.region)
    steps = [_bucket_step(aws, b, region) for b, region in buckets.items()]
    made = {b for b, s in zip(buckets, steps, strict=True) if s.status != "create"}
    for url in dict.fromkeys(r.chef.validation_key_s3 for r in roles):
        bucket = url.removeprefix("s3://").partition("/")[0]
        steps.append(_validator_step(aws, url, buckets[bucket], validator_key, bucket in made))
    for arn in dict.fromkeys(r.alert_topic_arn for r in roles):
        steps.append(_topic_step(aws, arn))
    return steps


def apply(aws: Aws, steps: list[Step], say: Callable[[str], None]) -> None:
    """Make the plan's calls in order. Refused (exit 2, nothing done) when a step lacks what it needs."""
    lacking = [s.needs for s in steps if s.needs]
    if lacking:
        raise UsageError("; ".join(lacking) + "; nothing was changed")
    for step in steps:
        for call in step.calls:
            aws.call(call.service, call.region, call.operation, **call.params)
        say(f"{'done' if step.calls else 'ok'}: {step.what}")


def plan_lines(steps: list[Step]) -> list[str]:
    lines = []
    for step in steps:
        lines.append(f"{step.status:<6} {step.what}")
        lines.extend(f"         {call.text()}" for call in step.calls)
    todo = sum(len(s.calls) for s in steps)
    lines.append(f"{todo} call(s) to make" if todo else "nothing to do: everything is in place")
    return lines


def policy_text(catalog: Catalog) -> str:
    """The bakery identity's least-privilege IAM policy (``bakery iam-policy``), when this bakery has it."""
    return json.dumps(bakery_policy(catalog), indent=2, sort_keys=True)
