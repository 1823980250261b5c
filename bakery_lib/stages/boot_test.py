"""boot-test: boot the new AMI once, the way production instances boot it, before anything points at it.

An image whose first boot fails is found out during the emergency it was made for; so every AMI is
booted once, by default, before ``publish``:

1. The role's first-boot run list ``s3://BUCKET/runlists/ROLE.json`` is written (PutObject, the same
   bytes ``publish`` writes): the test instance reads it as production instances will.
2. One instance is launched from the new AMI with the role's settings (security group, instance
   profile, placements with the capacity fallback of ``launch``, IMDSv2 required, encrypted root volume;
   ``boot_test.instance_type`` replaces the role's types when given), tagged ``bakery:purpose=boot-test``,
   ``bakery:bake-id``, ``bakery:expires-at`` and ``bakery:chef-node`` (``bake-ROLE-boot-test-BAKEID``).
   Its user data only says "this is a test" (``userdata.boot_test_userdata``): the image's own first-boot
   mechanism does the rest, reading that through IMDSv2 at its start -- registration with the Chef
   server, the run list with chef-client ``--why-run`` (``boot_test.why_run``: every cookbook, role and
   attribute resolves, nothing converges, no service starts), then ``boot_test.command`` -- and tags
   ``bakery:boot-test`` = ``passed`` | ``failed`` (+ ``bakery:boot-test-detail``) on itself instead of
   sending an alert. Its id is in the state the moment RunInstances returns.
3. The stage polls for that tag (DescribeInstances, batched with every other wait of the process) up to
   ``boot_test.timeout`` (default per platform, ``RoleSpec.boot_test_timeout``); on ``passed`` it checks
   the test's Chef client is registered on the Chef server, tags the AMI ``bakery:boot-test=passed`` (the only AMIs ``publish`` gets to and the bake-key
   reuse look-up accepts), then terminates the instance and deletes its Chef client and node.
   On ``failed``, a timeout, or the instance ending first, the stage fails with the detail and the
   instance's console tail (JUnit) and tags the AMI ``bakery:boot-test=failed``.
A role with ``boot_test.enabled: false`` launches nothing: its AMI is tagged ``bakery:boot-test=disabled``
and the stage, the summary and ``artifacts/ROLE.json`` (``boot_test``) say it was not tested.

Reads ``amis`` (the AMI wait-image finished), ``security_group_id``, ``instance_profile_name``.
Writes ``test_chef_node``, ``test_instance_id``, ``boot_test``, ``test_instance_terminated``, ``test_chef_cleaned``.
Calls: S3 PutObject; EC2 DescribeImages (root device), RunInstances, DescribeInstances (batched polls),
GetConsoleOutput (on failure, heartbeat), CreateTags (the AMI), TerminateInstances; Chef GET client,
DELETE client and node.
Cleanup (failure, SIGTERM, ``bakery cleanup``, ``reap``): the test instance (from the state, or found by
``bakery:bake-id`` + ``bakery:purpose=boot-test``) is terminated, then its Chef client and node are
deleted; an AMI whose boot test started and did not pass is deregistered with its snapshots. With
``--keep-on-failure`` all three stay, and the report says how to remove them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..aws import tag_list, tags_of
from ..ec2.instances import LIVE_STATES, instance_tags, launch_params, run_instance
from ..ec2.watch import TAG_GRACE, wait_for_instance, with_console
from ..errors import BakeryError, Interrupted, StageTimeout
from ..resources import delete_chef_identity, deregister_with_snapshots, terminate_instance
from ..userdata import boot_test_node_name, boot_test_userdata, runlist_document
from .base import CleanupReport, Context, Removal, Teardown, remove_chef_identity

NAME = "boot-test"
PURPOSE = "boot-test"
RESULT_TAG = "bakery:boot-test"
DETAIL_TAG = "bakery:boot-test-detail"
ENDED = ("shutting-down", "terminated", "stopping", "stopped")


class BootTestFailed(BakeryError):
    """The image's first boot in test mode failed (or never answered)."""


