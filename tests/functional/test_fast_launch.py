"""Windows Fast Launch and EBS fast snapshot restore: the AMI layer as strict as EC2 (moto has neither),
publish turning them on before ``latest`` (and off again when it fails), prune turning them off before it
deletes, each new call failing once through the fault proxy; and cleanup/reap skipping an AMI under
deregistration protection with the reason instead of an error.

One moto + layer for the module: fast snapshot restore counts snapshots per Region (EC2's limit of 5),
which the session's shared moto must not carry from here to other tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from types import SimpleNamespace

import botocore.exceptions
import pytest
from support.bakes import FaultTable
from support.proxy import FaultProxy, Rule
from support.stages import make_ctx, new_aws, open_bake, unique_role

from bakery_lib.clock import Clock
from bakery_lib.errors import BakeryError
from bakery_lib.lifecycle import prune
from bakery_lib.lifecycle.reap import reap
from bakery_lib.stages import publish
from bakery_lib.stages.base import CleanupReport
from devstack.ami_layer import LayeredMoto
from devstack.moto import seed_base_image

ZONE = "us-east-1a"
FAST = {"platform": "windows", "fast_launch": {"target_snapshots": 2, "max_parallel_launches": 6}}


@pytest.fixture(scope="module")
def moto() -> Iterator[LayeredMoto]:
    with LayeredMoto() as server:
        server.client("s3").create_bucket(Bucket="acme-bakery")
        yield server


def _ami(moto: LayeredMoto, role: str, n: int, platform: str = "windows") -> str:
    return seed_base_image(moto.client("ec2"), f"bakery-{role}-{n}", platform=platform, tags={
        "bakery:role": role, "bakery:created-by": "bakery", "bakery:bake-id": f"2026010100000{n}-{role[:6]}"})


def _fast_launch(moto: LayeredMoto, image_id: str) -> list[dict]:
    return moto.client("ec2").describe_fast_launch_images(ImageIds=[image_id])["FastLaunchImages"]


def _snapshots(moto: LayeredMoto, image_id: str) -> list[str]:
    image = moto.client("ec2").describe_images(ImageIds=[image_id])["Images"][0]
    return [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]


def _publish(server, tmp_path, role: str, image_id: str, overrides: dict):
    ctx = make_ctx(server, tmp_path / image_id, overrides, role=role)
    open_bake(ctx, "ami-00000000")
    ctx.state.image_id = image_id
    ctx.state.amis = {"us-east-1": image_id}
    ctx.save()
    return ctx


def _latest(moto: LayeredMoto, role: str) -> str | None:
    try:
        return str(moto.client("ssm").get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]["Value"])
    except botocore.exceptions.ClientError:
        return None


# --- the layer: what EC2 refuses ----------------------------------------------------------------------


def test_layer_fast_launch_is_as_strict_as_ec2(moto):
    ec2 = moto.client("ec2")
    win, linux = _ami(moto, "strict", 1), _ami(moto, "strict", 2, platform="linux")
    amazon = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["Windows_Server-*"]},
                                                             {"Name": "platform", "Values": ["windows"]}])["Images"]
    refused = [({"ImageId": linux}, "InvalidParameterValue", "Windows AMIs only"),
               ({"ImageId": win, "MaxParallelLaunches": 5}, "InvalidParameterValue", "6 or greater"),
               ({"ImageId": "ami-0123456789abcdef0"}, "InvalidAMIID.NotFound", ""),
               ({"ImageId": amazon[0]["ImageId"]}, "UnauthorizedOperation", "own"),
               ({"ImageId": win, "LaunchTemplate": {"LaunchTemplateName": "a", "LaunchTemplateId": "lt-0123456789abcdef0",
                                                  "Version": "1"}},
                "InvalidParameterCombination", "not both")]
    for params, code, words in refused:
        with pytest.raises(botocore.exceptions.ClientError, match=code) as info:
            ec2.enable_fast_launch(**params)
        assert words in info.value.response["Error"]["Message"], params
    assert _fast_launch(moto, linux) == []

    assert ec2.enable_fast_launch(ImageId=win, MaxParallelLaunches=6)["State"] == "enabling"
    with pytest.raises(botocore.exceptions.ClientError, match="IncorrectState"):
        ec2.enable_fast_launch(ImageId=win, MaxParallelLaunches=6)  # still enabling
    assert [i["State"] for i in _fast_launch(moto, win)] == ["enabling"]
    assert [i["State"] for i in _fast_launch(moto, win)] == ["enabled"]
    # While Fast Launch is on, the image cannot be deregistered (its pre-provisioned snapshots are EC2's).
    with pytest.raises(botocore.exceptions.ClientError, match="IncorrectState"):
        ec2.deregister_image(ImageId=win)
    assert ec2.disable_fast_launch(ImageId=win)["State"] == "disabling"
    with pytest.raises(botocore.exceptions.ClientError, match="IncorrectState"):
        ec2.enable_fast_launch(ImageId=win, MaxParallelLaunches=6)  # snapshots still being removed
    assert [i["State"] for i in _fast_launch(moto, win)] == ["disabling"]
    assert _fast_launch(moto, win) == []  # disabled: no longer configured
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidParameterValue"):
        ec2.disable_fast_launch(ImageId=win)
    ec2.deregister_image(ImageId=win)


def test_layer_fast_snapshot_restores_states_zones_and_deletion(moto):
    ec2 = moto.client("ec2")
    snap = _snapshots(moto, _ami(moto, "fsr", 1))[0]
    answer = ec2.enable_fast_snapshot_restores(AvailabilityZones=[ZONE, "us-east-1q"], SourceSnapshotIds=[snap])
    assert [(s["AvailabilityZone"], s["State"]) for s in answer["Successful"]] == [(ZONE, "enabling")]
    errors = answer["Unsuccessful"][0]["FastSnapshotRestoreStateErrors"]
    assert [(e["AvailabilityZone"], e["Error"]["Code"]) for e in errors] == [("us-east-1q", "InvalidParameterValue")]
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidSnapshot.NotFound"):
        ec2.enable_fast_snapshot_restores(AvailabilityZones=[ZONE], SourceSnapshotIds=["snap-0123456789abcdef0"])
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidParameterCombination"):
        ec2.enable_fast_snapshot_restores(AvailabilityZones=[ZONE], AvailabilityZoneIds=["use1-az1"],
                                          SourceSnapshotIds=[snap])

    def states() -> list[str]:
        return [r["State"] for r in ec2.describe_fast_snapshot_restores()["FastSnapshotRestores"]
                if r["SnapshotId"] == snap]
    assert [states(), states(), states()] == [["enabling"], ["optimizing"], ["enabled"]]
    assert ec2.disable_fast_snapshot_restores(AvailabilityZones=[ZONE], SourceSnapshotIds=[snap])[
        "Successful"][0]["State"] == "disabling"
    assert [states(), states(), states()] == [["disabling"], ["disabled"], []]
    # Deleting a snapshot disables its fast snapshot restores (EBS User Guide).
    ec2.enable_fast_snapshot_restores(AvailabilityZones=[ZONE], SourceSnapshotIds=[snap])
    ec2.deregister_image(ImageId=ec2.describe_images(Filters=[{"Name": "name", "Values": ["bakery-fsr-1"]}])[
        "Images"][0]["ImageId"])
    ec2.delete_snapshot(SnapshotId=snap)
    assert states() == []


def test_layer_enforces_iam_on_the_calls_it_answers(tmp_path):
    from devstack.iam_enforcement import create_user

    with LayeredMoto(iam_enforcement=True) as server:
        win = seed_base_image(server.client("ec2"), "enforced-win", platform="windows")
        only_describe = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["ec2:DescribeImages", "ec2:DescribeFastLaunchImages"], "Resource": "*"}]}
        may_enable = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["ec2:EnableFastLaunch", "ec2:EnableImageDeprecation"], "Resource": "*"},
            {"Effect": "Deny", "Action": "ec2:EnableImageDeprecation", "Resource": "*"}]}
        keys = {name: create_user(server, name, policy)
                for name, policy in (("reader", only_describe), ("enabler", may_enable))}
        server.enforce_iam()

        def ec2(name: str):
            from devstack._boto import session as shared_session

            return shared_session().client("ec2", endpoint_url=server.url, region_name="us-east-1",
                                                  aws_access_key_id=keys[name][0],
                                                  aws_secret_access_key=keys[name][1])
        assert ec2("reader").describe_fast_launch_images()["FastLaunchImages"] == []
        with pytest.raises(botocore.exceptions.ClientError, match="UnauthorizedOperation") as info:
            ec2("reader").enable_fast_launch(ImageId=win, MaxParallelLaunches=6)
        assert "ec2:EnableFastLaunch" in info.value.response["Error"]["Message"]
        assert ec2("enabler").enable_fast_launch(ImageId=win, MaxParallelLaunches=6)["State"] == "enabling"
        with pytest.raises(botocore.exceptions.ClientError, match="UnauthorizedOperation"):  # Deny wins
            ec2("enabler").enable_image_deprecation(ImageId=win, DeprecateAt="2030-01-01T00:00:00Z")
        from devstack._boto import session as shared_session

        stranger = shared_session().client("ec2", endpoint_url=server.url, region_name="us-east-1",
                                                  aws_access_key_id="AKIAUNKNOWN000000000",
                                                  aws_secret_access_key="x")
        with pytest.raises(botocore.exceptions.ClientError, match="AuthFailure"):
            stranger.disable_fast_launch(ImageId=win)


# --- publish ---------------------------------------------------------------------------------------------


def test_publish_enables_fast_launch_and_restores_before_latest(moto, tmp_path, request):
    role = unique_role(request)
    image = _ami(moto, role, 1)
    ctx = _publish(moto, tmp_path, role, image, {**FAST, "fast_snapshot_restore": [ZONE]})
    message = publish.run(ctx)
    assert "Windows Fast Launch us-east-1 enabled" in message
    assert f"us-east-1 fast snapshot restore in {ZONE} enabling" in message
    [launch] = _fast_launch(moto, image)
    assert (launch["State"], launch["MaxParallelLaunches"], launch["SnapshotConfiguration"]) == (
        "enabled", 6, {"TargetResourceCount": 2})
    assert _latest(moto, role) == image
    assert ctx.state.fast_launch == {"us-east-1": "enabled"}
    restores = [r for r in moto.client("ec2").describe_fast_snapshot_restores()["FastSnapshotRestores"]
                if r["SnapshotId"] in _snapshots(moto, image)]
    assert [r["AvailabilityZone"] for r in restores] == [ZONE]



def _superseded_with_fast_features(moto, tmp_path, role: str):
    """Two Windows AMIs of ``role`` with Fast Launch enabled and fast snapshot restore on their snapshots,
    the older one deprecated (superseded) and not protected: prune's to delete."""
    ec2 = moto.client("ec2")
    old, new = _ami(moto, role, 1), _ami(moto, role, 2)
    for image_id in (old, new):
        ec2.enable_fast_launch(ImageId=image_id, MaxParallelLaunches=6)
        while _fast_launch(moto, image_id)[0]["State"] != "enabled":
            pass  # the layer moves on one state per DescribeFastLaunchImages
        ec2.enable_fast_snapshot_restores(AvailabilityZones=[ZONE], SourceSnapshotIds=_snapshots(moto, image_id))
    ec2.enable_image_deprecation(ImageId=old, DeprecateAt=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    spec = make_ctx(moto, tmp_path, {**FAST, "fast_snapshot_restore": [ZONE]}, role=role).role
    return old, new, spec


def test_prune_turns_fast_launch_and_restores_off_before_deleting(moto, tmp_path, request):
    role = unique_role(request)
    old, new, spec = _superseded_with_fast_features(moto, tmp_path, role)
    snaps = _snapshots(moto, old)
    with FaultProxy(moto.url) as proxy:
        report = prune(new_aws(SimpleNamespace(url=proxy.url)), spec, 1, dry_run=False, poll_interval=0.01)
        calls = [c.operation for c in proxy.calls]
    assert [d.image_id for d in report.deleted] == [old], report.text()
    assert report.exit_code == 0, report.text()
    assert calls.index("DisableFastLaunch") < calls.index("DeregisterImage")
    assert calls.index("DisableFastSnapshotRestores") < calls.index("DeleteSnapshot")
    assert not moto.client("ec2").describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": snaps}])["Snapshots"]
    assert _fast_launch(moto, new)[0]["State"] == "enabled"  # the kept one keeps it
    moto.client("ec2").disable_fast_snapshot_restores(AvailabilityZones=[ZONE], SourceSnapshotIds=_snapshots(moto, new))


def test_fast_launch_failing_publishes_nothing_and_cleanup_turns_it_off(moto, tmp_path, request):
    role = unique_role(request)
    image = _ami(moto, role, 1)
    moto.fail_next_fast_launch("us-east-1", "Client.InternalError: the temporary instance did not finish Sysprep")
    ctx = _publish(moto, tmp_path, role, image, FAST)
    with pytest.raises(BakeryError, match="enabling-failed: Client.InternalError: the temporary instance"):
        publish.run(ctx)
    assert _latest(moto, role) is None
    report = CleanupReport()
    publish.cleanup(ctx, report)
    assert report.errors == [] and any("Windows Fast Launch" in d and "disabled" in d for d in report.done), report
    assert _fast_launch(moto, image) == []
    assert ctx.state.fast_launch == {}
    FaultTable.add("fast launch", "`publish:EnableFastLaunch` ends `enabling-failed` (EC2's reason: Sysprep did not finish)",
                   "publish fails naming the state and EC2's reason; `latest` not written; cleanup disables Fast "
                   "Launch on the kept AMI", "nothing (kept: the available AMI, Fast Launch off)")


@pytest.mark.parametrize("operation", ["EnableFastLaunch", "DescribeFastLaunchImages", "EnableFastSnapshotRestores"])
def test_a_new_call_failing_once_publishes_nothing_and_leaves_nothing_on(moto, tmp_path, request, operation):
    role = unique_role(request)
    image = _ami(moto, role, 1)
    with FaultProxy(moto.url) as proxy:
        proxy.add(Rule(operation))
        ctx = _publish(SimpleNamespace(url=proxy.url), tmp_path, role, image, {**FAST, "fast_snapshot_restore": [ZONE]})
        with pytest.raises(BakeryError, match="UnauthorizedOperation"):
            publish.run(ctx)
        assert _latest(moto, role) is None
        report = CleanupReport()
        publish.cleanup(ctx, report)  # through the proxy too: its one failure is spent
    assert report.errors == [], report.text()
    assert _fast_launch(moto, image) == []
    snaps = set(_snapshots(moto, image))
    assert [r for r in moto.client("ec2").describe_fast_snapshot_restores()["FastSnapshotRestores"]
            if r["SnapshotId"] in snaps and r["State"] not in ("disabling", "disabled")] == []
    # A rerun publishes it whole.
    publish.run(_publish(moto, tmp_path / "rerun", role, image, {**FAST, "fast_snapshot_restore": [ZONE]}))
    assert _latest(moto, role) == image and _fast_launch(moto, image)[0]["State"] == "enabled"
    FaultTable.add("fast launch", f"`publish:{operation}` → `UnauthorizedOperation` once",
                   "publish fails naming the code; `latest` not written; cleanup turns Fast Launch and fast snapshot "
                   "restore off again; a rerun publishes it whole", "nothing (kept: the available AMI)")


@pytest.mark.parametrize("operation", ["DisableFastLaunch", "DisableFastSnapshotRestores"])
def test_prune_failing_on_a_new_call_deletes_nothing_half(moto, tmp_path, request, operation):
    role = unique_role(request)
    old, new, spec = _superseded_with_fast_features(moto, tmp_path, role)
    with FaultProxy(moto.url) as proxy:
        proxy.add(Rule(operation, times=3))  # every try of the removal
        report = prune(new_aws(SimpleNamespace(url=proxy.url)), spec, 1, dry_run=False, poll_interval=0.01)
    assert report.exit_code == 1 and operation in report.text(), report.text()
    assert moto.client("ec2").describe_images(ImageIds=[old])["Images"]  # not deregistered
    assert moto.client("ec2").describe_snapshots(SnapshotIds=_snapshots(moto, old))["Snapshots"]
    again = prune(new_aws(moto), spec, 1, dry_run=False, poll_interval=0.01)
    assert [d.image_id for d in again.deleted] == [old] and again.exit_code == 0, again.text()
    moto.client("ec2").disable_fast_snapshot_restores(AvailabilityZones=[ZONE], SourceSnapshotIds=_snapshots(moto, new))
    FaultTable.add("fast launch", f"`prune:{operation}` → `UnauthorizedOperation` on every try",
                   "prune exits 1 naming the code; the AMI is not deregistered and its snapshots stay; the next "
                   "prune deletes it", "nothing (the AMI stays whole)")


# --- deregistration protection met by cleanup / reap --------------------------------------------------


def test_reap_skips_a_protected_ami_with_the_reason(moto, request):
    role = unique_role(request)
    image = _ami(moto, role, 1, platform="linux")
    bake_id = f"20260101000001-{role[:6]}"
    ec2 = moto.client("ec2")
    # A leftover to reap (its boot test failed), which someone protected from deregistration.
    ec2.create_tags(Resources=[image], Tags=[{"Key": "bakery:boot-test", "Value": "failed"}])
    ec2.enable_image_deregistration_protection(ImageId=image, WithCooldown=True)
    dry = reap(new_aws(moto), ["us-east-1"], None, bake_id=bake_id, dry_run=True).text()
    assert "would deregister" not in dry and "deregistration protection" in dry, dry
    report = reap(new_aws(moto), ["us-east-1"], None, bake_id=bake_id, dry_run=False)
    text = report.text()
    assert report.errors == [], text
    assert f"{image}" in text and "deregistration protection" in text and "kept" in text, text
    assert ec2.describe_images(ImageIds=[image])["Images"][0]["State"] == "available"
    FaultTable.add("fast launch", "`reap` meets a leftover AMI under deregistration protection",
                   "reap keeps it with the reason (only prune lifts protection, once nothing points at it); exit 0",
                   "the protected AMI, on purpose")


class PausesClock(Clock):
    """A clock that records each pause and returns at once (time is not this test's subject)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []

    def pause(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        return False


def test_reap_turns_fast_launch_off_before_it_deregisters_a_leftover(moto, request):
    """A Windows leftover (its boot test failed) whose Fast Launch is on: reap's image cleanup disables
    it, waits until EC2 removed it, then deregisters (EC2 refuses the other order). The wait polls at the
    configured interval, on the clock reap was given (not every 2 s on a clock of its own)."""
    role = unique_role(request)
    image = _ami(moto, role, 1)
    ec2 = moto.client("ec2")
    ec2.create_tags(Resources=[image], Tags=[{"Key": "bakery:boot-test", "Value": "failed"}])
    ec2.enable_fast_launch(ImageId=image, MaxParallelLaunches=6)
    clock = PausesClock()
    report = reap(new_aws(moto), ["us-east-1"], None, bake_id=f"20260101000001-{role[:6]}", dry_run=False,
                  poll_interval=0.3, clock=clock)
    assert report.errors == [], report.text()
    assert not ec2.describe_images(ImageIds=[image])["Images"] or \
        ec2.describe_images(ImageIds=[image])["Images"][0]["State"] == "deregistered"
    assert _fast_launch(moto, image) == []
    # The layer reports `disabling` to one DescribeFastLaunchImages: one pause of the poll interval.
    assert clock.pauses == [0.3], clock.pauses


def test_a_publish_rerun_waits_on_the_fast_launch_under_way(moto, tmp_path, request):
    """Killed (or timed out) while EC2 was enabling: the rerun does not ask again (EC2 refuses that while
    enabling) but waits for the one under way."""
    role = unique_role(request)
    image = _ami(moto, role, 1)
    ctx = _publish(moto, tmp_path, role, image, FAST)
    moto.client("ec2").enable_fast_launch(ImageId=image, MaxParallelLaunches=6)  # the first run's call
    ctx.state.fast_launch = {"us-east-1": "enabling"}
    ctx.save()
    assert "Windows Fast Launch us-east-1 enabled" in publish.run(ctx)
    assert _latest(moto, role) == image
