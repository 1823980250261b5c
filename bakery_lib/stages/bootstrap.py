"""bootstrap: wait for the bake instance to report its Chef ``role_ami`` run.

The instance tags itself ``bakery:bootstrap`` = ``succeeded`` or ``failed`` (with
``bakery:bootstrap-detail``) when its run ends; a Windows instance tags ``generalizing`` before it runs
``ec2launch sysprep --clean --shutdown`` and then stops itself (``failed`` if sysprep exits non-zero).
This stage polls DescribeInstances (batched with every other bake of the process, see ``waits``) with
a deadline (catalogue ``bootstrap_timeout``, default 45 min) and succeeds on:

- ``succeeded`` in any instance state (a Windows instance may already be stopping by itself);
- ``generalizing`` once the instance is ``stopping``/``stopped`` (sysprep shut it down); still
  ``generalizing`` and ``running`` after ``sysprep_timeout`` (default 20 min) is a failure.

It fails fast on ``failed``, on the instance being terminated, on the instance stopped without any
result tag, or on the timeout; failures carry the console output tail and, when the instance uploaded
one (tag ``bakery:bootstrap-log`` = its S3 URI, under the role's ``bakes/ROLE/`` prefix), the last
lines of its bake log, scrubbed of secrets by the instance (docs/instances.md).
On success it makes the bake's SBOM (:func:`bakery_lib.inventory.record_sbom`): ``artifacts/ROLE.cdx.json``,
the SBOM in S3 (``state.sbom_uri``, which the image stage tags as ``bakery:sbom``) and the package diff
against the role's previous AMI (``artifacts/ROLE.packages.json``); a missing inventory is a warning
in the stage's message, never a failure. Tags and state are observed in
any order: EC2 is eventually consistent, so a ``stopped`` state may be visible before the tag that was
set just before the shutdown — a stopped instance gets ``TAG_GRACE`` seconds for its tag to show.
Reads ``instance_id``; writes its stage record and ``sbom_uri``.
Calls: DescribeInstances (one per poll, batched), GetConsoleOutput (on failure, and once a minute for
the heartbeat line), S3 GetObject (the log tail, on failure); on success S3 GetObject + PutObject
(+ GetObject of the previous AMI's SBOM, which preflight's listing of the role's AMIs names) for the SBOM.
Cleanup: the bake's records in S3 (``bakes/ROLE/BAKE_ID/``: the inventory and log tail its instance
uploaded, the SBOM this stage wrote), once the image and boot-test cleanups removed the bake's AMI and no
AMI of the bake stays (:mod:`bakery_lib.records`); a bake that made no AMI keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..aws import tags_of
from ..ec2.watch import TAG_GRACE, instance_status, wait_for_instance, with_console
from ..errors import BakeryError, StageTimeout
from ..inventory import BOOTSTRAP_LOG_TAG, fetch_log_tail, record_sbom
from ..records import deletion, held_by, list_records, records_uri
from .base import CleanupReport, Context, Removal, Teardown


@dataclass
class Watch:
    """What the bootstrap wait has observed so far (tag and state arrive in any order)."""

    ctx: Context
    instance_id: str
    generalizing_since: float | None = None
    untagged_stop_since: float | None = None

    def check(self, inst: dict[str, Any]) -> str | None:
        ctx, iid = self.ctx, self.instance_id
        tags = tags_of(inst)
        result = tags.get("bakery:bootstrap")
        detail = tags.get("bakery:bootstrap-detail", "")
        name = inst["State"]["Name"]
        now = ctx.clock.now()
        if result == "failed":
            message = f"Chef role_ami run failed on {iid}: {detail or 'no detail'}"
            log_uri = tags.get(BOOTSTRAP_LOG_TAG, "")
            if log_uri:
                message += f"\n--- last lines of the bake log ({log_uri}) ---\n{fetch_log_tail(ctx, log_uri)}"
            raise BakeryError(with_console(ctx, message, iid))
        if name in ("shutting-down", "terminated"):
            reason = inst.get("StateReason", {}).get("Message") or inst.get("StateTransitionReason") or ""
            raise BakeryError(with_console(
                ctx, f"instance {iid} is {name} before its image was taken" + (f" ({reason})" if reason else ""), iid))
        if result == "succeeded":
            return "succeeded" + (f": {detail}" if detail else "")
        if result == "generalizing":
            return self._generalizing(name, now)
        if name in ("stopping", "stopped"):
            # The tag may trail the state (eventual consistency): give it TAG_GRACE before failing.
            self.untagged_stop_since = self.untagged_stop_since or now
            if now - self.untagged_stop_since >= TAG_GRACE:
                reason = inst.get("StateReason", {}).get("Message") or inst.get("StateTransitionReason") or ""
                raise BakeryError(with_console(
                    ctx, f"instance {iid} left running before reporting its bootstrap: {name}"
                         + (f" ({reason})" if reason else ""), iid))
        return None

    def _generalizing(self, name: str, now: float) -> str | None:
        # Windows: sysprep runs detached and shuts the instance down; never stop it ourselves mid-sysprep.
        if name in ("stopping", "stopped"):
            return "generalized by sysprep, which stopped the instance"
        self.generalizing_since = self.generalizing_since or now
        limit = self.ctx.role.sysprep_timeout
        if now - self.generalizing_since >= limit:
            raise BakeryError(with_console(
                self.ctx, f"instance {self.instance_id} is still generalizing (sysprep) and {name} after {limit} s "
                          "(catalogue key sysprep_timeout)", self.instance_id))
        return None


def run(ctx: Context) -> str:
    state = ctx.require_state()
    instance_id = state.instance_id
    if not instance_id:
        raise BakeryError("the bake state has no instance; run the launch stage first")
    start = ctx.clock.now()
    watch = Watch(ctx, instance_id)
    timeout = ctx.role.bootstrap_timeout

    def on_timeout(elapsed: float, _: Any) -> BaseException:
        return StageTimeout(with_console(
            ctx, f"no bootstrap result from {instance_id} within {timeout} s (catalogue key bootstrap_timeout)",
            instance_id))

    outcome = wait_for_instance(
        ctx, instance_id, what="bakery:bootstrap", timeout=timeout, status=instance_status,
        on_timeout=on_timeout, gone_message=f"instance {instance_id} no longer exists", check=watch.check)
    message = f"Chef role_ami run on {instance_id} {outcome} (after {ctx.clock.now() - start:.0f} s)"
    sbom = record_sbom(ctx)
    if sbom.startswith("WARNING:"):
        ctx.log(sbom)
    return f"{message}\n{sbom}"


def _ami_removed(report: CleanupReport, image_id: str | None, image_state: str | None) -> bool:
    """This teardown deregistered (or, in a dry run, would deregister) the bake's AMI, or an earlier one did."""
    if any(o.removal.kind == "image" and o.status in ("done", "would") for o in report.outcomes):
        return True
    return image_state == "deregistered" and bool(image_id)


