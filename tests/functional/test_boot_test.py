"""The boot-test stage: every new AMI boots once, as production instances will boot it, before it is
published -- against moto server and goiardi, with the instance runner executing the image's real
first-boot script (Linux) in test mode, and the CLI run as Jenkins runs it.

Cases: pass (Linux with a health command, and Windows played), a Chef failure at first boot and the
rerun after it, a failing health command, a test instance that never answers (timeout), SIGTERM during
the test, ``--keep-on-failure``, a role that opts out, and the catalogue's validation of ``boot_test``.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.bakes import FaultTable, context, prepare
from support.sandbox import (  # the sandbox of the first-boot tests, shared
    Sandbox,
    imds_for,
    make_role,
    new_instance,
    output,
)
from support.sandbox import instance_tags as sandbox_tags

from bakery_lib.catalog import load_catalog, parse_catalog
from bakery_lib.cleanup import cleanup
from bakery_lib.errors import CatalogError
from bakery_lib.stages import ORDER, run_stage
from bakery_lib.userdata import boot_test_node_name, boot_test_userdata, render_role_scripts
from devstack import isolated_env
from devstack.imds import ImdsDouble

pytestmark = pytest.mark.e2e
REGION = "us-east-1"


def bakery(env: dict[str, str], ws: Path, catalog: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog), *args],
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture()
def env(devstack) -> dict[str, str]:
    out = isolated_env(devstack.env)
    out["BAKERY_POLL_INTERVAL"] = "0.2"
    return out


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", []) or []}


def state_of(ws: Path, role: str) -> dict[str, Any]:
    return json.loads((ws / ".bakery" / f"{role}.json").read_text())


def instance(devstack, instance_id: str) -> dict[str, Any]:
    return devstack.moto.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def image(devstack, image_id: str) -> dict[str, Any] | None:
    images = devstack.moto.client("ec2").describe_images(ImageIds=[image_id])["Images"]
    return images[0] if images else None


def boot_test_instances(devstack, bake_id: str) -> list[dict[str, Any]]:
    res = devstack.moto.client("ec2").describe_instances(Filters=[
        {"Name": "tag:bakery:bake-id", "Values": [bake_id]}, {"Name": "tag:bakery:purpose", "Values": ["boot-test"]}])
    return [i for r in res["Reservations"] for i in r["Instances"]]


def junit_failure(ws: Path, role: str, stage: str) -> str:
    case = ET.parse(ws / "reports" / f"{role}-{stage}.xml").getroot().find("testsuite/testcase")
    assert case is not None and case.get("name") == stage
    failure = case.find("failure")
    return "" if failure is None else f"{failure.get('message')}\n{failure.text or ''}"


def ssm_latest(devstack, role: str) -> str | None:
    try:
        return devstack.moto.client("ssm").get_parameter(Name=f"/bakery/{role}/latest")["Parameter"]["Value"]
    except Exception:  # ParameterNotFound
        return None


def assert_nothing_left(devstack, state: dict[str, Any], ami: str) -> None:
    """The failed AMI is deregistered with its snapshots; the test instance and its Chef identity are gone."""
    assert image(devstack, ami) is None, f"{ami} is still registered"
    snaps = devstack.moto.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:bakery:bake-id", "Values": [state["bake_id"]]}])["Snapshots"]
    assert not snaps, [s["SnapshotId"] for s in snaps]
    for inst in boot_test_instances(devstack, state["bake_id"]):
        assert inst["State"]["Name"] in ("shutting-down", "terminated"), inst["State"]
    chef = devstack.goiardi.client()
    node = state["test_chef_node"]
    assert not chef.client_exists(node) and not chef.node_exists(node)


def test_the_stage_sits_between_chef_cleanup_and_publish():
    assert ORDER.index("boot-test") == ORDER.index("chef-cleanup") + 1 == ORDER.index("publish") - 1
    assert len(ORDER) == 12


def test_passed_ami_is_published_and_only_then_reused(devstack, env, instance_runner, tmp_path):
    """Linux (the real first-boot script, with a health command) and Windows (played) in one bake.

    Role names of their own: the AMIs this test leaves on the shared moto server must not be reused
    by the bake-key look-up of another test's ``web`` bake."""
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "bt-web": {"boot_test": {"command": "echo health-check-ran; test -e \"$BAKERY_ROOT/firstboot.txt\""}},
        "bt-win": {"platform": "windows"}})
    proc = bakery(env, ws, catalog, "bake", "--all", "--release", "1.0", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    ec2 = devstack.moto.client("ec2")
    chef = devstack.goiardi.client()
    for role in ("bt-web", "bt-win"):
        state = state_of(ws, role)
        ami = state["amis"][REGION]
        assert state["boot_test"] == "passed" and tags_of(image(devstack, ami))["bakery:boot-test"] == "passed"
        assert ssm_latest(devstack, role) == ami
        assert json.loads((ws / "artifacts" / f"{role}.json").read_text())["boot_test"] == "passed"
        # One test instance, launched from the new AMI like a production instance, then terminated.
        (test,) = boot_test_instances(devstack, state["bake_id"])
        assert test["InstanceId"] == state["test_instance_id"] and test["ImageId"] == ami
        assert test["State"]["Name"] in ("shutting-down", "terminated")
        tags = tags_of(test)
        node = boot_test_node_name(role, state["bake_id"])
        assert tags["bakery:chef-node"] == node == state["test_chef_node"] and tags["bakery:role"] == role
        assert tags["bakery:expires-at"] and tags["bakery:boot-test"] == "passed"
        assert test["MetadataOptions"]["HttpTokens"] == "required"
        assert [g["GroupId"] for g in test["SecurityGroups"]] == [state["security_group_id"]]
        # It registered with Chef (checked by the stage), and its identity was removed afterwards.
        assert not chef.client_exists(node) and not chef.node_exists(node)
        assert junit_failure(ws, role, "boot-test") == ""
        assert "passed its boot test" in state["stages"]["boot-test"]["message"]

    # What the real Linux first-boot script did in test mode, from the sandbox of the test instance.
    web = state_of(ws, "bt-web")
    runs = [json.loads(line) for line in
            (instance_runner.root(web["test_instance_id"]) / "var/log/stub-chef-client.jsonl").read_text().splitlines()]
    (run,) = [r for r in runs if r["node_name"] == web["test_chef_node"]]
    assert run["ok"] and run["why_run"] and run["registered"] and "--why-run" in run["argv"]
    assert run["run_list"] == ["recipe[roles::bt-web_launch]"]  # from s3://.../runlists/bt-web.json
    console = instance_runner.console(web["test_instance_id"])
    assert "health-check-ran" in console and "alert published" not in console
    assert (instance_runner.root(web["test_instance_id"]) / "firstboot.txt").exists()  # a test keeps the sentinel
    # (Its last line, after the tag, may be cut: the bakery terminates the instance once it is tagged,
    # and a terminated instance runs nothing more -- on EC2 as in the runner.)
    assert f"as {web['test_chef_node']} with the run list" in console
    assert "boot test: running the health command" in console

    # Same inputs, new release: the passed AMIs are reused, nothing is launched.
    before = sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])
    proc = bakery(env, ws, catalog, "bake", "--role", "bt-web", "--release", "1.1")
    assert proc.returncode == 0 and "reused" in proc.stdout, proc.stderr
    assert sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"]) == before
    # An AMI that has not passed is never reused: without the tag, the next bake bakes again.
    ec2.delete_tags(Resources=[web["amis"][REGION]], Tags=[{"Key": "bakery:boot-test"}])
    proc = bakery(env, ws, catalog, "bake", "--role", "bt-web", "--release", "1.2")
    assert proc.returncode == 0, proc.stderr
    assert "reused" not in proc.stdout and state_of(ws, "bt-web")["amis"][REGION] != web["amis"][REGION]


