"""A killed bake is found by one ``reap``: its ``bakery:heartbeat`` tag stopped moving.

- ``Heartbeat.beat`` tags every live bake instance of the process with one CreateTags per region
  (batched across roles), and nothing for a terminated one.
- ``reap`` removes a bake whose heartbeat is older than a few intervals although it expires in hours and
  the workspace still holds it open, and says why; a bake that beats, or was kept with
  ``--keep-on-failure`` (``kept``), stays until its expiry.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from support.bakes import direct_aws

from bakery_lib.lifecycle.durations import iso
from bakery_lib.lifecycle.heartbeat import DEAD_AFTER, HEARTBEAT_TAG, Heartbeat
from bakery_lib.state import BakeState, Workspace
from devstack.moto import seed_base_image

REGION = "eu-north-1"


def _bake_instance(ec2, base: str, bid: str, role: str, heartbeat: str | None) -> str:
    tags = {"bakery:bake-id": bid, "bakery:role": role, "bakery:release": "1.0", "bakery:purpose": "bake",
            "bakery:chef-node": f"bake-{role}-{bid}", "bakery:expires-at": iso(time.time() + 4 * 3600)}
    if heartbeat is not None:
        tags[HEARTBEAT_TAG] = heartbeat
    return ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, TagSpecifications=[{
        "ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["Instances"][0][
        "InstanceId"]


def _tags(ec2, instance: str) -> dict[str, str]:
    inst = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])} | {"State": inst["State"]["Name"]}


def test_one_beat_tags_every_live_bake_of_the_process_per_region(devstack, proxy):
    ec2 = devstack.moto.client("ec2", REGION)
    base = seed_base_image(ec2, name="heartbeat-base")
    ids = [_bake_instance(ec2, base, f"2026010100000{i}-00bea7", f"hb{i}", None) for i in range(3)]
    states = [BakeState(role=f"hb{i}", bake_id=f"2026010100000{i}-00bea7", release="1", region=REGION,
                        platform="linux", base_ami=base, instance_id=iid) for i, iid in enumerate(ids)]
    states[2].instance_terminated = True
    heartbeat = Heartbeat(direct_aws(devstack, proxy.url), now=lambda: 1_800_000_000.0)
    for s in states:
        heartbeat.track(SimpleNamespace(state=s))
    mark = proxy.mark()
    assert heartbeat.beat() == 2
    assert [c.operation for c in proxy.calls_since(mark)] == ["CreateTags"]
    assert _tags(ec2, ids[0])[HEARTBEAT_TAG] == _tags(ec2, ids[1])[HEARTBEAT_TAG] == iso(1_800_000_000.0)
    assert HEARTBEAT_TAG not in _tags(ec2, ids[2])


def test_reap_removes_a_bake_whose_heartbeat_stopped_and_keeps_one_that_beats(run_cli, devstack, tmp_path,
                                                                             workspace):
    ec2 = devstack.moto.client("ec2", REGION)
    base = seed_base_image(ec2, name="heartbeat-base")
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        r: {"platform": "linux", "region": REGION} for r in ("hbdead", "hblive", "hbkept")})
    dead_id, live_id, kept_id = "20260102000000-0dead0", "20260102000000-011fe0", "20260102000000-0cee00"
    dead = _bake_instance(ec2, base, dead_id, "hbdead", iso(time.time() - DEAD_AFTER - 600))
    live = _bake_instance(ec2, base, live_id, "hblive", iso(time.time()))
    kept = _bake_instance(ec2, base, kept_id, "hbkept", "kept")
    # The killed process left its workspace record open: that alone no longer keeps a dead bake.
    Workspace(workspace).save(BakeState(role="hbdead", bake_id=dead_id, release="1.0", region=REGION,
                                        platform="linux", base_ami=base, instance_id=dead))
    proc = run_cli(["--catalog", str(catalog), "reap", "--no-chef", "--region", REGION])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{REGION} instance {dead}: terminated: bake {dead_id}: its heartbeat stopped" in proc.stdout, proc.stdout
    assert "the process baking it is gone" in proc.stdout
    assert _tags(ec2, dead)["State"] in ("shutting-down", "terminated")
    assert f"{REGION} instance {live}: kept" in proc.stdout and _tags(ec2, live)["State"] == "running"
    assert f"{REGION} instance {kept}: kept" in proc.stdout and _tags(ec2, kept)["State"] == "running"