def _tag_image(ctx: Context, image_id: str, result: str) -> None:
    ctx.ec2("CreateTags", Resources=[image_id], Tags=tag_list({RESULT_TAG: result}))


def _write_runlist(ctx: Context) -> None:
    """The run list the test instance (and every production first boot) reads, written without a read."""
    role = ctx.role
    ctx.aws.call("s3", ctx.region, "PutObject", Bucket=role.runlist_bucket, Key=role.runlist_key,
                 Body=runlist_document(role.run_list_launch), ContentType="application/json",
                 ServerSideEncryption="AES256")


def _launch_context(ctx: Context) -> Context:
    """``ctx`` with ``boot_test.instance_type`` as the only type to try, when the catalogue gives one."""
    itype = ctx.role.boot_test.instance_type
    if not itype:
        return ctx
    return dataclasses.replace(ctx, role=dataclasses.replace(ctx.role, instance_type=itype, instance_types=(itype,)))


def _launch(ctx: Context, image_id: str, node: str) -> str:
    state = ctx.require_state()
    tags = instance_tags(ctx, PURPOSE)
    tags["bakery:chef-node"] = node
    lctx = _launch_context(ctx)
    # One token per attempt: a rerun after a failed test launches a new instance.
    token = f"{state.bake_id}-bt{state.stage(NAME).attempts}"
    params = launch_params(lctx, image_id, boot_test_userdata(ctx.role, node=node), tags, token,
                           security_group_id=state.security_group_id, instance_profile=state.instance_profile_name)
    instance = run_instance(lctx, params)
    state.test_instance_id = instance["InstanceId"]
    ctx.save()
    ctx.log(f"boot test: launched {state.test_instance_id} from {image_id} "
            f"({instance.get('InstanceType') or params['InstanceType']})")
    return str(state.test_instance_id)


class _Watch:
    """What the wait has seen of the test instance (its tag and its state arrive in any order)."""

    def __init__(self, ctx: Context, instance_id: str, image_id: str):
        self.ctx, self.instance_id, self.image_id = ctx, instance_id, image_id
        self.ended_since: float | None = None

    def check(self, inst: dict[str, Any]) -> str | None:
        tags = tags_of(inst)
        result, detail = tags.get(RESULT_TAG), tags.get(DETAIL_TAG, "")
        if result == "passed":
            return detail or "passed"
        if result == "failed":
            raise BootTestFailed(with_console(
                self.ctx, f"boot test of {self.image_id} failed on {self.instance_id}: {detail or 'no detail'}",
                self.instance_id))
        name = inst["State"]["Name"]
        if name in ENDED:
            # A tag set just before a shutdown can show up after the state (EC2 eventual consistency).
            now = self.ctx.clock.now()
            self.ended_since = self.ended_since or now
            if now - self.ended_since >= TAG_GRACE or name == "terminated":
                raise BootTestFailed(with_console(
                    self.ctx, f"boot-test instance {self.instance_id} is {name} before reporting a result",
                    self.instance_id))
        return None


def _status(inst: dict[str, Any]) -> str:
    tag = tags_of(inst).get(RESULT_TAG)
    return inst["State"]["Name"] + (f", {RESULT_TAG}={tag}" if tag else "")


def _wait_result(ctx: Context, instance_id: str, image_id: str) -> str:
    timeout = ctx.role.boot_test_timeout

    def on_timeout(elapsed: float, _: Any) -> BaseException:
        return StageTimeout(with_console(
            ctx, f"boot test of {image_id}: no result from {instance_id} within {timeout} s (catalogue key "
                 "boot_test.timeout): the image's first boot never answered", instance_id))

    return wait_for_instance(
        ctx, instance_id, what=RESULT_TAG, timeout=timeout, status=_status, on_timeout=on_timeout,
        gone_message=f"boot-test instance {instance_id} no longer exists",
        check=_Watch(ctx, instance_id, image_id).check)


