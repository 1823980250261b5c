"""launch: start the bake instance from the base AMI with the rendered bake user data.

IMDSv2 required, encrypted root volume, DESIGN's tags, ``ClientToken`` = bake id. Moto (and an
interrupted run that lost its state write) is why the instance is first looked up by its
``bakery:bake-id`` tag: a rerun never launches a second instance (and waits up to ``RECORDED_GRACE``
for an instance the state recorded but describes do not show yet: EC2 eventual consistency).
Placements: ``instance_types`` x ``subnet_ids`` in order; ``InsufficientInstanceCapacity`` /
``Unsupported`` move on to the next (they persist), a few rounds, then a failure naming them all.
RunInstances refused while a new instance profile or security group propagates is retried.
Writes ``instance_id``, ``instance_type`` and ``subnet_id`` to the state the moment RunInstances
returns (before any wait), then stands down if another bake of the role launched at the same moment
(``refuse_concurrent_bake``).
Calls: DescribeInstances (rerun only), RunInstances, DescribeInstances (other bakes of the role, until
the listing shows our own instance: a new instance is missing from filtered describes for seconds).
Cleanup: terminate the instance (found by its ``bakery:bake-id`` tag too: a kill may have come before the
state write), then delete the Chef node/client it registered. With ``--keep-on-failure`` both stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..aws import tags_of
from ..catalog import RoleSpec
from ..errors import AwsError, BakeryError, StageTimeout
from ..resources import terminate_instance
from ..userdata import bake_userdata
from ..waits import Gone, Wait
from .base import CleanupReport, Context, Removal, RoleContext, Teardown, iso_utc
from .preflight import bakes_in_flight

LIVE_STATES = ["pending", "running", "stopping", "stopped"]
# How long a rerun waits for the instance the state recorded to become visible (EC2 propagation).
RECORDED_GRACE = 60.0


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


def find_by_bake_id(ctx: Teardown, bake_id: str) -> dict[str, Any] | None:
    """The bake instance of ``bake_id`` (purpose ``bake``: other stages' instances of the bake, such as a
    boot test's, carry the same bake id and are theirs to remove)."""
    found = ctx.aws.describe_instances(ctx.region, filters=[
        {"Name": "tag:bakery:bake-id", "Values": [bake_id]},
        {"Name": "tag:bakery:purpose", "Values": ["bake"]},
        {"Name": "instance-state-name", "Values": LIVE_STATES},
    ])
    return found[0] if found else None


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


def refuse_concurrent_bake(ctx: Context) -> None:
    """Stand down if another bake of the role launched too.

    preflight refuses to open a bake while one is in flight, but two bakes that pass preflight at the
    same moment (two workspaces, two agents) would both launch. Checked once our own instance is
    listed, so of two racing bakes the later one sees the other: it fails (its cleanup removes its
    instance) and the earlier one carries on. Launched in the same second, the order is unknown: each
    that sees the other stands down (both, at worst), never both carry on.
    """
    state = ctx.require_state()
    listing = _in_flight_listing_us(ctx)
    ours = next((i for i in listing if i["InstanceId"] == state.instance_id), None)
    others = [i for i in listing if tags_of(i).get("bakery:bake-id") != state.bake_id
              and (ours is None or _launched(i) <= _launched(ours))]
    if others:
        other = others[0]
        tags = tags_of(other)
        raise BakeryError(
            f"another bake of role {ctx.role.name!r} launched at the same time: instance {other['InstanceId']} "
            f"(bake {tags.get('bakery:bake-id', '?')}, release {tags.get('bakery:release', '?')}); this bake "
            f"({state.bake_id}) stands down and its instance {state.instance_id} is removed by cleanup. "
            "Bake again once the other one is done"
        )


def _launched(instance: dict[str, Any]) -> str:
    """When an instance launched, comparable (EC2 gives whole seconds: two racing bakes may tie)."""
    launched = instance.get("LaunchTime")
    return launched.isoformat() if isinstance(launched, datetime) else str(launched or "")


def _in_flight_listing_us(ctx: Context) -> list[dict[str, Any]]:
    """The role's bakes in flight, from a listing that already shows our own instance.

    A new instance is missing from filtered describes for seconds (EC2 eventual consistency): a
    listing made before ours shows would miss another bake's instance launched just before ours too,
    and both bakes would carry on. Once ours is listed, one launched earlier normally is as well.
    """
    own = ctx.require_state().instance_id

    def probe() -> list[dict[str, Any]] | None:
        found = bakes_in_flight(ctx)
        return found if any(i["InstanceId"] == own for i in found) else None

    wait: Wait[list[dict[str, Any]], list[dict[str, Any]]] = Wait(
        what=f"instance {own} in the listing of the role's bakes", clock=ctx.clock, log=ctx.log,
        timeout=RECORDED_GRACE, interval=ctx.poll_interval, absent_grace=RECORDED_GRACE)
    try:
        return wait.run(probe, lambda listing: listing)
    except (Gone, StageTimeout):
        # Still not listed after the grace (or gone): judge on what the listing shows now.
        return bakes_in_flight(ctx)


def run(ctx: Context) -> str:
    state = ctx.require_state()
    # Only a rerun can find an instance of this bake (a first attempt saves one call per bake).
    rerun = state.stage("launch").attempts > 1 or state.instance_id is not None
    existing = find_by_bake_id(ctx, state.bake_id) if rerun else None
    if existing is None and state.instance_id:
        existing = _recorded_instance(ctx, state.instance_id)
    if existing is not None:
        state.instance_id = existing["InstanceId"]
        ctx.save()
        refuse_concurrent_bake(ctx)
        return f"instance {existing['InstanceId']} of bake {state.bake_id} already exists ({existing['State']['Name']})"
    if not state.base_ami:
        raise BakeryError("the bake state has no base AMI; rerun preflight")
    user_data = bake_userdata(ctx.role, bake_id=state.bake_id, release=state.release)
    params = launch_params(ctx, state.base_ami, user_data, instance_tags(ctx), state.bake_id,
                           security_group_id=state.security_group_id, instance_profile=state.instance_profile_name,
                           root_device=state.base_root_device)
    instance = run_instance(ctx, params)
    state.instance_id = instance["InstanceId"]
    state.instance_type = instance.get("InstanceType") or params["InstanceType"]
    state.subnet_id = instance.get("SubnetId")
    ctx.save()
    where = f"{state.instance_type} in {state.subnet_id or 'the default subnet'}"
    zone = instance.get("Placement", {}).get("AvailabilityZone")
    where += f" ({zone})" if zone else ""
    # Said once, as the stage's result (a failure of the check below names the instance itself).
    refuse_concurrent_bake(ctx)
    return f"launched {state.instance_id} as {where} from {state.base_ami}"


def _recorded_instance(ctx: Context, instance_id: str) -> dict[str, Any] | None:
    """The instance the state recorded, waited for while it may still be invisible.

    Right after RunInstances (a rerun after a kill) a new instance can be missing from filtered
    describes and answer NotFound by id for seconds: launching again then would make a duplicate.
    Give it a minute to show up; a terminated one is not live (None: launch anew).
    """
    def probe() -> dict[str, Any] | None:
        found = ctx.aws.describe_instances(ctx.region, [instance_id])
        return found[0] if found else None

    wait: Wait[dict[str, Any], dict[str, Any]] = Wait(
        what=f"recorded instance {instance_id}", clock=ctx.clock, log=ctx.log, timeout=RECORDED_GRACE,
        interval=ctx.poll_interval, absent_grace=RECORDED_GRACE)
    try:
        found = wait.run(probe, lambda inst: inst)
    except (Gone, StageTimeout):
        return None
    return found if found["State"]["Name"] in LIVE_STATES else None


def _own_instance(ctx: Teardown, report: CleanupReport) -> str | None:
    """The bake's instance: from the state, or found by its ``bakery:bake-id`` tag (and recorded)."""
    state = ctx.require_state()
    if state.instance_id and state.instance_terminated:
        return state.instance_id
    try:
        found = find_by_bake_id(ctx, state.bake_id)
    except BakeryError as exc:
        found = None
        report.errors.append(f"could not look up instances of bake {state.bake_id}: {exc}")
    if found and not state.instance_id:
        state.instance_id = found["InstanceId"]
        report.save(ctx)
    return state.instance_id


def cleanup(ctx: Teardown, report: CleanupReport) -> None:
    state = ctx.require_state()
    instance_id = _own_instance(ctx, report)
    if report.keep_instance and instance_id and not state.instance_terminated:
        report.kept.append(f"instance {instance_id} and its Chef node/client {state.chef_node} (--keep-on-failure); "
                           f"remove them later with `bakery cleanup --role {ctx.role_name}`")
        return
    if instance_id and not state.instance_terminated:
        def term() -> str:
            gone = terminate_instance(ctx.aws, ctx.region, instance_id)
            state.instance_terminated = True
            report.save(ctx)
            return f"{instance_id} terminated (shutting down)" if gone else f"{instance_id} was already gone"
        report.attempt(ctx, Removal("instance", instance_id, ctx.region, "terminate", "terminated",
                                    f"aws ec2 terminate-instances --region {ctx.region} --instance-ids {instance_id}",
                                    term))
    # After the instance: a chef-client still running there could otherwise register it again.
    if state.chef_node and not state.chef_cleaned:
        remove_chef_identity(ctx, report, state.chef_node, lambda: setattr(state, "chef_cleaned", True))


def remove_chef_identity(ctx: Teardown, report: CleanupReport, node: str, removed: Callable[[], None]) -> None:
    """The client first (that revokes the key a chef-client still running would use), then the node.

    ``removed`` records in the state that both are gone (the bake's node, or the boot test's)."""

    def client() -> str:
        return f"client {node} {'deleted' if ctx.chef().delete_client(node) else 'already absent'}"

    def node_() -> str:
        message = f"node {node} {'deleted' if ctx.chef().delete_node(node) else 'already absent'}"
        removed()
        report.save(ctx)
        return message

    # Named for both: when the client cannot be deleted, the node is not tried either.
    if report.attempt(ctx, Removal("chef-client", node, "", "delete", "deleted",
                                   f"knife client delete {node} -y && knife node delete {node} -y", client,
                                   label=f"Chef node/client {node}")):
        report.attempt(ctx, Removal("chef-node", node, "", "delete", "deleted", f"knife node delete {node} -y",
                                    node_))
