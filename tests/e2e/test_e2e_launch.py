"""End to end, the launch path: ``create-instance ROLE`` (bootstrap with the launch run list) and
``create-instance ROLE --from-ami latest`` (the baked image's first boot registers the instance).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def cli(entry: str, env, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    code = f"import sys; from bakery_lib.cli import {entry}; sys.exit({entry}())"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def env(cli_env):
    return {**cli_env, "BAKERY_POLL_INTERVAL": "0.2"}


def test_create_instance_launch_path_registers_with_launch_run_list(devstack, env, instance_runner, tmp_path,
                                                                  names):
    front = names.role("front")
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={front: {"platform": "linux"}})
    proc = cli("create_instance_main", env, front, "--catalog", str(catalog), "--workspace", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    instance_id = proc.stdout.strip()
    assert instance_id.startswith("i-")
    result = instance_runner.wait(instance_id, timeout=120)
    assert result["kind"] == "launch" and result["exit_code"] == 0, instance_runner.console(instance_id)
    chef = devstack.goiardi.client()
    node = f"{front}-{instance_id}"
    assert chef.node_exists(node)
    calls = [json.loads(line) for line in
             (Path(result["root"]) / "var/log/stub-chef-client.jsonl").read_text().splitlines()]
    assert calls[-1]["run_list"] == [f"recipe[roles::{front}_launch]"]
    inst = devstack.moto.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["bakery:purpose"] == "launch" and "bakery:expires-at" not in tags
    assert not (tmp_path / ".bakery" / f"{front}.json").exists()  # the launch path leaves the bake state alone


def test_bake_then_scale_from_latest_ami(devstack, env, instance_runner, tmp_path, names):
    # A role of its own: another test's bake of the same role would be reused here, its root unknown
    # to this test's runner.
    role = names.role("shop")
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    base = ["--catalog", str(catalog), "--workspace", str(ws)]
    proc = cli("create_instance_main", env, role, "--bake", "--release", "7.1", *base)
    assert proc.returncode == 0, proc.stderr
    ami = json.loads((ws / "artifacts" / f"{role}.json").read_text())["amis"]["us-east-1"]

    proc = cli("create_instance_main", env, role, "--from-ami", "latest", *base)
    assert proc.returncode == 0, proc.stderr
    instance_id = proc.stdout.strip()
    inst = devstack.moto.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert inst["ImageId"] == ami
    result = instance_runner.wait(instance_id, timeout=120)
    assert result["kind"] == "firstboot" and result["exit_code"] == 0, instance_runner.console(instance_id)
    root = Path(result["root"])
    assert not (root / "firstboot.txt").exists()  # removed on success
    chef = devstack.goiardi.client()
    assert chef.node_exists(f"{role}-{instance_id}")
    calls = [json.loads(line) for line in (root / "var/log/stub-chef-client.jsonl").read_text().splitlines()]
    assert calls[-1]["run_list"] == [f"recipe[roles::{role}_launch]"]  # exactly the S3 run list

    # --from-ami with a release that has no AMI is a clear failure
    proc = cli("create_instance_main", env, role, "--from-ami", "latest", "--release", "9.9", *base)
    assert proc.returncode == 1 and "no available baked AMI" in proc.stderr and "Traceback" not in proc.stderr


def test_create_instance_bad_usage(devstack, env, tmp_path):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"shop": {"platform": "linux"}})
    proc = cli("create_instance_main", env, "shop", "--bake", "--catalog", str(catalog))
    assert proc.returncode == 2 and "--release" in proc.stderr
    proc = cli("create_instance_main", env, "nope", "--catalog", str(catalog))
    assert proc.returncode == 2 and "no such role" in proc.stderr
