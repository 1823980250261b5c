"""Instances the stages launch: their tags, RunInstances parameters and placements, the role's bakes in flight.

Shared by the launch stage, the boot test and create-instance (``bakery_lib.launcher``). State-free but
for ``instance_tags`` (the bake record names the instance). IMDSv2 required, encrypted root volume.
Placements: ``instance_types`` x ``subnet_ids`` in order; ``InsufficientInstanceCapacity`` /
``Unsupported`` move on to the next (they persist), a few rounds, then a failure naming them all.
RunInstances refused while a new instance profile or security group propagates is retried.
``VcpuLimitExceeded`` (the account's vCPU quota) fails the launch at once, naming the role and type.
"""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING, Any

from ..errors import AwsError, BakeryError

if TYPE_CHECKING:
    from ..catalog import RoleSpec
    from ..stages.base import Context, RoleContext


# States of a bake instance that is still there: it may be started again, reap may terminate it, it keeps its Chef node.
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def instance_tags(ctx: Context, purpose: str = "bake") -> dict[str, str]:
    state = ctx.require_state()
    role = ctx.role
    tags = dict(role.tags)
    tags.update({
        "Name": f"bakery-{purpose}-{role.name}-{state.release}",
        "bakery:bake-id": state.bake_id,
        "bakery:role": role.name,
        "bakery:release": state.release,
        "bakery:purpose": purpose,
        "bakery:chef-node": state.chef_node or "",
        "bakery:expires-at": iso_utc(bake_started(state.bake_id) + role.bake_ttl),
    })
    return tags


def bake_started(bake_id: str) -> float:
    """When the bake started, from its id (``YYYYMMDDHHMMSS-xxxxxx``, UTC); now for an id without it.

    Tags derived from the bake id, not from the clock, make a replayed RunInstances (same ClientToken)
    identical to the first: AWS answers IdempotentParameterMismatch to the same token with other
    parameters (EC2 API reference, "Ensuring idempotency")."""
    try:
        return float(calendar.timegm(time.strptime(bake_id[:14], "%Y%m%d%H%M%S")))
    except ValueError:
        return time.time()


def block_devices(ctx: RoleContext, image_id: str, root_device: str | None = None) -> list[dict[str, Any]]:
    root = root_device
    if root is None:
        images = ctx.aws.describe_images(ctx.region, [image_id])
        if not images:
            raise BakeryError(f"base AMI {image_id} is gone from {ctx.region}")
        root = images[0].get("RootDeviceName") or "/dev/xvda"
    ebs: dict[str, Any] = {
        "VolumeSize": ctx.role.volume_size,
        "VolumeType": ctx.role.volume_type,
        "Encrypted": True,
        "DeleteOnTermination": True,
    }
    if ctx.role.kms_key_id:
        ebs["KmsKeyId"] = ctx.role.kms_key_id
    return [{"DeviceName": root, "Ebs": ebs}]


# RunInstances errors that say "not here": no capacity for the type in that AZ, or the type is not
# offered there. They persist (retrying the same placement rarely helps), so launch moves on to the next
# instance type / subnet of the catalogue (``instance_types`` x ``subnet_ids``).
CAPACITY_CODES = ("InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported")


# After every placement was refused, wait and go round again a few times: capacity does come back.
PLACEMENT_ROUNDS = 3


def placements(role: RoleSpec) -> list[tuple[str, str | None]]:
    """(instance type, subnet) in fallback order: each type in every subnet (AZ) before the next type."""
    subnets: tuple[str | None, ...] = tuple(role.subnet_ids) or (role.subnet_id,)
    return [(t, s) for t in (tuple(role.instance_types) or (role.instance_type,)) for s in subnets]


def _propagating(exc: AwsError) -> str | None:
    """Why RunInstances refused something that exists but has not propagated yet (None: a real error).

    IAM: a new instance profile (or a role just added to it) is visible to IAM before EC2 can use it;
    RunInstances answers "Invalid IAM Instance Profile" for up to ~10 s. EC2: a security group just
    created can be unknown to RunInstances for a moment (InvalidGroup.NotFound). Neither is an error
    in the request: wait and retry (same ClientToken, so a retry cannot launch twice on AWS).
    """
    text = str(exc).lower()
    if exc.code == "InvalidParameterValue" and "iam" in text and "instance profile" in text:
        return "instance profile not yet usable by EC2 (IAM propagation)"
    if exc.code == "InvalidGroup.NotFound":
        return "security group not yet visible to RunInstances (EC2 propagation)"
    return None


