"""publish: make the new AMI usable and findable, in every region of the role.

1. Copy the AMI to ``copy_to_regions`` in parallel (encrypted; with the region's KMS key from
   ``region_kms_keys`` when given), tag each copy and its snapshots like the source, and wait until
   every copy is available; IMDSv2 is required on each copy as on the source. A copy's id is saved the moment CopyImage returns; a rerun adopts copies
   found by their ``bakery:bake-id`` tag instead of copying again.
2. Only then: Windows Fast Launch in every region, waited for until ``enabled`` (``fast_launch``), and
   fast snapshot restore on the AMI's snapshots (``fast_snapshot_restore``): ``amis.fast_launch``; then
   share launch permission (and snapshot create-volume permission) with
   ``share_with_accounts``; write the SSM parameter ``/bakery/ROLE/latest`` (data type
   ``aws:ec2:image``) in every region; optionally make a new default version of ``launch_template``.
   Never backwards: the parameter's description names the bake that wrote it, and a bake that started
   before that one (an older release whose bake finished late) leaves the parameter and the launch
   template as they are and says so. Bake ids sort by start time, and one role's Jenkins bakes start in
   deploy order, so the newest deploy's image stays ``latest``.
3. ``s3://BUCKET/runlists/ROLE.json`` = ``{"run_list": [...]}`` from the role's launch run list (what
   first boot runs), written without reading it first (the same bytes when nothing changed).
4. Artifacts: ``artifacts/ROLE.json``, ``artifacts/amis.json``, ``artifacts/amis.properties``.
Closes the bake record (outcome ``succeeded``, or ``reused``).
Calls: EC2 CopyImage, DescribeImages, CreateTags, ModifyImageAttribute, ModifySnapshotAttribute,
CreateLaunchTemplateVersion, ModifyLaunchTemplate (in every region, from ``$Default``); SSM
DescribeParameters, PutParameter, GetParameter (the value read back); S3 PutObject; for a reused AMI
whose catalogue tags changed, CreateTags/DeleteTags on its copies (see ``retag_image``).
EnableImageDeprecation and EnableImageDeregistrationProtection (``amis.retire``; the AMIs the new one
supersedes in the build region are those preflight listed, ``state.role_amis``: no DescribeImages for them).
EnableFastLaunch, DescribeFastLaunchImages and EnableFastSnapshotRestores when the catalogue asks.
Cleanup: copies that publish did not finish (pending, or available but IMDSv2 not yet required on them)
are deregistered and their snapshots deleted; Fast Launch and fast snapshot restore that this publish
turned on are turned off again on the images the failed bake keeps (no pre-provisioned snapshots left
running up a bill for an image nothing publishes).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..amis import fast_launch, retire
from ..aws import tag_list, tags_of
from ..catalog import RoleSpec
from ..ec2.images import retag_image
from ..errors import AwsError, BakeryError, StageTimeout
from ..reports import write_artifacts
from ..resources import delete_snapshots, deregister_image, snapshot_ids
from ..userdata import runlist_document
from ..waits import Wait, while_propagating
from .base import CleanupReport, Context, Removal, Teardown

COPY_TIMEOUT = 90 * 60
# How long SSM may take to validate an aws:ec2:image value (asynchronous; seconds on AWS).
SSM_VALIDATION_TIMEOUT = 5 * 60


def _retag_copies(ctx: Context, amis: dict[str, str]) -> list[str]:
    """A reused AMI's copies in other regions (adopted ones carry the tags of their own bake)."""
    notes = []
    for region, image_id in sorted(amis.items()):
        if region == ctx.region:
            continue  # the source: preflight re-tagged it from its reuse look-up
        images = ctx.aws.describe_images(region, [image_id])
        if images and (note := retag_image(ctx, region, images[0])):
            notes.append(note)
    return notes


