"""AWS at its real pace, scaled (the realism layer's slow profile, ``Realism.slow``: its windows, and
counted flicker, vanish, tag and SSM lag), and AWS's ClientToken idempotency, which moto lacks and the
layer plays (see ``support/realism.py``). The behaviours that fail a bake (failed images, vCPU quotas,
empty token buckets, default-key sharing) are tested one stage at a time in
``tests/functional/test_realism_stages.py``."""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import pytest
from support.bakes import RELEASE, Census, check_state, cli_env, run_in_process
from support.proxy import FaultProxy
from support.realism import Realism

from bakery_lib.stages import ORDER
from devstack._boto import session as shared_session
from devstack.moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def _ec2(url: str):
    return shared_session().client("ec2", endpoint_url=url, region_name="us-east-1",
                                          aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)


def test_client_token_replay_and_mismatch(devstack, proxy: FaultProxy):
    proxy.realism = Realism(invisible=0, pending=0, iam=0)
    ec2 = _ec2(proxy.url)
    token = "rl-token-replay-1"
    first = ec2.run_instances(ImageId=devstack.base_image_id, MinCount=1, MaxCount=1, ClientToken=token,
                              InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    again = ec2.run_instances(ImageId=devstack.base_image_id, MinCount=1, MaxCount=1, ClientToken=token,
                              InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    assert again == first and proxy.realism.count("replay") == 1
    with pytest.raises(botocore.exceptions.ClientError, match="IdempotentParameterMismatch"):
        ec2.run_instances(ImageId=devstack.base_image_id, MinCount=1, MaxCount=1, ClientToken=token,
                          InstanceType="t3.large")
    ec2.terminate_instances(InstanceIds=[first])


def test_slow_profile_durations():
    slow = Realism.slow(0.1)
    assert (slow.invisible, slow.image_pending, slow.iam) == pytest.approx((30.0, 60.0, 1.0))
    assert (slow.flicker, slow.vanish, slow.tag_lag, slow.ssm_lag, slow.lt_lag) == (1, 1, 2, 2, 2)  # counted: never scaled


def test_stage_by_stage_bake_at_the_slow_pace(devstack, proxy: FaultProxy, tmp_path: Path, capsys, monkeypatch):
    role = "rl-slow"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    census = Census.take(devstack)
    realism = Realism.slow(0.02)  # NotFound 6 s, images pending 12 s, instances 1.2 s / 2.4 s
    proxy.realism = realism
    env = cli_env(devstack, proxy.url)
    ws = tmp_path / "ws"
    with devstack.runner(tmp_path / "instances", instance_endpoint=proxy.url):
        for stage in ORDER:
            args = ["--workspace", str(ws), "--catalog", str(catalog), "stage", stage, "--role", role]
            if stage == "preflight":
                args += ["--release", RELEASE]
            code, out, err = run_in_process(args, env, capsys, monkeypatch)
            assert code == 0, f"{stage}: {out}\n{err}"
    state = check_state(devstack, ws, role, closed=True)
    assert state["outcome"] == "succeeded"
    # Each behaviour was played (counted ones are bound to be: a new instance and image are described).
    for what in ("invisible", "flicker", "vanish", "tag lag", "ssm"):
        assert realism.count(what) > 0, f"the slow profile never played {what!r}: {realism.played[:30]}"
    assert census.leaks() == []