def _run_once(ctx: RoleContext, params: dict[str, Any], attempts: int) -> dict[str, Any]:
    delay = 2.0
    for attempt in range(attempts):
        try:
            instance: dict[str, Any] = ctx.ec2("RunInstances", **params)["Instances"][0]
            return instance
        except AwsError as exc:
            why = _propagating(exc)
            if why is None or attempt == attempts - 1:
                raise
            ctx.log(f"{why}; retrying in {delay:.0f} s")
            ctx.sleep(delay)
            delay = min(delay * 1.5, 10.0)
    raise AssertionError("unreachable")


def vcpu_limit_message(role: str, itype: str, exc: AwsError) -> str:
    """VcpuLimitExceeded: the account runs as many vCPUs of that instance family bucket as its On-Demand
    quota allows (EC2 User Guide, "On-Demand Instance quotas"). Another placement of the same family
    meets the same quota and waiting does not free it, so the launch fails at once, naming what to change."""
    return (f"role {role!r}: RunInstances refused instance type {itype} (VcpuLimitExceeded): {exc.message}. "
            f"The account's running On-Demand vCPU quota for {itype}'s instance family is used up: stop or "
            "terminate instances of that family, request a higher quota (Service Quotas, 'Running On-Demand "
            "... instances'), or list an instance type of another family first (catalogue key instance_types)")


def run_instance(ctx: RoleContext, params: dict[str, Any], *, attempts: int = 12) -> dict[str, Any]:
    """RunInstances with the role's placements in fallback order; retries while IAM/SG propagate.

    Each placement gets its own ClientToken (AWS refuses a token reused with other parameters).
    The instance returned carries the type and subnet used; the log says which were refused.
    """
    options = placements(ctx.role)
    refused: list[str] = []
    base_token = str(params.get("ClientToken", ""))[:56]
    for round_no in range(PLACEMENT_ROUNDS):
        for i, (itype, subnet) in enumerate(options):
            attempt = dict(params, InstanceType=itype)
            if subnet:
                attempt["SubnetId"] = subnet
            if round_no or i:
                attempt["ClientToken"] = f"{base_token}-{round_no}-{i}"
            where = f"{itype} in {subnet or 'the default subnet'}"
            try:
                instance = _run_once(ctx, attempt, attempts)
            except AwsError as exc:
                if exc.code == "VcpuLimitExceeded":
                    raise BakeryError(vcpu_limit_message(ctx.role.name, itype, exc)) from None
                if exc.code not in CAPACITY_CODES:
                    raise
                refused.append(f"{where}: {exc.code}")
                ctx.log(f"RunInstances refused {where} ({exc.code}); trying the next placement")
                continue
            if refused:
                ctx.log(f"launched as {where} after {len(refused)} refused placement(s)")
            return instance
        if round_no < PLACEMENT_ROUNDS - 1:
            ctx.log("every instance type / subnet was refused; trying them again shortly")
            ctx.sleep(ctx.poll_interval * 5)
    raise BakeryError(
        f"no capacity for role {ctx.role.name!r}: RunInstances refused every placement {PLACEMENT_ROUNDS} times ("
        + "; ".join(refused[-len(options):]) + "). Add instance types (catalogue key instance_types) or "
        "subnets in other availability zones (subnet_ids), or bake again later")


def launch_params(ctx: RoleContext, image_id: str, user_data: str, tags: dict[str, str], token: str, *,
                  security_group_id: str | None, instance_profile: str | None,
                  root_device: str | None = None) -> dict[str, Any]:
    """RunInstances parameters (state-free: a bake and create-instance both launch through here)."""
    params: dict[str, Any] = {
        "ImageId": image_id,
        "InstanceType": ctx.role.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        "ClientToken": token[:64],
        "IamInstanceProfile": {"Name": instance_profile},
        "SecurityGroupIds": [security_group_id],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": block_devices(ctx, image_id, root_device),
        # Windows bakes end with sysprep shutting the instance down: that must stop, not terminate.
        "InstanceInitiatedShutdownBehavior": "stop",
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]},
            {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()
                                                if k.startswith("bakery:") or k == "Name"]},
        ],
    }
    if ctx.role.subnet_id:
        params["SubnetId"] = ctx.role.subnet_id
    return params


def bakes_in_flight(ctx: Context) -> list[dict]:
    """Bake instances of the role that are not terminated, as of now (a call made after this one
    was asked for; the roles of a ``bakery bake`` share it)."""
    batcher = ctx.aws.bakes_in_flight
    try:
        return list(batcher.get(ctx.region, ctx.role.name, max_age=0, clock=ctx.clock) or [])
    finally:
        batcher.forget(ctx.region, ctx.role.name)