def publish_runlist(ctx: Context, *, only_if_changed: bool = True) -> str:
    """Write the role's first-boot run list. ``only_if_changed`` reads it first and leaves an equal
    object alone (``bakery publish-runlist``: a person wants to know); the publish stage writes
    without reading, one call instead of two, the same bytes when nothing changed."""
    role = ctx.role
    body = runlist_document(role.run_list_launch)
    try:
        if only_if_changed:
            current = ctx.aws.call("s3", ctx.region, "GetObject", Bucket=role.runlist_bucket, Key=role.runlist_key)
            if current["Body"].read() == body:
                return f"s3://{role.runlist_bucket}/{role.runlist_key} unchanged"
    except AwsError as exc:
        if exc.code not in ("NoSuchKey", "404", "NotFound", "403"):
            raise
    ctx.aws.call("s3", ctx.region, "PutObject", Bucket=role.runlist_bucket, Key=role.runlist_key, Body=body,
                 ContentType="application/json", ServerSideEncryption="AES256")
    return f"s3://{role.runlist_bucket}/{role.runlist_key} written"


def _find_copy(ctx: Context, region: str, tag: str, value: str) -> dict[str, Any] | None:
    images = ctx.aws.describe_images(region, Owners=["self"], Filters=[
        {"Name": f"tag:{tag}", "Values": [value]}, {"Name": "tag:bakery:role", "Values": [ctx.role.name]}])
    images = [i for i in images if i.get("State") not in ("deregistered", "failed", "invalid", "error")]
    return max(images, key=lambda i: i.get("CreationDate") or "") if images else None


def _copy_tags(ctx: Context, source: dict[str, Any]) -> dict[str, str]:
    tags = {k: v for k, v in tags_of(source).items() if not k.startswith("aws:")}
    tags["bakery:source-ami"] = source["ImageId"]
    tags["bakery:source-region"] = ctx.region
    return tags


def _start_copy(ctx: Context, region: str, source: dict[str, Any], tags: dict[str, str]) -> str:
    """Adopt a copy made by an interrupted run (for a reused AMI: one with the same bake key), or CopyImage.
    The copy's id is in the state before anything waits on it."""
    state = ctx.require_state()
    found = _find_copy(ctx, region, "bakery:bake-id", tags.get("bakery:bake-id", state.bake_id))
    if found is None and state.reused and state.bake_key:
        found = _find_copy(ctx, region, "bakery:bake-key", state.bake_key)
    if found is not None:
        image_id: str = found["ImageId"]
    else:
        # ClientToken: a CopyImage replayed after a lost answer (a kill, a read timeout) returns the
        # first copy instead of making a second (EC2 API reference, CopyImage; moto ignores it, hence
        # the look-up by tag above). TagSpecifications: the copy and its snapshots are the bakery's
        # from birth, so reap finds them even when the process dies before the CreateTags below.
        params: dict[str, Any] = {"SourceImageId": source["ImageId"], "SourceRegion": ctx.region,
                                  "Name": source["Name"], "Encrypted": True,
                                  "Description": (source.get("Description") or "")[:255],
                                  "ClientToken": copy_token(state.bake_id, region),
                                  "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list(tags)}
                                                        for kind in ("image", "snapshot")]}
        kms = dict(ctx.role.region_kms_keys).get(region)
        if kms:
            params["KmsKeyId"] = kms
        image_id = ctx.aws.call("ec2", region, "CopyImage", **params)["ImageId"]
        ctx.log(f"copying {source['ImageId']} to {region} as {image_id}")
    with ctx.state_lock:
        state.pending_copies[region] = image_id
        ctx.save()
    # The copy may answer NotFound to CreateTags for a moment after CopyImage (EC2 propagation).
    while_propagating(lambda: ctx.aws.call("ec2", region, "CreateTags", Resources=[image_id], Tags=tag_list(tags)),
                      what=f"tagging copy {image_id}", clock=ctx.clock, log=ctx.log)
    return image_id


def copy_token(bake_id: str, region: str) -> str:
    """The CopyImage ClientToken of a bake's copy to ``region`` (at most 64 ASCII characters)."""
    return f"copy-{bake_id}-{region}"[:64]