def test_chef_failure_at_first_boot_publishes_nothing_then_a_rerun_passes(devstack, env, instance_runner, tmp_path,
                                                                          names):
    shop = names.role("shop")  # a role of its own: no other test's AMI of it is reused
    ws = tmp_path / "ws"
    broken = {"run_lists": {"launch": ["recipe[roles::fail]"]}}
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={shop: broken})
    proc = bakery(env, ws, catalog, "bake", "--role", shop, "--release", "2.0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    state = state_of(ws, shop)
    ami = state["image_id"]
    out = proc.stderr + proc.stdout
    assert "boot-test" in out and "boot test of" in out and "recipe[roles::fail] failed" in out
    failure = junit_failure(ws, shop, "boot-test")
    assert "cinc-client --why-run exited 1" in failure and "console output (tail)" in failure
    assert state["boot_test"] == "failed" and state["closed"]
    assert ssm_latest(devstack, shop) is None and not (ws / "artifacts" / f"{shop}.json").exists()
    assert_nothing_left(devstack, state, ami)
    # The test paged nobody: the first boot tagged its result instead of publishing an alert.
    assert "alert published" not in instance_runner.console(state["test_instance_id"])

    # Fixed run list, rerun: a new AMI passes and is published; the failed one was never reused.
    devstack.write_catalog(catalog, roles={shop: {}})
    proc = bakery(env, ws, catalog, "bake", "--role", shop, "--release", "2.0")
    assert proc.returncode == 0, proc.stderr
    again = state_of(ws, shop)
    assert again["bake_id"] != state["bake_id"] and again["boot_test"] == "passed"
    assert ssm_latest(devstack, shop) == again["amis"][REGION] != ami
    FaultTable.add("boot-test", "the launch run list fails at first boot (Chef why-run exits 1), then a fixed rerun",
                   "bake exits 1 with Chef's FATAL line and the console tail in JUnit; nothing published; the AMI "
                   "deregistered with its snapshots; the rerun bakes and publishes a new AMI that passed", "nothing")


def test_failing_health_command_fails_the_stage_by_stage_bake(devstack, env, instance_runner, tmp_path, names):
    """Jenkins' way: one stage per call; the failed stage stops the pipeline, ``bakery cleanup`` (post
    always) removes the test instance, its Chef identity and the AMI."""
    api = names.role("api")  # a role of its own: no other test's AMI of it is reused
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        api: {"boot_test": {"command": "echo 'port 8080 closed' >&2; exit 3"}}})
    for stage in ORDER[:ORDER.index("boot-test")]:
        extra = ["--release", "3.0"] if stage == "preflight" else []
        proc = bakery(env, ws, catalog, "stage", stage, "--role", api, *extra)
        assert proc.returncode == 0, f"{stage}: {proc.stderr}"
    proc = bakery(env, ws, catalog, "stage", "boot-test", "--role", api)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "the health command exited 3" in proc.stderr
    failure = junit_failure(ws, api, "boot-test")
    assert "the health command exited 3" in failure and "console output (tail)" in failure
    # The health command's output is in the instance's console (moto's GetConsoleOutput serves its own text).
    assert "port 8080 closed" in instance_runner.console(state_of(ws, api)["test_instance_id"])
    proc = bakery(env, ws, catalog, "stage", "publish", "--role", api)
    assert proc.returncode == 2 and "'boot-test' must run first" in proc.stderr
    state = state_of(ws, api)
    ami = state["amis"][REGION]
    assert tags_of(image(devstack, ami))["bakery:boot-test"] == "failed"
    proc = bakery(env, ws, catalog, "cleanup", "--role", api)
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(devstack, state_of(ws, api), ami)
    assert ssm_latest(devstack, api) is None
    FaultTable.add("boot-test", "health command exits 3 (stage mode)",
                   "stage exits 1 \"the health command exited 3\"; publish refused (exit 2); AMI tagged "
                   "`bakery:boot-test=failed`; `bakery cleanup` removes instance, Chef identity, AMI", "nothing")


