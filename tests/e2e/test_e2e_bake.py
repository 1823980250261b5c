"""End to end: the CLI called stage by stage in subprocesses exactly as the Jenkinsfile does, against
moto server and goiardi, with the instance runner executing the real bake user data.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bakery_lib.stages import ORDER

pytestmark = pytest.mark.e2e


def bakery(env, ws: Path, catalog: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def e2e_env(devstack):
    env = dict(devstack.env)
    env["BAKERY_POLL_INTERVAL"] = "0.2"
    return env


def junit_cases(ws: Path, role: str) -> dict[str, ET.Element]:
    cases = {}
    for path in sorted((ws / "reports").glob(f"{role}-*.xml")):
        suite = ET.parse(path).getroot().find("testsuite")
        assert suite.get("name") == f"bakery.{role}"
        case = suite.find("testcase")
        cases[case.get("name")] = case
    return cases


def test_bake_stage_by_stage(devstack, e2e_env, instance_runner, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {"platform": "linux"}})
    for stage in ORDER:
        extra = ["--release", "2026.11.1"] if stage == "preflight" else []
        proc = bakery(e2e_env, ws, catalog, "stage", stage, "--role", "web", *extra)
        assert proc.returncode == 0, f"{stage}: {proc.stderr}"
        assert "Traceback" not in proc.stderr

    state = json.loads((ws / ".bakery" / "web.json").read_text())
    assert state["outcome"] == "succeeded" and state["closed"]
    ami = state["amis"]["us-east-1"]
    ec2 = devstack.moto.client("ec2")
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert image["State"] == "available"
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["bakery:role"] == "web" and tags["bakery:release"] == "2026.11.1"
    assert tags["bakery:bake-id"] == state["bake_id"] and tags["bakery:created-by"] == "bakery"
    assert tags["bakery:base-ami"] == state["base_ami"] and len(tags["bakery:bake-key"]) == 32

    inst = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "terminated"
    itags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert itags["bakery:bootstrap"] == "succeeded"  # set by the real user data, through the real aws CLI

    node = state["chef_node"]
    assert node == f"bake-web-{state['bake_id']}"
    chef = devstack.goiardi.client()
    assert not chef.node_exists(node) and not chef.client_exists(node)
    # The runner really registered it during the bake (it was there to delete):
    assert instance_runner.results[state["instance_id"]]["exit_code"] == 0

    cases = junit_cases(ws, "web")
    assert set(cases) == set(ORDER)
    assert all(c.find("failure") is None for c in cases.values())

    art = json.loads((ws / "artifacts" / "web.json").read_text())
    assert art["amis"] == {"us-east-1": ami} and art["release"] == "2026.11.1" and art["role"] == "web"
    assert json.loads((ws / "artifacts" / "amis.json").read_text())["amis"] == {"web": {"us-east-1": ami}}
    assert f"AMI_WEB={ami}" in (ws / "artifacts" / "amis.properties").read_text().splitlines()

    ssm = devstack.moto.client("ssm")
    assert ssm.get_parameter(Name="/bakery/web/latest")["Parameter"]["Value"] == ami
    s3 = devstack.moto.client("s3")
    body = json.loads(s3.get_object(Bucket=devstack.bucket, Key="runlists/web.json")["Body"].read())
    assert body == {"run_list": ["recipe[roles::web_launch]"]}

    # A rerun of a completed stage is a no-op that says so.
    proc = bakery(e2e_env, ws, catalog, "stage", "image", "--role", "web")
    assert proc.returncode == 0 and "already done" in proc.stdout
    # cleanup after success keeps the AMI
    proc = bakery(e2e_env, ws, catalog, "cleanup", "--role", "web")
    assert proc.returncode == 0, proc.stderr
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available"


def test_bootstrap_failure_then_cleanup(devstack, e2e_env, instance_runner, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "broken": {"platform": "linux", "run_lists": {"ami": ["recipe[roles::fail]"]}}})
    for stage in ("preflight", "security-groups", "iam-role", "launch"):
        extra = ["--release", "1.0"] if stage == "preflight" else []
        proc = bakery(e2e_env, ws, catalog, "stage", stage, "--role", "broken", *extra)
        assert proc.returncode == 0, f"{stage}: {proc.stderr}"
    proc = bakery(e2e_env, ws, catalog, "stage", "bootstrap", "--role", "broken")
    assert proc.returncode == 1
    assert "Chef role_ami run failed" in proc.stderr and "Traceback" not in proc.stderr
    failure = junit_cases(ws, "broken")["bootstrap"].find("failure")
    assert failure is not None and "console output" in failure.text
    # Why, without logging in: the instance uploaded its log's last lines, the stage shows them.
    bake_id = json.loads((ws / ".bakery" / "broken.json").read_text())["bake_id"]
    tail_uri = f"s3://{devstack.bucket}/bakes/broken/{bake_id}/bootstrap-log.txt"
    for text in (proc.stderr, failure.text):
        assert f"--- last lines of the bake log ({tail_uri}) ---" in text, text
        assert "RuntimeError: recipe[roles::fail] failed" in text.split("--- console output")[0]
        assert "PRIVATE KEY" not in text

    # The next stage is refused: bootstrap must succeed first.
    proc = bakery(e2e_env, ws, catalog, "stage", "stop", "--role", "broken")
    assert proc.returncode == 2 and "'bootstrap' must run first" in proc.stderr

    state = json.loads((ws / ".bakery" / "broken.json").read_text())
    proc = bakery(e2e_env, ws, catalog, "cleanup", "--role", "broken")
    assert proc.returncode == 0, proc.stderr
    ec2 = devstack.moto.client("ec2")
    inst = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "terminated"
    chef = devstack.goiardi.client()
    assert not chef.node_exists(state["chef_node"]) and not chef.client_exists(state["chef_node"])
    assert json.loads((ws / ".bakery" / "broken.json").read_text())["closed"] is True
    # idempotent
    assert bakery(e2e_env, ws, catalog, "cleanup", "--role", "broken").returncode == 0


def test_launch_rerun_keeps_one_instance(devstack, e2e_env, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"solo": {"platform": "linux"}})
    for stage in ("preflight", "security-groups", "iam-role", "launch"):
        extra = ["--release", "1.0"] if stage == "preflight" else []
        assert bakery(e2e_env, ws, catalog, "stage", stage, "--role", "solo", *extra).returncode == 0
    # Simulate a lost state write after RunInstances: the rerun must find the instance by tag.
    path = ws / ".bakery" / "solo.json"
    state = json.loads(path.read_text())
    first = state["instance_id"]
    state["instance_id"] = None
    state["stages"]["launch"]["status"] = "failed"
    path.write_text(json.dumps(state))
    proc = bakery(e2e_env, ws, catalog, "stage", "launch", "--role", "solo")
    assert proc.returncode == 0 and "already exists" in proc.stdout
    ec2 = devstack.moto.client("ec2")
    res = ec2.describe_instances(Filters=[{"Name": "tag:bakery:bake-id", "Values": [state["bake_id"]]}])
    assert [i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]] == [first]
    assert bakery(e2e_env, ws, catalog, "cleanup", "--role", "solo").returncode == 0


def test_bake_command_and_reuse(devstack, e2e_env, instance_runner, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "api": {"platform": "linux"}, "queue": {"platform": "linux"}})
    proc = bakery(e2e_env, ws, catalog, "bake", "--all", "--release", "3.0", "--jobs", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    calls = re.search(r"^AWS API calls: (\d+) \(([\d.]+) per role\)$", proc.stdout, re.M)
    assert calls and 2 * 10 < int(calls.group(1)) and float(calls.group(2)) == pytest.approx(int(calls.group(1)) / 2, 0.05)
    amis = json.loads((ws / "artifacts" / "amis.json").read_text())["amis"]
    assert set(amis) == {"api", "queue"}
    # Same inputs, new release: reused, nothing launched.
    ec2 = devstack.moto.client("ec2")
    before = sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])
    proc = bakery(e2e_env, ws, catalog, "bake", "--all", "--release", "3.1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "reused" in proc.stdout
    after = sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])
    assert after == before
    again = json.loads((ws / "artifacts" / "amis.json").read_text())
    assert again["amis"] == amis and again["release"] == "3.1"


def test_status_keep_on_failure_and_force(devstack, e2e_env, instance_runner, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "flaky": {"platform": "linux", "run_lists": {"ami": ["recipe[roles::fail]"]}},
        "steady": {"platform": "linux"}})
    proc = bakery(e2e_env, ws, catalog, "bake", "--role", "flaky", "--role", "steady", "--release", "4.0",
                  "--keep-on-failure", timeout=300)
    assert proc.returncode == 1
    assert "1 of 2 role(s) failed: flaky" in proc.stderr
    assert f"bakery --workspace {ws} cleanup --role flaky" in proc.stderr + proc.stdout
    ec2 = devstack.moto.client("ec2")
    flaky = json.loads((ws / ".bakery" / "flaky.json").read_text())
    inst = ec2.describe_instances(InstanceIds=[flaky["instance_id"]])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] in ("running", "stopped")  # kept for debugging
    chef = devstack.goiardi.client()
    node = flaky["chef_node"]
    assert chef.client_exists(node) or chef.node_exists(node)  # its Chef identity is kept with it
    # one failing role never stops the others
    assert json.loads((ws / ".bakery" / "steady.json").read_text())["outcome"] == "succeeded"

    proc = bakery(e2e_env, ws, catalog, "status", "--json")
    data = json.loads(proc.stdout)
    assert data["flaky"]["stages"]["bootstrap"]["status"] == "failed" and not data["flaky"]["closed"]
    assert data["steady"]["outcome"] == "succeeded"
    human = bakery(e2e_env, ws, catalog, "status", "--role", "flaky").stdout
    assert "bootstrap" in human and "failed" in human and flaky["instance_id"] in human

    proc = bakery(e2e_env, ws, catalog, "cleanup", "--role", "flaky")
    assert proc.returncode == 0, proc.stderr
    inst = ec2.describe_instances(InstanceIds=[flaky["instance_id"]])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "terminated"
    assert not chef.client_exists(node) and not chef.node_exists(node)

    # --force rebakes an unchanged role instead of reusing its AMI
    first = json.loads((ws / "artifacts" / "steady.json").read_text())["amis"]["us-east-1"]
    proc = bakery(e2e_env, ws, catalog, "bake", "--role", "steady", "--release", "4.1", "--force", timeout=300)
    assert proc.returncode == 0, proc.stderr
    second = json.loads((ws / "artifacts" / "steady.json").read_text())["amis"]["us-east-1"]
    assert second != first
    assert (ws / "reports" / "summary.html").exists() and (ws / "reports" / "summary.md").exists()


def test_bake_refuses_while_a_stage_by_stage_bake_is_open(devstack, e2e_env, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"busy": {"platform": "linux"}})
    assert bakery(e2e_env, ws, catalog, "stage", "preflight", "--role", "busy", "--release", "1").returncode == 0
    before = json.loads((ws / ".bakery" / "busy.json").read_text())
    proc = bakery(e2e_env, ws, catalog, "bake", "--role", "busy", "--release", "2")
    assert proc.returncode == 1 and "still in progress" in proc.stderr + proc.stdout
    after = json.loads((ws / ".bakery" / "busy.json").read_text())
    assert after["bake_id"] == before["bake_id"] and not after["closed"]  # the open bake was not touched
    proc = bakery(e2e_env, ws, catalog, "stage", "preflight", "--role", "busy", "--release", "2")
    assert proc.returncode == 1 and "bakery cleanup --role busy" in proc.stderr
    assert bakery(e2e_env, ws, catalog, "cleanup", "--role", "busy").returncode == 0


def test_preflight_checks_chef_run_list_and_credentials(devstack, e2e_env, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "ghost": {"platform": "linux", "run_lists": {"ami": ["recipe[nosuchcookbook::x]", "role[nosuchrole]"]}}})
    proc = bakery(e2e_env, ws, catalog, "stage", "preflight", "--role", "ghost", "--release", "1")
    assert proc.returncode == 1
    assert "recipe[nosuchcookbook::x], role[nosuchrole]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (ws / ".bakery" / "ghost.json").exists()
    assert "<failure" in (ws / "reports" / "ghost-preflight.xml").read_text()

    bad_key = tmp_path / "wrong.pem"
    import subprocess as sp
    sp.run(["openssl", "genrsa", "-out", str(bad_key), "2048"], check=True, capture_output=True)
    env = {**e2e_env, "CHEF_CLIENT_KEY": str(bad_key)}
    catalog = devstack.write_catalog(tmp_path / "ok.yaml", roles={"fine": {"platform": "linux"}})
    proc = bakery(env, ws, catalog, "stage", "preflight", "--role", "fine", "--release", "1")
    assert proc.returncode == 1 and "401" in proc.stderr
    assert "PRIVATE KEY" not in proc.stderr + proc.stdout