def _wait_copy(ctx: Context, region: str, image_id: str, source_id: str) -> dict[str, Any]:
    def check(image: dict[str, Any]) -> dict[str, Any] | None:
        current = image.get("State")
        if current == "available":
            return image
        if current in ("failed", "invalid", "error", "deregistered"):
            reason = image.get("StateReason", {}).get("Message") or "no reason given"
            raise BakeryError(f"copy {image_id} of {source_id} to {region} is {current}: {reason}")
        return None

    def on_timeout(elapsed: float, last: dict[str, Any] | None) -> BaseException:
        current = (last or {}).get("State", "not visible")
        return StageTimeout(f"copy {image_id} in {region} still {current} after {COPY_TIMEOUT} s; "
                            f"rerun `bakery stage publish --role {ctx.role.name}` to keep waiting")

    # A new copy can be missing from DescribeImages for a while (EC2 eventual consistency): the wait
    # takes it for gone only once it was seen, or after its grace period.
    wait: Wait[dict[str, Any], dict[str, Any]] = Wait(
        what=f"copy {image_id} in {region}", clock=ctx.clock, log=ctx.log, timeout=COPY_TIMEOUT,
        interval=ctx.poll_interval, status=lambda image: str(image.get("State")), on_timeout=on_timeout,
        gone_message=f"copy {image_id} of {source_id} to {region} no longer exists (deregistered?)")
    try:
        return wait.run(lambda: ctx.aws.images.get(region, image_id, max_age=ctx.poll_interval * 0.9, clock=ctx.clock), check)
    finally:
        ctx.aws.images.forget(region, image_id)


def copy_to(ctx: Context, region: str, source: dict[str, Any]) -> str:
    """Copy the source AMI to ``region`` (or adopt an existing copy) and wait until it is available."""
    state = ctx.require_state()
    tags = _copy_tags(ctx, source)
    image_id = state.pending_copies.get(region) or _start_copy(ctx, region, source, tags)
    image = _wait_copy(ctx, region, image_id, source["ImageId"])
    if image.get("ImdsSupport") != "v2.0":
        # Whether a copy keeps ImdsSupport is not documented: require IMDSv2 on it as on the source.
        try:
            ctx.aws.call("ec2", region, "ModifyImageAttribute", ImageId=image_id, ImdsSupport={"Value": "v2.0"})
        except AwsError as exc:
            raise BakeryError(f"copy {image_id} in {region}: requiring IMDSv2 on it failed ({exc})") from None
    snaps = snapshot_ids(image)
    if snaps:
        ctx.aws.call("ec2", region, "CreateTags", Resources=snaps, Tags=tag_list(tags))
    with ctx.state_lock:
        state.amis[region] = image_id
        state.pending_copies.pop(region, None)
        ctx.save()
    return image_id


def launch_permissions(role: RoleSpec) -> list[dict[str, str]]:
    """LaunchPermission entries for the role's accounts, organizations and OUs."""
    perms = [{"UserId": a} for a in role.share_with_accounts]
    for arn in role.share_with_organizations:
        perms.append({"OrganizationalUnitArn": arn} if ":ou/" in arn else {"OrganizationArn": arn})
    return perms


def share(ctx: Context, region: str, image_id: str) -> None:
    """Launch permission for the accounts / organizations / OUs; to launch it they use the role's key,
    whose policy preflight checked. The snapshots' createVolumePermission (which lets the other account
    copy the raw disk, not only launch the AMI) only with ``share_snapshots`` and only to accounts
    (snapshots cannot be shared with an organization)."""
    perms = launch_permissions(ctx.role)
    if not perms:
        return
    ctx.aws.call("ec2", region, "ModifyImageAttribute", ImageId=image_id, LaunchPermission={"Add": perms})
    accounts = list(ctx.role.share_with_accounts)
    if not (ctx.role.share_snapshots and accounts):
        return
    images = ctx.aws.describe_images(region, [image_id])
    for snap in snapshot_ids(images[0]) if images else []:
        ctx.aws.call("ec2", region, "ModifySnapshotAttribute", SnapshotId=snap, Attribute="createVolumePermission",
                     OperationType="add", UserIds=accounts)