def cleanup(ctx: Teardown, report: CleanupReport) -> None:
    """The bake's S3 records, once its AMI is gone and no AMI of the bake stays (see the module docstring)."""
    state = ctx.require_state()
    if not _ami_removed(report, state.image_id, state.image_state) or state.amis or state.pending_copies:
        return  # no AMI removed, or one of the bake stays (a copy): the records are still its
    bucket = ctx.records_bucket
    if bucket is None:
        prefix = f"bakes/{state.role}/{state.bake_id}/"
        report.skip(Removal("records", prefix, "", "delete", "deleted", "", lambda: ""),
                    f"role {state.role} is not in the catalogue, so the bucket of its records is unknown "
                    f"(`aws s3 rm --recursive s3://BUCKET/{prefix}`)")
        return
    uri = records_uri(bucket, state.role, state.bake_id)
    why = held_by(ctx.kept_images, bucket, state.role, state.bake_id)
    if why is not None:
        report.skip(Removal("records", uri, "", "delete", "deleted", "", lambda: "", label=f"S3 records {uri}"), why)
        return
    try:
        keys = list_records(ctx.aws, state.region, bucket, state.role, state.bake_id)
    except BakeryError as exc:
        report.errors.append(f"S3 records {uri}: not listed ({exc}). Remove them by hand: aws s3 rm --recursive {uri}")
        return
    if keys:
        d = deletion(ctx.aws, state.region, bucket, state.role, state.bake_id, keys)
        report.attempt(ctx, Removal("records", d.resource, "", "delete", "deleted", d.manual, d.remove, label=d.label))
