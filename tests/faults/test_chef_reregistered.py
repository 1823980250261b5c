"""A bake's Chef identity is gone for good after a teardown, even when the instance's Chef run goes on
while the instance shuts down (on AWS it shows ``shutting-down`` for tens of seconds).

The instance here is a stub: its bake run registers the node and client, reports failure (the bake is
torn down), and once the teardown has deleted them it registers both again, as a chef-client still running
on a terminating instance (or re-registering with the validator) does. The fault proxy shows the
instance ``shutting-down`` until the stub has done so; only then ``terminated``. The teardown must delete
the identity again once the instance is terminated.
"""

from __future__ import annotations

import threading

from support.bakes import RELEASE, Census, bakery, cli_env, simulate_bootstrap
from support.proxy import Rewrite

from bakery_lib.aws import tags_of


def test_identity_recreated_by_a_shutting_down_instance_is_deleted_after_termination(devstack, proxy, tmp_path):
    role = "chef-rereg"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=[role])
    census = Census.take(devstack)
    admin = devstack.goiardi.client()
    ec2 = devstack.moto.client("ec2")
    reregistered = threading.Event()
    stop = threading.Event()
    seen: dict[str, str] = {}

    def instance_side() -> None:
        phase = "boot"
        while not stop.wait(0.05):
            found = [i for r in ec2.describe_instances(Filters=[
                {"Name": "tag:bakery:role", "Values": [role]},
                {"Name": "tag:bakery:purpose", "Values": ["bake"]}])["Reservations"] for i in r["Instances"]]
            if not found:
                continue
            inst = found[0]
            node = tags_of(inst)["bakery:chef-node"]
            seen["node"] = node
            if phase == "boot" and inst["State"]["Name"] == "running":
                simulate_bootstrap(devstack, inst["InstanceId"], node, finish=False)
                ec2.create_tags(Resources=[inst["InstanceId"]], Tags=[
                    {"Key": "bakery:bootstrap", "Value": "failed"},
                    {"Key": "bakery:bootstrap-detail", "Value": "stub: chef run failed"}])
                phase = "torn-down?"
            elif phase == "torn-down?" and inst["State"]["Name"] in ("shutting-down", "terminated") \
                    and not admin.client_exists(node) and not admin.node_exists(node):
                simulate_bootstrap(devstack, inst["InstanceId"], node, finish=False)  # the run goes on
                reregistered.set()
                return

    # The bakery sees the instance shutting down until the stub has registered it again.
    proxy.add(Rewrite("DescribeInstances", "<name>terminated</name>", "<name>shutting-down</name>",
                      active=lambda: not reregistered.is_set()))
    thread = threading.Thread(target=instance_side, daemon=True)
    thread.start()
    try:
        proc = bakery(cli_env(devstack, proxy.url), ws, catalog, "bake", "--role", role, "--release", RELEASE)
    finally:
        stop.set()
        thread.join(10)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert reregistered.is_set(), "the stub never saw its identity deleted"
    node = seen["node"]
    assert not admin.client_exists(node) and not admin.node_exists(node), "the bake's Chef identity came back"
    assert f"Chef client/node {node} registered again while" in proc.stdout + proc.stderr
    assert census.leaks() == []