def latest_parameter(role: str) -> str:
    return f"/bakery/{role}/latest"


# The description PutParameter writes ends with the bake that wrote it: "(release V, bake ID)".
_WRITER_RE = re.compile(r"\(release (?P<release>.*), bake (?P<bake>\d{14}-[0-9a-f]+)\)$")


def newer_publisher(ctx: Context, region: str) -> str | None:
    """Who published ``latest`` in ``region`` if that bake started after this one, else None.

    The parameter's description carries the writer's bake id; a parameter written by an older
    version of the bakery (no bake id) or by an older bake is not newer.
    """
    state = ctx.require_state()
    found = ctx.aws.call("ssm", region, "DescribeParameters", ParameterFilters=[
        {"Key": "Name", "Option": "Equals", "Values": [latest_parameter(ctx.role.name)]}]).get("Parameters", [])
    match = _WRITER_RE.search(found[0].get("Description", "")) if found else None
    # Compare start times only (the id's first 14 digits): two bakes started within the same second
    # are not ordered, and then the later writer wins as it always did.
    if match and match.group("bake")[:14] > state.bake_id[:14]:
        return f"bake {match.group('bake')} of release {match.group('release')}"
    return None


def put_ssm(ctx: Context, region: str, image_id: str) -> None:
    """Write ``latest`` and read it back: with data type ``aws:ec2:image`` SSM validates the image id
    asynchronously after PutParameter returns, and a value that fails validation is never stored (AWS
    Systems Manager User Guide, "Native parameter support for Amazon Machine Image IDs")."""
    state = ctx.require_state()
    name = latest_parameter(ctx.role.name)
    description = f"Latest AMI Bakery image of role {ctx.role.name} (release {state.release}, bake {state.bake_id})"
    ctx.aws.call("ssm", region, "PutParameter", Name=name, Value=image_id,
                 Type="String", DataType="aws:ec2:image", Overwrite=True, Description=description[-1024:])

    def probe() -> str | None:
        try:
            return str(ctx.aws.call("ssm", region, "GetParameter", Name=name)["Parameter"]["Value"])
        except AwsError as exc:
            if exc.code == "ParameterNotFound":
                return None
            raise

    def on_timeout(elapsed: float, last: str | None) -> BaseException:
        return BakeryError(f"SSM parameter {name} in {region} still reads {last or 'nothing'} {elapsed:.0f} s after "
                           f"writing {image_id}: SSM did not accept it as an aws:ec2:image value (is the AMI "
                           "available in that region?)")

    wait: Wait[str, bool] = Wait(
        what=f"SSM parameter {name} in {region}", clock=ctx.clock, log=ctx.log, timeout=SSM_VALIDATION_TIMEOUT,
        interval=ctx.poll_interval, absent_grace=SSM_VALIDATION_TIMEOUT, on_timeout=on_timeout)
    wait.run(probe, lambda value: True if value == image_id else None)


def _publish_latest(ctx: Context, amis: dict[str, str]) -> tuple[list[str], list[str]]:
    """Point ``latest`` at the new AMIs where no newer bake already did; (regions written, notes)."""
    written: list[str] = []
    notes: list[str] = []
    for region, image_id in sorted(amis.items()):
        newer = newer_publisher(ctx, region)
        if newer:
            notes.append(f"{latest_parameter(ctx.role.name)} in {region} kept: {newer} published after this "
                         "bake started")
            continue
        put_ssm(ctx, region, image_id)
        written.append(region)
    return written, notes


