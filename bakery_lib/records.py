"""A bake's records in S3 go with its AMI: removed when the AMI is, unless an AMI that stays points at them.

The records are everything under ``s3://BUCKET/bakes/ROLE/BAKE_ID/`` (:mod:`bakery_lib.inventory`: the
inventory the bake instance uploaded, the SBOM the bakery made of it, the log tail of a failed bake run,
the first-boot log tails of instances of the image). When prune deletes a bake's AMI, or a teardown
(``bakery cleanup`` of a failed bake, a failed ``bakery bake``, ``bakery reap``) deregisters it, its
records are deleted too -- unless an AMI that stays still points at them: one whose ``bakery:sbom`` or
``bakery:bootstrap-log`` tag names an object under the prefix, or one of the same bake (a copy in another
region carries the source's tags, SBOM included). What stays is what the caller listed anyway: prune's
listing of the role's AMIs in every region of the role, reap's survey of the bakery's images, a
workspace's record of the bake's AMIs (its copies). A bake that never made an AMI keeps its records:
its log tail is what a person reads to learn why it failed.

The callers (prune; the bootstrap stage's cleanup in every teardown) hand the :func:`deletion` to the
executor (``stages.base.CleanupReport``) as one ``Removal``: retried, named with the command to run by
hand when it fails; in a dry run only shown, with the objects it would delete.
Calls: S3 ListObjectsV2 (the bake's prefix; a dry run makes it too, to show the objects), DeleteObject
per object (S3 answers 204 for a key already gone). IAM: ``s3:ListBucket`` on the bucket, ``s3:DeleteObject``
on ``BUCKET/bakes/*`` (``bakery iam-policy``: ``RunListBuckets``, ``DeleteBakeRecords``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .aws import Aws, tags_of
from .errors import AwsError
from .inventory import BOOTSTRAP_LOG_TAG, SBOM_TAG, bake_records_prefix

POINTER_TAGS = (SBOM_TAG, BOOTSTRAP_LOG_TAG)
NO_BUCKET = ("NoSuchBucket",)


def records_uri(bucket: str, role: str, bake_id: str) -> str:
    return f"s3://{bucket}/{bake_records_prefix(role, bake_id)}"


def held_by(images: Iterable[dict[str, Any]], bucket: str, role: str, bake_id: str) -> str | None:
    """Why the bake's records stay: an AMI of ``images`` (AMIs that stay) points at them; None if none does."""
    prefix = records_uri(bucket, role, bake_id)
    for image in images:
        tags = tags_of(image)
        if tags.get("bakery:bake-id") == bake_id:
            return f"{image['ImageId']}, an AMI of the same bake, stays"
        for tag in POINTER_TAGS:
            if tags.get(tag, "").startswith(prefix):
                return f"{image['ImageId']} stays and its {tag} tag points at them"
    return None


def list_records(aws: Aws, region: str, bucket: str, role: str, bake_id: str) -> list[str]:
    """The keys under the bake's prefix (every page); none when the bucket does not exist."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": bake_records_prefix(role, bake_id)}
    keys: list[str] = []
    while True:
        try:
            page = aws.call("s3", region, "ListObjectsV2", **params)
        except AwsError as exc:
            if exc.code in NO_BUCKET:
                return []
            raise
        keys += [str(o["Key"]) for o in page.get("Contents", [])]
        if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
            return keys
        params["ContinuationToken"] = page["NextContinuationToken"]


@dataclass(frozen=True)
class Deletion:
    """The deletion of a bake's listed records: what the caller hands to the executor as a ``Removal``."""

    resource: str  # the prefix's URI and the objects under it: "s3://B/bakes/R/ID/ (inventory.json, ...)"
    manual: str
    remove: Callable[[], str] = field(compare=False)

    @property
    def label(self) -> str:
        return f"S3 records {self.resource}"


def deletion(aws: Aws, region: str, bucket: str, role: str, bake_id: str, keys: list[str]) -> Deletion:
    """Delete ``keys`` (the bake's records, as listed)."""
    uri = records_uri(bucket, role, bake_id)
    prefix = bake_records_prefix(role, bake_id)
    names = ", ".join(k[len(prefix):] for k in keys)

    def remove() -> str:
        for key in keys:
            aws.call("s3", region, "DeleteObject", Bucket=bucket, Key=key)
        return f"deleted the S3 records of bake {bake_id}: {uri} ({names})"
    return Deletion(f"{uri} ({names})", f"aws s3 rm --recursive {uri}", remove)
