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

from datetime import datetime
from typing import Any

from ..aws import tags_of
from ..ec2.instances import LIVE_STATES, bakes_in_flight, instance_tags, launch_params, run_instance
from ..errors import BakeryError, StageTimeout
from ..resources import terminate_instance
from ..userdata import bake_userdata
from ..waits import Gone, Wait
from .base import CleanupReport, Context, Removal, Teardown, remove_chef_identity

# How long a rerun waits for the instance the state recorded to become visible (EC2 propagation).
RECORDED_GRACE = 60.0


def find_by_bake_id(ctx: Teardown, bake_id: str) -> dict[str, Any] | None:
    """The bake instance of ``bake_id`` (purpose ``bake``: other stages' instances of the bake, such as a
    boot test's, carry the same bake id and are theirs to remove)."""
    found = ctx.aws.describe_instances(ctx.region, filters=[
        {"Name": "tag:bakery:bake-id", "Values": [bake_id]},
        {"Name": "tag:bakery:purpose", "Values": ["bake"]},
        {"Name": "instance-state-name", "Values": LIVE_STATES},
    ])
    return found[0] if found else None


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