def update_launch_template(ctx: Context, region: str, image_id: str) -> str:
    """A new default version of the role's launch template in ``region``, based on ``$Default``: the
    version the estate launches today (``$Latest`` may be someone's unfinished draft), with only the
    image changed. Missing in the build region: a catalogue error; missing in a copy region: noted."""
    name = ctx.role.launch_template
    assert name
    try:
        version = ctx.aws.call("ec2", region, "CreateLaunchTemplateVersion", LaunchTemplateName=name,
                               SourceVersion="$Default",
                               VersionDescription=f"bakery {ctx.require_state().release}"[:255],
                               LaunchTemplateData={"ImageId": image_id})["LaunchTemplateVersion"]["VersionNumber"]
    except AwsError as exc:
        if exc.code.startswith("InvalidLaunchTemplateName") or exc.code.startswith("InvalidLaunchTemplateId"):
            if region != ctx.region:
                return f"launch template {name} not in {region}: left alone"
            raise BakeryError(f"catalogue {ctx.catalog.path}, role {ctx.role.name!r}, key 'launch_template': "
                              f"launch template {name!r} does not exist in {ctx.region}") from None
        raise
    # The new version may be unknown to ModifyLaunchTemplate for a moment (EC2 eventual consistency:
    # InvalidLaunchTemplateId.VersionNotFound): retried, not a failed publish whose rerun adds a version.
    while_propagating(lambda: ctx.aws.call("ec2", region, "ModifyLaunchTemplate", LaunchTemplateName=name,
                                           DefaultVersion=str(version)),
                      what=f"making version {version} of launch template {name} the default in {region}",
                      clock=ctx.clock, log=ctx.log)
    return f"launch template {name} in {region} default version {version} -> {image_id}"


def _copy_everywhere(ctx: Context, primary: str) -> None:
    """Copy the AMI to every region of the role that has none yet, in parallel; all or an error."""
    state = ctx.require_state()
    targets = [r for r in ctx.role.regions if r != ctx.region and r not in state.amis]
    if not targets:
        return
    images = ctx.aws.describe_images(ctx.region, [primary])
    if not images or images[0].get("State") != "available":
        raise BakeryError(f"AMI {primary} is not available in {ctx.region}")
    source = images[0]
    with ThreadPoolExecutor(max_workers=min(8, len(targets)), thread_name_prefix="copy") as pool:
        futures = {r: pool.submit(copy_to, ctx, r, source) for r in targets}
        errors = []
        for region, fut in futures.items():
            try:
                fut.result()  # the copies' ids are in the "published" list of the message
            except BakeryError as exc:
                errors.append(f"{region}: {exc}")
    if errors:
        raise BakeryError("copying the AMI failed: " + "; ".join(errors))


def _speed_up(ctx: Context) -> list[str]:
    """Fast Launch (waited for) and fast snapshot restore, before anything points at the AMI."""
    state = ctx.require_state()
    messages = list(filter(None, [fast_launch.enable_fast_launch(ctx, state.amis)]))
    for region, image_id in sorted(state.amis.items()):
        zones = ctx.role.restore_zones(region)
        if not zones:
            continue
        images = ctx.aws.describe_images(region, [image_id])
        with ctx.state_lock:
            state.fast_snapshot_restore[region] = zones
            ctx.save()
        note = fast_launch.enable_restores(ctx, region, snapshot_ids(images[0]) if images else [])
        if note:
            messages.append(f"{region} {note}")
    return messages


def _point_at(ctx: Context, primary: str) -> list[str]:
    """Sharing, ``latest`` and the launch template, once the AMI is available in every region."""
    state = ctx.require_state()
    messages = _retag_copies(ctx, state.amis) if state.reused else []
    messages += _speed_up(ctx)
    for region, image_id in sorted(state.amis.items()):
        share(ctx, region, image_id)
    shared_with = [*ctx.role.share_with_accounts, *ctx.role.share_with_organizations]
    if shared_with:
        messages.append(f"shared with {', '.join(shared_with)}"
                        + (" (snapshots too)" if ctx.role.share_snapshots and ctx.role.share_with_accounts else ""))
    messages.append(retire.guard_new(ctx, state.amis))  # before latest: a failure publishes nothing
    written, notes = _publish_latest(ctx, state.amis)
    messages.extend(filter(None, [retire.supersede(ctx, state.amis, written)]))
    if written:
        messages.append(f"{latest_parameter(ctx.role.name)} in {', '.join(written)}")
    messages.extend(notes)
    if ctx.role.launch_template:
        # The build region first: a template missing there is a catalogue error before any copy changes.
        for region in sorted(written, key=lambda r: r != ctx.region):
            messages.append(update_launch_template(ctx, region, state.amis[region]))
        for region in sorted(set(state.amis) - set(written)):
            messages.append(f"launch template {ctx.role.launch_template} in {region} kept (a newer bake published)")
    return messages