def _check_registered(ctx: Context, node: str, instance_id: str) -> None:
    chef = ctx.chef()
    if not chef.client_exists(node):
        raise BootTestFailed(with_console(
            ctx, f"boot-test instance {instance_id} reported passed, but its Chef client {node} is not "
                 f"registered on {chef.server_url}", instance_id))


def _disabled(ctx: Context, image_id: str) -> str:
    state = ctx.require_state()
    _tag_image(ctx, image_id, "disabled")
    state.boot_test = "disabled"
    ctx.save()
    return (f"not boot-tested: catalogue key boot_test.enabled is false for role {ctx.role.name!r} "
            f"({image_id} tagged {RESULT_TAG}=disabled)")


def run(ctx: Context) -> str:
    state = ctx.require_state()
    image_id = state.amis.get(ctx.region)
    if not image_id:
        raise BakeryError("no available AMI recorded for this bake; run wait-image first")
    if not ctx.role.boot_test.enabled:
        return _disabled(ctx, image_id)
    if state.boot_test == "passed":
        # A rerun after the removal of a passed test's instance failed: only that is left to do.
        return f"{image_id} already passed its boot test; " + (_remove_after_pass(ctx) or "nothing left to remove")
    if state.test_instance_id or state.test_chef_node:
        # A rerun after a failed test: its instance and Chef identity go first (a stale client would
        # make the new registration fail with 409), then a new instance tests the same image.
        report = CleanupReport()
        _remove_test_instance(ctx, report)
        if report.errors:
            raise BakeryError("the previous boot test is not removed: " + "; ".join(report.errors))
    node = boot_test_node_name(ctx.role.name, state.bake_id)
    state.test_chef_node, state.test_chef_cleaned = node, False
    state.test_instance_id, state.test_instance_terminated, state.boot_test = None, False, None
    ctx.save()
    _write_runlist(ctx)
    instance_id = _launch(ctx, image_id, node)
    start = ctx.clock.now()
    try:
        detail = _wait_result(ctx, instance_id, image_id)
        _check_registered(ctx, node, instance_id)
    except Interrupted:
        raise
    except BakeryError:
        state.boot_test = "failed"
        ctx.save()
        try:
            _tag_image(ctx, image_id, "failed")
        except BakeryError as exc:  # the failure itself is what the operator must read
            ctx.log(f"could not tag {image_id} {RESULT_TAG}=failed: {exc}")
        raise
    _tag_image(ctx, image_id, "passed")
    state.boot_test = "passed"
    ctx.save()
    removed = _remove_after_pass(ctx)
    return (f"{image_id} passed its boot test on {instance_id} after {ctx.clock.now() - start:.0f} s ({detail}); "
            f"{removed}")


def _remove_after_pass(ctx: Context) -> str:
    """The passed test's instance and Chef identity, at once. A refusal fails the stage (the AMI stays
    passed and available; a rerun or ``bakery cleanup`` removes them), never passes silently."""
    state = ctx.require_state()
    done = []
    if state.test_instance_id and not state.test_instance_terminated:
        gone = terminate_instance(ctx.aws, ctx.region, state.test_instance_id)
        state.test_instance_terminated = True
        ctx.save()
        done.append(f"{state.test_instance_id} " + ("terminated" if gone else "was already gone"))
    if state.test_chef_node and not state.test_chef_cleaned:
        done.append(delete_chef_identity(ctx.chef(), state.test_chef_node))
        state.test_chef_cleaned = True
        ctx.save()
    return "; ".join(done)


# --- cleanup -------------------------------------------------------------------------------------------