def test_a_test_instance_that_never_answers_times_out(devstack, env, tmp_path):
    """The test instance never boots (held by the runner, as a hung boot would): whatever the load, it
    registers nothing the cleanup could miss. (With an instance that boots and then hangs, when it
    registers with Chef relative to the 4 s timeout depends on the machine's load; the runner kills a
    terminated instance's sandbox as EC2 would, but a registration could still land before that.)"""
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "mute": {"boot_test": {"command": "sleep 120", "timeout": "4s"}}})
    with devstack.runner(tmp_path / "instances", hold=lambda tags: tags.get("bakery:purpose") == "boot-test") \
            as runner:
        proc = bakery(env, ws, catalog, "bake", "--role", "mute", "--release", "4.0")
        state = state_of(ws, "mute")
        tested = [i["InstanceId"] for i in boot_test_instances(devstack, state["bake_id"])]
        assert tested and all(runner.wait(iid)["kind"] == "held" for iid in tested)
    assert proc.returncode == 1
    out = proc.stderr + proc.stdout
    assert "within 4 s (catalogue key boot_test.timeout)" in out and "never answered" in out
    assert_nothing_left(devstack, state, state["image_id"])
    FaultTable.add("boot-test", "the test instance never answers (`boot_test.timeout: 4s`)",
                   "bake exits 1 naming `boot_test.timeout`, console tail; its own cleanup removes the rest",
                   "nothing")