def run(ctx: Context) -> str:
    state = ctx.require_state()
    primary = state.amis.get(ctx.region)
    if not primary:
        raise BakeryError("no available AMI recorded for this bake; run wait-image first")
    _copy_everywhere(ctx, primary)
    messages = _point_at(ctx, primary)
    messages.append(publish_runlist(ctx, only_if_changed=False))
    write_artifacts(ctx.ws, state)
    state.closed = True
    state.outcome = "reused" if state.reused else "succeeded"
    ctx.save()
    amis = ", ".join(f"{r} {a}" for r, a in sorted(state.amis.items()))
    return f"published {amis}; " + "; ".join(messages)


def _slow_down(ctx: Teardown, report: CleanupReport) -> None:
    """Fast Launch and fast snapshot restore off again where this (failed) publish turned them on."""
    state = ctx.require_state()
    for region in sorted(set(state.fast_launch) | set(state.fast_snapshot_restore)):
        image_id = state.amis.get(region)
        if not image_id:
            continue

        def off(region: str = region, image_id: str = image_id) -> str:
            done = []
            zones = state.fast_snapshot_restore.get(region)
            if zones:
                images = ctx.aws.describe_images(region, [image_id])
                fast_launch.disable_restores(ctx.aws, region, zones, snapshot_ids(images[0]) if images else [])
                done.append(f"fast snapshot restore of {image_id}'s snapshots in {region} disabled")
            if region in state.fast_launch and fast_launch.disable_fast_launch(
                    ctx.aws, region, image_id, ctx.clock, ctx.poll_interval, ctx.log):
                done.append(f"Windows Fast Launch of {image_id} in {region} disabled")
            with ctx.state_lock:
                state.fast_launch.pop(region, None)
                state.fast_snapshot_restore.pop(region, None)
                report.save(ctx)
            return "; ".join(done)
        report.attempt(ctx, Removal("fast-launch", image_id, region, "disable", "disabled",
                                    f"aws ec2 disable-fast-launch --region {region} --image-id {image_id}", off,
                                    label=f"Fast Launch / fast snapshot restore of {image_id} in {region}"))


def cleanup(ctx: Teardown, report: CleanupReport) -> None:
    state = ctx.require_state()
    if not state.closed:
        _slow_down(ctx, report)
    for copy_region, copy_id in sorted(state.pending_copies.items()):
        def dereg_copy(copy_region: str = copy_region, copy_id: str = copy_id) -> str:
            images = ctx.aws.describe_images(copy_region, [copy_id])
            if images:
                deregister_image(ctx.aws, copy_region, copy_id, clock=ctx.clock, poll=ctx.poll_interval, log=ctx.log)
                delete_snapshots(ctx.aws, copy_region, snapshot_ids(images[0]), ctx.sleep, max_delay=ctx.poll_interval)
            with ctx.state_lock:
                state.pending_copies.pop(copy_region, None)
                report.save(ctx)
            return f"deregistered unfinished copy {copy_id} in {copy_region}"
        report.attempt(ctx, Removal("copy", copy_id, copy_region, "deregister", "deregistered",
                                    f"aws ec2 deregister-image --region {copy_region} --image-id {copy_id}", dereg_copy))
    if not state.reused:
        # Finished copies stay with the bake's available image (a rerun of publish adopts them); say so.
        for copy_region, copy_id in sorted(state.amis.items()):
            if copy_region != state.region and copy_region not in state.pending_copies:
                report.kept.append(f"available copy {copy_id} in {copy_region}")
