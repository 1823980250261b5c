"""launch: start the bake instance from the base AMI with the rendered bake user data.

IMDSv2 required, encrypted root volume, DESIGN's tags, ``ClientToken`` = bake id. Moto (and an
interrupted run that lost its state write) is why the instance is first looked up by its
``bakery:bake-id`` tag: a rerun never launches a second instance.
Writes ``instance_id`` to the state the moment RunInstances returns (before any wait), then stands
down if another bake of the role launched at the same moment (``refuse_concurrent_bake``).
Calls: DescribeInstances (rerun only), RunInstances, DescribeInstances (other bakes of the role).
Cleanup: terminate the instance (``bakery cleanup``).
"""

from __future__ import annotations

import time
from typing import Any

from ..aws import tags_of
from ..errors import AwsError, BakeryError
from .base import Context, iso_utc

LIVE_STATES = ["pending", "running", "stopping", "stopped"]


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
        "bakery:expires-at": iso_utc(time.time() + role.bake_ttl),
    })
    return tags


def block_devices(ctx: Context, image_id: str, root_device: str | None = None) -> list[dict[str, Any]]:
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


def find_by_bake_id(ctx: Context, bake_id: str) -> dict[str, Any] | None:
    found = ctx.aws.describe_instances(ctx.region, filters=[
        {"Name": "tag:bakery:bake-id", "Values": [bake_id]},
        {"Name": "instance-state-name", "Values": LIVE_STATES},
    ])
    return found[0] if found else None


def run_instance(ctx: Context, params: dict[str, Any], *, attempts: int = 12) -> dict[str, Any]:
    """RunInstances, retrying while IAM propagates.

    A freshly created instance profile is visible to IAM before EC2 can use it, so RunInstances
    fails for several seconds with "Invalid IAM Instance Profile". That is not an error in the
    request: wait and retry (with the same ClientToken, so a retry cannot launch twice on AWS).
    """
    delay = 2.0
    for attempt in range(attempts):
        try:
            return ctx.ec2("RunInstances", **params)["Instances"][0]
        except AwsError as exc:
            text = str(exc).lower()
            propagating = exc.code == "InvalidParameterValue" and "iam" in text and "instance profile" in text
            if not propagating or attempt == attempts - 1:
                raise
            ctx.log(f"instance profile not yet usable by EC2 (IAM propagation); retrying in {delay:.0f} s")
            ctx.sleep(delay)
            delay = min(delay * 1.5, 10.0)
    raise AssertionError("unreachable")


def launch_params(ctx: Context, image_id: str, user_data: str, tags: dict[str, str], token: str,
                  root_device: str | None = None) -> dict[str, Any]:
    state = ctx.require_state()
    params: dict[str, Any] = {
        "ImageId": image_id,
        "InstanceType": ctx.role.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        "ClientToken": token[:64],
        "IamInstanceProfile": {"Name": state.instance_profile_name},
        "SecurityGroupIds": [state.security_group_id],
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


def refuse_concurrent_bake(ctx: Context) -> None:
    """Stand down if another bake of the role launched too.

    preflight refuses to open a bake while one is in flight, but two bakes that pass preflight at the
    same moment (two workspaces, two agents) would both launch. Checked once our own instance
    exists, so of two racing bakes at least the later one sees the other: it fails (its cleanup
    removes its instance) and at most one carries on.
    """
    state = ctx.require_state()
    from .preflight import bakes_in_flight

    others = [i for i in bakes_in_flight(ctx) if tags_of(i).get("bakery:bake-id") != state.bake_id]
    if others:
        other = others[0]
        tags = tags_of(other)
        raise BakeryError(
            f"another bake of role {ctx.role.name!r} launched at the same time: instance {other['InstanceId']} "
            f"(bake {tags.get('bakery:bake-id', '?')}, release {tags.get('bakery:release', '?')}); this bake "
            f"({state.bake_id}) stands down and its instance {state.instance_id} is removed by cleanup. "
            "Bake again once the other one is done"
        )


def run(ctx: Context) -> str:
    state = ctx.require_state()
    # Only a rerun can find an instance of this bake (a first attempt saves one call per bake).
    rerun = state.stage("launch").attempts > 1 or state.instance_id is not None
    existing = find_by_bake_id(ctx, state.bake_id) if rerun else None
    if existing is not None:
        state.instance_id = existing["InstanceId"]
        ctx.save()
        refuse_concurrent_bake(ctx)
        return f"instance {existing['InstanceId']} of bake {state.bake_id} already exists ({existing['State']['Name']})"
    if not state.base_ami:
        raise BakeryError("the bake state has no base AMI; rerun preflight")
    from ..userdata import bake_userdata

    user_data = bake_userdata(ctx.role, bake_id=state.bake_id, release=state.release)
    params = launch_params(ctx, state.base_ami, user_data, instance_tags(ctx), state.bake_id, state.base_root_device)
    instance = run_instance(ctx, params)
    state.instance_id = instance["InstanceId"]
    ctx.save()
    ctx.log(f"launched {state.instance_id} from {state.base_ami}")
    refuse_concurrent_bake(ctx)
    return f"launched {state.instance_id} ({ctx.role.instance_type}) from {state.base_ami}"
