"""``create-instance ROLE --wait``: the command returns only once the instance said how its first run went
(the launch user data's ``bakery:bootstrap`` tag, set by the real script in the instance runner).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_create_instance_wait_returns_after_the_launch_run_list_converged(devstack, cli_env, instance_runner,
                                                                          tmp_path):
    env = {**cli_env, "BAKERY_POLL_INTERVAL": "0.2"}
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"waitfront": {"platform": "linux"}})
    code = "import sys; from bakery_lib.cli import create_instance_main; sys.exit(create_instance_main())"
    proc = subprocess.run([sys.executable, "-c", code, "waitfront", "--wait", "--catalog", str(catalog),
                           "--workspace", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    instance_id, said = proc.stdout.splitlines()[:2]
    assert instance_id.startswith("i-") and said.startswith(f"{instance_id}: ")
    inst = devstack.moto.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["bakery:bootstrap"] == "succeeded"  # said only after the instance tagged itself
    assert devstack.goiardi.client().node_exists(f"waitfront-{instance_id}")

    bad = subprocess.run([sys.executable, "-c", code, "waitfront", "--wait", "--bake", "--release", "1",
                          "--catalog", str(catalog)], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--wait is for a launch" in bad.stderr