def test_sigterm_during_the_boot_test_cleans_up(devstack, env, instance_runner, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "slow": {"boot_test": {"command": "sleep 120"}}})
    proc = subprocess.Popen([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog),
                             "bake", "--role", "slow", "--release", "5.0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    chef = devstack.goiardi.client()
    deadline = time.monotonic() + 120
    node = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            node = state_of(ws, "slow").get("test_chef_node")
        except (OSError, ValueError):
            node = None
        if node and chef.client_exists(node):  # the test instance registered and runs its health command
            break
        time.sleep(0.2)
    assert node and proc.poll() is None, "the boot test never started"
    proc.send_signal(signal.SIGTERM)
    # The health command sleeps 120 s: an exit before it ends is the interrupted wait's (the deadline
    # is a guard, never what is measured).
    out, err = proc.communicate(timeout=100)
    assert proc.returncode != 0 and "received SIGTERM" in err, err
    assert "Traceback" not in err
    state = state_of(ws, "slow")
    assert state["closed"] and state["outcome"] == "cleaned"
    assert_nothing_left(devstack, state, state["image_id"])
    FaultTable.add("interrupt", "SIGTERM during `boot-test` (bake mode, the test instance registered)",
                   "exits at once; the bake's cleanup terminated the test instance, "
                   "deleted its Chef client and node and deregistered the untested AMI", "nothing")


def test_keep_on_failure_keeps_the_test_instance_and_says_how_to_remove_it(devstack, env, instance_runner, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "dbg": {"boot_test": {"command": "exit 1"}}})
    proc = bakery(env, ws, catalog, "bake", "--role", "dbg", "--release", "6.0", "--keep-on-failure")
    assert proc.returncode == 1
    out = proc.stderr + proc.stdout
    state = state_of(ws, "dbg")
    ami = state["amis"][REGION]
    assert f"boot-test instance {state['test_instance_id']}" in out and f"image {ami}" in out
    assert f"bakery --workspace {ws} cleanup --role dbg" in out
    test = instance(devstack, state["test_instance_id"])
    assert test["State"]["Name"] == "running"
    # Launched with the role's settings, as a production instance would be (seen on the live instance).
    assert test["IamInstanceProfile"]["Arn"].endswith("/bakery-dbg")
    assert test["MetadataOptions"]["HttpTokens"] == "required" and test["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    vol_id = test["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert devstack.moto.client("ec2").describe_volumes(VolumeIds=[vol_id])["Volumes"][0]["Encrypted"] is True
    assert image(devstack, ami) is not None and devstack.goiardi.client().client_exists(state["test_chef_node"])
    assert not state["closed"]  # the kept test instance is still the bake's
    proc = bakery(env, ws, catalog, "cleanup", "--role", "dbg")
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(devstack, state_of(ws, "dbg"), ami)
    FaultTable.add("boot-test", "health command fails with `--keep-on-failure`",
                   "bake exits 1; test instance, its Chef identity and the AMI kept, with the cleanup command; "
                   "the bake stays open; `bakery cleanup` then removes all three", "nothing")


def test_a_role_that_opts_out_is_published_untested_and_says_so(devstack, env, instance_runner, tmp_path):
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"legacy": {"boot_test": {"enabled": False}}})
    proc = bakery(env, ws, catalog, "bake", "--role", "legacy", "--release", "7.0")
    assert proc.returncode == 0, proc.stderr
    state = state_of(ws, "legacy")
    assert not boot_test_instances(devstack, state["bake_id"]) and state["test_instance_id"] is None
    assert tags_of(image(devstack, state["amis"][REGION]))["bakery:boot-test"] == "disabled"
    assert "not boot-tested: catalogue key boot_test.enabled is false" in state["stages"]["boot-test"]["message"]
    assert json.loads((ws / "artifacts" / "legacy.json").read_text())["boot_test"] == "disabled"
    assert "not boot-tested" in (ws / "reports" / "summary.html").read_text()


BASE = {"region": "us-east-1", "runlist_bucket": "acme-bakery",
        "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:bakery-alerts",
        "chef": {"server_url": "https://chef.example.com/organizations/acme", "validation_client_name": "v",
                 "validation_key_s3": "s3://acme-bakery/v.pem"}}