def _find_test_instance(ctx: Teardown, report: CleanupReport) -> dict[str, Any] | None:
    """A live boot-test instance of the bake, by its tags (a kill may have come before the state write)."""
    state = ctx.require_state()
    try:
        found = ctx.aws.describe_instances(ctx.region, filters=[
            {"Name": "tag:bakery:bake-id", "Values": [state.bake_id]},
            {"Name": "tag:bakery:purpose", "Values": [PURPOSE]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ])
    except BakeryError as exc:
        report.errors.append(f"could not look up boot-test instances of bake {state.bake_id}: {exc}")
        return None
    return found[0] if found else None


def _started(ctx: Teardown) -> bool:
    """Whether a boot test of this bake may have launched something: its stage ran here, or the record
    is one a reap built from tags (no workspace history to tell)."""
    state = ctx.require_state()
    return NAME in state.stages or not isinstance(ctx, Context)


def _remove_test_instance(ctx: Teardown, report: CleanupReport) -> None:
    """Terminate the test instance, then delete its Chef client and node (client first: that revokes
    the key a chef-client still running there would use)."""
    state = ctx.require_state()
    region = ctx.region
    if not state.test_instance_id and _started(ctx):
        found = _find_test_instance(ctx, report)
        if found is not None:
            state.test_instance_id = found["InstanceId"]
            state.test_chef_node = state.test_chef_node or tags_of(found).get("bakery:chef-node") or None
            report.save(ctx)
    instance_id = state.test_instance_id
    if instance_id and not state.test_instance_terminated:
        def term() -> str:
            gone = terminate_instance(ctx.aws, region, instance_id)
            state.test_instance_terminated = True
            report.save(ctx)
            return f"boot-test instance {instance_id} " + ("terminated" if gone else "was already gone")
        report.attempt(ctx, Removal("instance", instance_id, region, "terminate", "terminated",
                                    f"aws ec2 terminate-instances --region {region} --instance-ids {instance_id}",
                                    term))
    node = state.test_chef_node
    if node and not state.test_chef_cleaned:
        remove_chef_identity(ctx, report, node, lambda: setattr(state, "test_chef_cleaned", True))


def _failed_image(ctx: Teardown) -> str | None:
    """The bake's AMI when its boot test started and did not pass (it must never be kept or published)."""
    state = ctx.require_state()
    rec = state.stages.get(NAME)
    started = state.boot_test == "failed" or (rec is not None and rec.status in ("running", "failed"))
    if state.reused or state.boot_test in ("passed", "disabled") or not started:
        return None
    return state.amis.get(state.region) or (state.image_id if state.image_state == "available" else None)


def _deregister_image(ctx: Teardown, report: CleanupReport, image_id: str) -> None:
    state = ctx.require_state()
    region = state.region

    def dereg() -> str:
        images = ctx.aws.describe_images(region, [image_id])
        deleted = deregister_with_snapshots(ctx.aws, region, images[0], clock=ctx.clock, poll=ctx.poll_interval,
                                            extra_snapshots=state.snapshot_ids,
                                            max_delay=ctx.poll_interval) if images else []
        with ctx.state_lock:
            state.amis.pop(region, None)
            state.image_state = "deregistered"
            state.snapshot_ids = []
            report.save(ctx)
        return f"deregistered image {image_id} (boot test not passed) and {len(deleted)} snapshot(s)"
    report.attempt(ctx, Removal("image", image_id, region, "deregister", "deregistered",
                                f"aws ec2 deregister-image --region {region} --image-id {image_id} (then delete its "
                                "snapshots: aws ec2 delete-snapshot --snapshot-id ...)", dereg))


def cleanup(ctx: Teardown, report: CleanupReport) -> None:
    state = ctx.require_state()
    image_id = _failed_image(ctx)
    live = state.test_instance_id and not state.test_instance_terminated
    if report.keep_instance and (live or image_id):
        what = [f"boot-test instance {state.test_instance_id}" if live else "",
                f"its Chef node/client {state.test_chef_node}" if live and state.test_chef_node else "",
                f"image {image_id} (boot test not passed)" if image_id else ""]
        report.kept.append(", ".join(w for w in what if w) + " (--keep-on-failure); remove them later with "
                           f"`bakery cleanup --role {ctx.role_name}`")
        return
    _remove_test_instance(ctx, report)
    if image_id:
        _deregister_image(ctx, report, image_id)
