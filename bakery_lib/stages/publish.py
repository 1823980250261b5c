"""publish: make the new AMI usable and findable.

- ``s3://BUCKET/runlists/ROLE.json`` = ``{"run_list": [...]}`` from the role's launch run list (what
  first boot runs), written only when it changed.
- SSM parameter ``/bakery/ROLE/latest`` (data type ``aws:ec2:image``) in every region of the role.
- Artifacts: ``artifacts/ROLE.json``, ``artifacts/amis.json``, ``artifacts/amis.properties``.
Only after the AMI is available. Reads ``amis``; closes the bake record (outcome ``succeeded``).
Calls: S3 GetObject/PutObject, SSM PutParameter.
"""

from __future__ import annotations

import json

from ..errors import AwsError, BakeryError
from ..reports import write_artifacts
from .base import Context


def runlist_document(run_list: tuple[str, ...]) -> bytes:
    return (json.dumps({"run_list": list(run_list)}, indent=2) + "\n").encode()


def publish_runlist(ctx: Context) -> str:
    role = ctx.role
    body = runlist_document(role.run_list_launch)
    try:
        current = ctx.aws.call("s3", ctx.region, "GetObject", Bucket=role.runlist_bucket, Key=role.runlist_key)
        if current["Body"].read() == body:
            return f"s3://{role.runlist_bucket}/{role.runlist_key} unchanged"
    except AwsError as exc:
        if exc.code not in ("NoSuchKey", "404", "NotFound"):
            raise
    ctx.aws.call("s3", ctx.region, "PutObject", Bucket=role.runlist_bucket, Key=role.runlist_key, Body=body,
                 ContentType="application/json", ServerSideEncryption="AES256")
    return f"s3://{role.runlist_bucket}/{role.runlist_key} written"


def put_ssm(ctx: Context, region: str, image_id: str) -> None:
    ctx.aws.call("ssm", region, "PutParameter", Name=f"/bakery/{ctx.role.name}/latest", Value=image_id,
                 Type="String", DataType="aws:ec2:image", Overwrite=True,
                 Description=f"Latest AMI Bakery image of role {ctx.role.name}")


def run(ctx: Context) -> str:
    state = ctx.require_state()
    if not state.amis:
        raise BakeryError("no available AMI recorded for this bake; run wait-image first")
    messages = [publish_runlist(ctx)]
    for region, image_id in sorted(state.amis.items()):
        put_ssm(ctx, region, image_id)
    messages.append(f"/bakery/{ctx.role.name}/latest -> {', '.join(f'{r}:{a}' for r, a in sorted(state.amis.items()))}")
    write_artifacts(ctx.ws, state)
    state.closed = True
    state.outcome = "reused" if state.reused else "succeeded"
    ctx.save()
    return "; ".join(messages)