@pytest.mark.parametrize(("boot_test", "key", "words"), [
    ({"enable": False}, "boot_test.enable", "did you mean 'enabled'"),
    ({"enabled": "no"}, "boot_test.enabled", "expected true or false"),
    ({"why_run": 1}, "boot_test.why_run", "expected true or false"),
    ({"run_list": []}, "boot_test.run_list", "must not be empty"),
    ({"run_list": ["roles::web"]}, "boot_test.run_list.0", "run list item"),
    ({"command": ""}, "boot_test.command", "non-empty string"),
    ({"command": "curl \x07"}, "boot_test.command", "control characters"),
    ({"timeout": "soon"}, "boot_test.timeout", "expected a duration"),
    ({"instance_type": "big"}, "boot_test.instance_type", "instance type"),
    ("yes", "boot_test", "expected a mapping"),
])
def test_catalogue_validation_names_file_role_and_key(boot_test, key, words):
    data = {"defaults": BASE, "roles": {"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0",
                                                "boot_test": boot_test}}}
    with pytest.raises(CatalogError) as err:
        parse_catalog(data, "bakery.yaml")
    text = str(err.value)
    assert "bakery.yaml" in text and "role 'web'" in text and f"key '{key}'" in text and words in text


def test_catalogue_defaults_merge_per_key_and_bad_input_exits_2(tmp_path, env):
    data = {"defaults": {**BASE, "boot_test": {"timeout": "10m", "command": "curl -fsS http://localhost/"}},
            "roles": {"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0",
                              "boot_test": {"why_run": False}}}}
    role = parse_catalog(data, "bakery.yaml").roles["web"]
    assert role.boot_test.timeout == 600 and role.boot_test.command.startswith("curl") and not role.boot_test.why_run
    assert role.boot_test.enabled and role.boot_test.run_list == ()
    data["defaults"]["boot_test"]["timeout"] = 0
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump(data))
    ws = tmp_path / "ws"
    proc = bakery({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, ws, path, "bake", "--role", "web",
                  "--release", "1.0")
    assert proc.returncode == 2 and "key 'defaults.boot_test.timeout'" in proc.stderr
    assert not ws.exists() or not any(ws.iterdir())


def test_boot_test_user_data_carries_settings_only_as_inert_base64(devstack, tmp_path):
    hostile = "$(touch /tmp/x); `id`; echo '\"'\n</powershell>"
    path = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "web": {"boot_test": {"command": hostile, "run_list": ["recipe[roles::web_smoke]"]}},
        "win": {"platform": "windows", "boot_test": {"command": hostile}}})
    cat = load_catalog(path)
    for name in ("web", "win"):
        text = boot_test_userdata(cat.roles[name], node="bake-x-boot-test-1")
        assert hostile not in text and "touch" not in text and "# bakery:boot-test\n" in text
    scripts = render_role_scripts(cat.roles["web"], tmp_path / "out")
    names = [p.name for p in scripts]
    assert "userdata-boot-test.sh" in names
    out = tmp_path / "out" / "web"
    proc = subprocess.run(["shellcheck", "-s", "bash", "-x", "userdata-boot-test.sh", "firstboot.sh", "bakery-lib.sh"],
                          cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_pass_without_a_registered_chef_client_fails(devstack, tmp_path):
    """The stage believes the tag only with the Chef server's word: a test instance that says passed
    but never registered its client fails the boot test (in process, the instance side played)."""
    role = "bt-unregistered"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {}})
    prepare(devstack, ws, catalog, role, "boot-test")
    ec2 = devstack.moto.client("ec2")
    stop = threading.Event()

    def liar() -> None:  # tags passed, registers nothing
        while not stop.wait(0.1):
            found = ec2.describe_instances(Filters=[{"Name": "tag:bakery:role", "Values": [role]},
                                                    {"Name": "tag:bakery:purpose", "Values": ["boot-test"]},
                                                    {"Name": "instance-state-name", "Values": ["running"]}])
            for inst in (i for r in found["Reservations"] for i in r["Instances"]):
                ec2.create_tags(Resources=[inst["InstanceId"]], Tags=[{"Key": "bakery:boot-test", "Value": "passed"}])

    thread = threading.Thread(target=liar, daemon=True)
    thread.start()
    try:
        result = run_stage(context(devstack, ws, catalog, role), "boot-test", announce=False)
    finally:
        stop.set()
        thread.join(5)
    state = state_of(ws, role)
    assert result.exit_code == 1 and "is not registered" in result.message, result.message
    assert state["boot_test"] == "failed"
    assert tags_of(image(devstack, state["amis"][REGION]))["bakery:boot-test"] == "failed"
    ctx = context(devstack, ws, catalog, role)
    ctx.state = ctx.ws.load(role)
    report = cleanup(ctx)
    assert not report.errors, report.text()
    assert_nothing_left(devstack, state_of(ws, role), state["image_id"])


# --- the first-boot script in test mode, in the sandbox of tests/test_firstboot_linux.py -----------------
# (its stub chef-client records every call: argv, client.rb, -j JSON)

class _FailingUserData(ImdsDouble):
    """IMDS answering 500 for the user data (everything else as usual)."""

    def _lookup(self, path: str) -> tuple[int, str, str]:
        if path == "/latest/user-data":
            return 500, "text/plain", "Internal Server Error"
        return super()._lookup(path)


@pytest.fixture()
def boot_box(tmp_path, aws, alerts):  # noqa: F811
    started: list[ImdsDouble] = []

    def make(user_data: str | None, *, failing: bool = False) -> tuple[Sandbox, str]:
        instance_id = new_instance(aws)
        imds = imds_for(instance_id)
        if failing:
            imds.__class__ = _FailingUserData
        imds.user_data = user_data.encode() if user_data is not None else None
        started.append(imds.start())
        box = Sandbox(tmp_path / instance_id, aws["url"], imds)
        box.install_image(make_role(alerts))
        return box, instance_id

    yield make
    for imds in started:
        imds.stop()


def _test_role(alerts, **boot_test):  # noqa: F811
    role = make_role(alerts)
    return dataclasses.replace(role, boot_test=dataclasses.replace(role.boot_test, **boot_test))


def test_first_boot_in_test_mode_runs_why_run_then_the_command_and_tags_instead_of_alerting(boot_box, alerts,  # noqa: F811
                                                                                            aws):  # noqa: F811
    role = _test_role(alerts, run_list=("recipe[web::smoke]",), command="echo probe-ran >&2; true")
    box, instance_id = boot_box(boot_test_userdata(role, node="bake-web-boot-test-1"))
    proc = box.run([str(box.root / "usr/local/sbin/bakery-firstboot")])
    assert proc.returncode == 0, output(proc)
    (call,) = box.chef_calls()
    assert call.client_rb["node_name"] == "bake-web-boot-test-1"
    assert "--why-run" in call.argv and call.argv[call.argv.index("-o") + 1] == "recipe[web::smoke]"
    assert call.json is not None and "run_list" in call.json  # the S3 run list was read, as in production
    tags = sandbox_tags(aws, instance_id)
    assert tags["bakery:boot-test"] == "passed" and "health command passed" in tags["bakery:boot-test-detail"]
    assert "probe-ran" in output(proc)
    assert box.sentinel.exists() and not (box.root / "etc/chef/validation.pem").exists()
    assert alerts.received() == []  # a test pages nobody


def test_first_boot_in_test_mode_reports_a_chef_failure_by_tag_only(boot_box, alerts, aws):  # noqa: F811
    role = _test_role(alerts, why_run=False)
    box, instance_id = boot_box(boot_test_userdata(role, node="bake-web-boot-test-2"))
    proc = box.run([str(box.root / "usr/local/sbin/bakery-firstboot")], STUB_CHEF_EXIT="4")
    assert proc.returncode == 4, output(proc)
    (call,) = box.chef_calls()
    assert "--why-run" not in call.argv and "-o" not in call.argv  # why_run: false, the S3 run list
    tags = sandbox_tags(aws, instance_id)
    assert tags["bakery:boot-test"] == "failed" and "cinc-client exited 4" in tags["bakery:boot-test-detail"]
    assert alerts.received() == []


def test_an_unreadable_user_data_never_runs_the_first_boot_as_production(boot_box, alerts, aws):  # noqa: F811
    box, instance_id = boot_box("ignored", failing=True)
    (box.bin / "sleep").write_text("#!/bin/sh\nexit 0\n")  # the script's retry pauses: not worth waiting here
    (box.bin / "sleep").chmod(0o755)
    proc = box.run([str(box.root / "usr/local/sbin/bakery-firstboot")])
    assert proc.returncode != 0 and "cannot read the user data" in output(proc)
    assert box.chef_calls() == [] and box.sentinel.exists()
    assert "bakery:boot-test" not in sandbox_tags(aws, instance_id)
