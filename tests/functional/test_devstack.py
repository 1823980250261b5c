"""The local stand-ins themselves: IMDSv2 double, stub chef-client, instance runner, DevStack seeding.

The runner tests boot moto instances whose user data is a small bash script written here (the real
instance-side scripts are tested elsewhere): it uses IMDSv2 through curl, fetches the validator key
with the real AWS CLI, runs the stub chef-client against goiardi and tags its own instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from bakery_lib.catalog import load_catalog
from devstack import DevStack, ImdsDouble, InstanceRunner, seed_base_image, write_stub_bin
from devstack._proc import free_port
from devstack.ami_layer import AmiLayer
from devstack.hypervisor import Doorbell
from devstack.stack import BASE_IMAGE_NAME


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- IMDS double -------------------------------------------------------------------------------------

def test_imds_requires_a_token() -> None:
    with ImdsDouble(instance_id="i-0123456789abcdef0", region="eu-west-1", image_id="ami-0abc") as imds:
        base = imds.url
        assert http("GET", f"{base}/latest/meta-data/instance-id")[0] == 401
        assert http("PUT", f"{base}/latest/api/token")[0] == 400  # no TTL header
        assert http("PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "0"})[0] == 400
        status, token = http("PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        assert status == 200 and token
        assert http("GET", f"{base}/latest/meta-data/instance-id",
                    {"X-aws-ec2-metadata-token": "forged"})[0] == 401
        auth = {"X-aws-ec2-metadata-token": token}
        assert http("GET", f"{base}/latest/meta-data/instance-id", auth) == (200, "i-0123456789abcdef0")
        assert http("GET", f"{base}/latest/meta-data/placement/region", auth) == (200, "eu-west-1")
        assert http("GET", f"{base}/latest/meta-data/placement/availability-zone", auth) == (200, "eu-west-1a")
        status, doc = http("GET", f"{base}/latest/dynamic/instance-identity/document", auth)
        assert status == 200
        identity = json.loads(doc)
        assert identity["instanceId"] == "i-0123456789abcdef0" and identity["region"] == "eu-west-1"
        assert identity["accountId"] == "123456789012" and identity["imageId"] == "ami-0abc"
        assert "placement/" in http("GET", f"{base}/latest/meta-data/", auth)[1].splitlines()
        assert http("GET", f"{base}/latest/meta-data/nope", auth)[0] == 404
        assert http("PUT", f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60",
                                                         "X-Forwarded-For": "10.1.1.1"})[0] == 403


def test_imds_hands_out_the_instance_role_credentials_botocore_reads(monkeypatch) -> None:
    """The credentials document where EC2 serves it, in the form botocore's IMDS provider takes."""
    from botocore.utils import InstanceMetadataFetcher

    doc = {"Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC", "AccessKeyId": "ASIAEXAMPLE",
           "SecretAccessKey": "secret", "Token": "session", "Expiration": "2099-01-01T00:00:00Z"}
    roles = {"i-1": ("arn:aws:iam::123456789012:instance-profile/bakery-web", "bakery-web", doc)}
    with ImdsDouble(instance_id="i-2", region="us-east-1") as imds:  # no provider: no iam/ at all
        token = http("PUT", f"{imds.url}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1]
        assert http("GET", f"{imds.url}/latest/meta-data/iam/security-credentials/",
                    {"X-aws-ec2-metadata-token": token})[0] == 404
    monkeypatch.setattr(ImdsDouble, "role_credentials", roles.get)
    with ImdsDouble(instance_id="i-1", region="us-east-1") as imds:
        token = http("PUT", f"{imds.url}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1]
        auth = {"X-aws-ec2-metadata-token": token}
        assert http("GET", f"{imds.url}/latest/meta-data/iam/security-credentials/", auth) == (200, "bakery-web")
        info = json.loads(http("GET", f"{imds.url}/latest/meta-data/iam/info", auth)[1])
        assert info["InstanceProfileArn"].endswith("instance-profile/bakery-web")
        creds = InstanceMetadataFetcher(timeout=5, num_attempts=1, env={},
                                        config={"ec2_metadata_service_endpoint": imds.url}).retrieve_iam_role_credentials()
        assert (creds["access_key"], creds["secret_key"], creds["token"]) == ("ASIAEXAMPLE", "secret", "session")


def test_imds_token_expires() -> None:
    with ImdsDouble(instance_id="i-1", region="us-east-1") as imds:
        _, token = http("PUT", f"{imds.url}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "1"})
        assert http("GET", f"{imds.url}/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": token})[0] == 200
        time.sleep(1.1)
        assert http("GET", f"{imds.url}/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": token})[0] == 401


# --- stub chef-client, run directly ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stub_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stub_bin(tmp_path_factory.mktemp("stub-bin"))


def sandbox(tmp_path: Path, devstack: DevStack, node: str) -> Path:
    """An instance root with client.rb (real-image paths) and the validator key, as user data makes it."""
    root = tmp_path / "root"
    (root / "etc/chef").mkdir(parents=True)
    (root / "etc/chef/validation.pem").write_text(devstack.goiardi.create_validator(devstack.validator_name))
    (root / "etc/chef/client.rb").write_text(textwrap.dedent(f"""\
        chef_server_url "{devstack.goiardi.url}"
        node_name "{node}"
        validation_client_name "{devstack.validator_name}"
        validation_key "/etc/chef/validation.pem"
        client_key '/etc/chef/client.pem'
        """))
    return root


def chef_client(stub_bin: Path, root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {"PATH": f"{stub_bin}:/usr/bin:/bin", "BAKERY_ROOT": str(root), **env}
    return subprocess.run(["chef-client", *args], env=full_env, cwd=root, capture_output=True, text=True,
                          timeout=60)


def stub_log(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "var/log/stub-chef-client.jsonl").read_text().splitlines()]


def test_stub_chef_client_registers_then_persists_json_run_list(devstack: DevStack, stub_bin: Path,
                                                               tmp_path: Path) -> None:
    node = unique("node")
    root = sandbox(tmp_path, devstack, node)
    (root / "first-boot.json").write_text(json.dumps({"run_list": ["recipe[roles::web_launch]"]}))
    proc = chef_client(stub_bin, root, "-j", "/first-boot.json", "--once")
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/chef/client.pem").stat().st_mode & 0o777 == 0o600
    admin = devstack.goiardi.client()
    assert admin.client_exists(node)
    saved = admin.request("GET", f"/nodes/{node}")
    assert saved["run_list"] == ["recipe[roles::web_launch]"]
    assert saved["automatic"]["recipes"] == ["roles::web_launch"]
    assert stub_log(root)[-1] == {**stub_log(root)[-1], "node_name": node, "ok": True, "registered": True,
                                  "run_list": ["recipe[roles::web_launch]"]}

    # Second run: already registered (client.pem present), -o overrides this run only.
    proc = chef_client(stub_bin, root, "-o", "recipe[roles::other] , recipe[roles::web_launch]")
    assert proc.returncode == 0, proc.stderr
    saved = admin.request("GET", f"/nodes/{node}")
    assert saved["run_list"] == ["recipe[roles::web_launch]"]  # not replaced by the override
    assert saved["automatic"]["recipes"] == ["roles::other", "roles::web_launch"]
    assert stub_log(root)[-1]["registered"] is False


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["-o", "recipe[fail]"], {}, "recipe[fail] failed"),
    (["-o", "recipe[roles::web_ami]"], {"BAKERY_STUB_CHEF_FAIL": "1"}, "BAKERY_STUB_CHEF_FAIL=1"),
    (["-o", "recipe[missingcookbook::default]"], {}, "412"),
])
def test_stub_chef_client_failures_exit_1_after_registering(devstack: DevStack, stub_bin: Path, tmp_path: Path,
                                                            args: list[str], env: dict, expected: str) -> None:
    node = unique("node")
    root = sandbox(tmp_path, devstack, node)
    proc = chef_client(stub_bin, root, *args, **env)
    assert proc.returncode == 1
    assert "FATAL" in proc.stderr and expected in proc.stderr
    assert devstack.goiardi.client().client_exists(node)  # registered before failing, like chef-client
    assert stub_log(root)[-1]["ok"] is False


def test_stub_chef_client_unreachable_or_stale_client(devstack: DevStack, stub_bin: Path, tmp_path: Path) -> None:
    node = unique("node")
    root = sandbox(tmp_path, devstack, node)
    config = root / "etc/chef/client.rb"
    dead = f"http://127.0.0.1:{free_port()}"
    config.write_text(config.read_text().replace(devstack.goiardi.url, dead))
    proc = chef_client(stub_bin, root, "-o", "recipe[roles::web_ami]")
    assert proc.returncode == 1 and "unreachable" in proc.stderr and dead in proc.stderr

    # A client of that name already exists and we have no key for it: 409, as from a real server.
    devstack.goiardi.client().create_client(node)
    config.write_text(config.read_text().replace(dead, devstack.goiardi.url))
    proc = chef_client(stub_bin, root, "-o", "recipe[roles::web_ami]")
    assert proc.returncode == 1 and "409" in proc.stderr


def test_stub_system_commands_do_nothing_but_record(stub_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.run(["systemctl", "enable", "bakery-firstboot.service"], capture_output=True, text=True,
                          env={"PATH": f"{stub_bin}:/usr/bin:/bin", "BAKERY_ROOT": str(tmp_path)})
    assert proc.returncode == 0
    assert (tmp_path / "var/log/stub-commands.log").read_text() == "systemctl enable bakery-firstboot.service\n"


# --- instance runner -----------------------------------------------------------------------------------

BAKE_USER_DATA = """#!/bin/bash
set -euo pipefail
TOKEN=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$BAKERY_IMDS_URL/latest/api/token")
md() { curl -sf -H "X-aws-ec2-metadata-token: $TOKEN" "$BAKERY_IMDS_URL/latest/$1"; }
ID=$(md meta-data/instance-id)
echo "booted $ID in $(md meta-data/placement/region)"
mkdir -p "$BAKERY_ROOT/etc/chef"
aws s3 cp --only-show-errors s3://@BUCKET@/chef/validator.pem "$BAKERY_ROOT/etc/chef/validation.pem"
cat > "$BAKERY_ROOT/etc/chef/client.rb" <<EOF
chef_server_url "@CHEF_URL@"
node_name "@NODE@"
validation_client_name "@VALIDATOR@"
validation_key "/etc/chef/validation.pem"
client_key "/etc/chef/client.pem"
EOF
@EXTRA@
if chef-client -o '@RUN_LIST@'; then result=succeeded; else result=failed; fi
aws ec2 create-tags --resources "$ID" --tags "Key=bakery:bootstrap,Value=$result"
[ "$result" = succeeded ]
"""


def user_data(devstack: DevStack, node: str, run_list: str = "recipe[roles::web_ami]", extra: str = "") -> str:
    values = {"@BUCKET@": devstack.bucket, "@CHEF_URL@": devstack.goiardi.url, "@NODE@": node,
              "@VALIDATOR@": devstack.validator_name, "@RUN_LIST@": run_list, "@EXTRA@": extra}
    text = BAKE_USER_DATA
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def launch(devstack: DevStack, image_id: str, user_data_text: str | None, **tags: str) -> str:
    """An instance launched by hand, tagged as this test's (the runner boots only its own test's)."""
    kwargs = {"UserData": user_data_text} if user_data_text is not None else {}
    tags = {**devstack.owner_tags(), **tags}
    tag_spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    return devstack.moto.client("ec2").run_instances(
        ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.medium",
        TagSpecifications=tag_spec if tags else [], **kwargs)["Instances"][0]["InstanceId"]


def instance_tags(devstack: DevStack, instance_id: str) -> dict[str, str]:
    inst = devstack.moto.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


def test_runner_runs_bake_user_data_that_registers_and_tags(devstack: DevStack,
                                                             instance_runner: InstanceRunner) -> None:
    node = unique("bake-web")
    iid = launch(devstack, devstack.base_image_id, user_data(devstack, node), **{"bakery:purpose": "bake"})
    result = instance_runner.wait(iid, timeout=60)
    console = instance_runner.console(iid)
    assert result["kind"] == "bake" and result["exit_code"] == 0, console
    assert f"booted {iid} in us-east-1" in console
    assert instance_tags(devstack, iid)["bakery:bootstrap"] == "succeeded"
    admin = devstack.goiardi.client()
    assert admin.node_exists(node) and admin.client_exists(node)
    root = Path(result["root"])
    assert (root / "etc/chef/client.pem").is_file()
    assert stub_log(root)[-1]["run_list"] == ["recipe[roles::web_ami]"]


def test_runner_failing_run_list(devstack: DevStack, instance_runner: InstanceRunner) -> None:
    node = unique("bake-broken")
    iid = launch(devstack, devstack.base_image_id, user_data(devstack, node, "recipe[roles::fail]"),
                 **{"bakery:purpose": "bake"})
    result = instance_runner.wait(iid, timeout=60)
    assert result["exit_code"] == 1
    assert "FATAL: RuntimeError: recipe[roles::fail] failed" in instance_runner.console(iid)
    assert instance_tags(devstack, iid)["bakery:bootstrap"] == "failed"
    assert devstack.goiardi.client().client_exists(node)


FIRSTBOOT_INIT = r"""mkdir -p "$BAKERY_ROOT/etc/init.d"
cat > "$BAKERY_ROOT/etc/init.d/bakery-firstboot" <<'INIT'
#!/bin/bash
# tiny stand-in for the real first-boot init script
[ "$1" = start ] || exit 0
[ -f "$BAKERY_ROOT/firstboot.txt" ] || { echo "no firstboot.txt: nothing to do"; exit 0; }
TOKEN=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$BAKERY_IMDS_URL/latest/api/token")
ID=$(curl -sf -H "X-aws-ec2-metadata-token: $TOKEN" "$BAKERY_IMDS_URL/latest/meta-data/instance-id")
echo "first boot of $ID" > "$BAKERY_ROOT/var/firstboot-ran"
aws ec2 create-tags --resources "$ID" --tags Key=firstboot,Value=done
rm -f "$BAKERY_ROOT/firstboot.txt"
INIT
chmod 755 "$BAKERY_ROOT/etc/init.d/bakery-firstboot"
mkdir -p "$BAKERY_ROOT/var"
echo baked > "$BAKERY_ROOT/var/baked-marker"
touch "$BAKERY_ROOT/firstboot.txt"
"""


def test_runner_first_boot_from_baked_ami(devstack: DevStack, instance_runner: InstanceRunner) -> None:
    ec2 = devstack.moto.client("ec2")
    bake_id = uuid.uuid4().hex[:12]
    node = unique("bake-fb")
    bake = launch(devstack, devstack.base_image_id, user_data(devstack, node, extra=FIRSTBOOT_INIT),
                  **{"bakery:purpose": "bake", "bakery:bake-id": bake_id})
    bake_result = instance_runner.wait(bake, timeout=60)
    assert bake_result["exit_code"] == 0, instance_runner.console(bake)
    ec2.stop_instances(InstanceIds=[bake])
    image_id = ec2.create_image(InstanceId=bake, Name=f"fb-{bake_id}", TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": "bakery:bake-id", "Value": bake_id}]}])["ImageId"]
    ec2.terminate_instances(InstanceIds=[bake])

    booted = launch(devstack, image_id, None)
    result = instance_runner.wait(booted, timeout=60)
    console = instance_runner.console(booted)
    assert result["kind"] == "firstboot" and result["exit_code"] == 0, console
    assert result["steps"] == [{"step": "firstboot", "exit_code": 0}]
    root = Path(result["root"])
    assert (root / "var/baked-marker").read_text() == "baked\n"  # the bake's root was copied
    assert (root / "var/firstboot-ran").read_text() == f"first boot of {booted}\n"
    assert not (root / "firstboot.txt").exists()
    assert (Path(bake_result["root"]) / "firstboot.txt").exists()  # the image itself is untouched
    assert instance_tags(devstack, booted)["firstboot"] == "done"


def test_runner_skips_windows_and_leaves_older_instances_alone(devstack: DevStack, tmp_path: Path) -> None:
    before = launch(devstack, devstack.base_image_id, "#!/bin/bash\ntouch \"$BAKERY_ROOT/ran\"\n")
    with devstack.runner(tmp_path / "instances") as runner:
        # Another test's instance (its owner tag is not this test's), launched first: never booted.
        foreign = launch(devstack, devstack.base_image_id, "#!/bin/bash\ntouch \"$BAKERY_ROOT/ran\"\n",
                         **{"devstack:test": "another-test"})
        windows = launch(devstack, devstack.windows_image_id, "<powershell>\nWrite-Host hi\n</powershell>")
        plain = launch(devstack, devstack.base_image_id, "#!/bin/bash\necho \"root is $BAKERY_ROOT\"\nexit 3\n")
        assert runner.wait(windows, timeout=30)["kind"] == "skipped"
        result = runner.wait(plain, timeout=30)
        assert result["kind"] == "launch" and result["exit_code"] == 3
        assert f"root is {result['root']}" in runner.console(plain)
        assert before not in runner.results and foreign not in runner.results
    assert not (tmp_path / "instances" / before).exists() and not (tmp_path / "instances" / foreign).exists()


def test_runner_copes_with_terminated_instances_and_boot_delay(devstack: DevStack, tmp_path: Path) -> None:
    ec2 = devstack.moto.client("ec2")
    with devstack.runner(tmp_path / "instances", boot_delay=1.0) as runner:
        seen_then_gone = launch(devstack, devstack.base_image_id, "#!/bin/bash\necho hi\n")
        gone_at_once = launch(devstack, devstack.base_image_id, "#!/bin/bash\necho hi\n")
        ec2.terminate_instances(InstanceIds=[gone_at_once])
        ok = launch(devstack, devstack.base_image_id, "#!/bin/bash\necho hi\n")
        deadline = time.monotonic() + 10
        while seen_then_gone not in runner.results and time.monotonic() < deadline:
            time.sleep(0.02)  # wait until the runner has seen it running (it is now in its boot delay)
        ec2.terminate_instances(InstanceIds=[seen_then_gone])
        result = runner.wait(ok, timeout=30)
        assert result["exit_code"] == 0 and "hi\n" in runner.console(ok)
        assert runner.wait(seen_then_gone, timeout=30)["kind"] != "error"
        assert runner.results.get(gone_at_once, {}).get("kind") != "error"
        assert runner.errors == []


def waiting_doorbell(devstack: DevStack) -> tuple[Doorbell, int, list[int | None], threading.Thread]:
    """A doorbell on the layer, its count, and a thread waiting (up to 60 s) for the count to pass it."""
    doorbell = Doorbell(devstack.moto.url)
    seen = doorbell.count()
    assert seen is not None
    answers: list[int | None] = []
    waiter = threading.Thread(target=lambda: answers.append(doorbell.wait(seen, timeout=60)))
    waiter.start()
    return doorbell, seen, answers, waiter


def test_the_doorbell_rings_for_a_state_change_and_not_for_a_describe(devstack: DevStack) -> None:
    """The runners wait on the layer's count of instance state changes (devstack.hypervisor.Doorbell):
    a launch moves it past what a waiter had seen; a Describe does not."""
    layer = AmiLayer(devstack.moto.moto_url)  # what the layer counts, on a layer of its own
    for action in ("DescribeInstances", "CreateTags", "StopInstances", "DescribeImages", "TerminateInstances"):
        layer.after(action, "us-east-1", {}, 200, b"")
    assert layer.instance_changes == 2 and layer.wait_instance_changes(1, 0) == 2
    doorbell, seen, answers, waiter = waiting_doorbell(devstack)
    iid = launch(devstack, devstack.base_image_id, None, **{"devstack:test": "no-runner"})
    devstack.moto.client("ec2").terminate_instances(InstanceIds=[iid])
    waiter.join(60)
    assert answers and answers[0] is not None and answers[0] > seen  # woken by the launch, not the clock
    assert (doorbell.count() or 0) >= seen + 2  # RunInstances, then TerminateInstances


def test_the_doorbell_closes_at_once_and_is_silent_without_a_layer(devstack: DevStack) -> None:
    doorbell, seen, answers, waiter = waiting_doorbell(devstack)
    doorbell.close()  # what a runner's stop() does: its polling thread is not held for the wait
    waiter.join(20)
    assert not waiter.is_alive() and answers == [None]
    assert doorbell.count() is None
    # A plain moto (no layer) answers 404: no count, and the runner polls on its clock instead.
    bare = Doorbell(devstack.moto.moto_url)
    assert bare.count() is None and bare.wait(0, timeout=30) is None
    assert Doorbell(f"http://127.0.0.1:{free_port()}").count() is None  # nothing listening


# --- DevStack ---------------------------------------------------------------------------------------------

def test_devstack_seeds_and_writes_a_valid_catalogue(devstack: DevStack, tmp_path: Path) -> None:
    path = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {}, "reporting": {"platform": "windows"}},
                                  bootstrap_timeout="2m", chef={"client_version": "18.4"})
    catalog = load_catalog(path)
    web = catalog.roles["web"]
    assert web.chef.server_url == devstack.goiardi.url and web.chef.client_version == "18.4"
    assert web.runlist_bucket == devstack.bucket and web.bootstrap_timeout == 120
    assert web.alert_topic_arn == "arn:aws:sns:us-east-1:123456789012:bakery-alerts"
    assert web.base_ami.name == "bakery-demo-centos-*"
    assert catalog.roles["reporting"].platform == "windows"

    ec2 = devstack.moto.client("ec2")
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [web.base_ami.name]}])["Images"]
    assert [i["ImageId"] for i in images] == [devstack.base_image_id]
    assert seed_base_image(ec2, BASE_IMAGE_NAME) == devstack.base_image_id  # idempotent
    s3 = devstack.moto.client("s3")
    pem = s3.get_object(Bucket=devstack.bucket, Key="chef/validator.pem")["Body"].read().decode()
    assert pem == devstack.goiardi.create_validator(devstack.validator_name)
    topics = devstack.moto.client("sns").list_topics()["Topics"]
    assert {"TopicArn": devstack.topic_arn} in topics
    assert devstack.goiardi.client().cookbook_versions("roles") == ["0.1.0"]
    assert devstack.env["CHEF_CLIENT_KEY"] == devstack.goiardi.admin_key_path
    assert devstack.env["AWS_ENDPOINT_URL"] == devstack.moto.url


def test_aws_cli_talks_to_moto_only(aws_env: dict[str, str], moto_server) -> None:
    aws = os.path.join(os.path.dirname(sys.executable), "aws")
    proc = subprocess.run([aws, "sts", "get-caller-identity", "--output", "json"], env=aws_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Account"] == "123456789012"
    assert aws_env["AWS_CONFIG_FILE"] == os.devnull and "AWS_PROFILE" not in aws_env


# --- issue 12: reboots during a Linux converge, the Windows sysprep sequence ------------------------------


def _role(devstack: DevStack, name: str, platform: str = "linux"):  # type: ignore[no-untyped-def]
    from bakery_lib.catalog import parse_catalog  # the catalogue is the product's, pointed at this stack

    return parse_catalog(devstack.catalog_data({name: {"platform": platform}}), "devstack.yaml").roles[name]


def test_runner_reboots_a_linux_bake_whose_converge_asks_for_it(devstack: DevStack, tmp_path: Path) -> None:
    from bakery_lib.userdata import bake_userdata  # the real bake script, end to end

    bake_id = uuid.uuid4().hex[:12]
    role = _role(devstack, "rebooter")
    text = bake_userdata(role, bake_id=bake_id, release="1.0")
    with devstack.runner(tmp_path / "instances", extra_env={"BAKERY_STUB_CHEF_REBOOT_EXIT": "35"}) as runner:
        iid = launch(devstack, devstack.base_image_id, text,
                     **{"bakery:purpose": "bake", "bakery:bake-id": bake_id})
        result = runner.wait(iid, timeout=120)
    console = runner.console(iid)
    assert result["exit_code"] == 0 and result["reboots"] == 1, console
    assert [s["step"] for s in result["steps"]] == ["user-data", "reboot-1"]
    assert "chef-client exited 35 (reboot requested)" in console or "cinc-client exited 35" in console
    tags = instance_tags(devstack, iid)
    assert tags["bakery:bootstrap"] == "succeeded", tags
    root = Path(result["root"])
    runs = stub_log(root)
    assert [r.get("exit", 0) for r in runs] == [35, 0]  # converged again after the reboot
    assert not (root / "etc/systemd/system/bakery-bake-resume.service").exists()
    assert (root / "firstboot.txt").exists()
    assert devstack.goiardi.client().node_exists(f"bake-rebooter-{bake_id}")


def test_runner_plays_the_windows_bake_generalizing_then_stopped(devstack: DevStack, tmp_path: Path) -> None:
    from bakery_lib.userdata import bake_userdata  # the real (packed) Windows bake user data

    ec2 = devstack.moto.client("ec2")
    role = _role(devstack, "reporting", "windows")
    good = bake_userdata(role, bake_id=uuid.uuid4().hex[:12], release="1.0")
    blocking = good.replace("exit $LASTEXITCODE", "ec2launch sysprep --clean --block\nexit $LASTEXITCODE")
    with devstack.runner(tmp_path / "instances") as runner:
        iid = launch(devstack, devstack.windows_image_id, good, **{"bakery:purpose": "bake"})
        bad = launch(devstack, devstack.windows_image_id, blocking, **{"bakery:purpose": "bake"})
        result = runner.wait(iid, timeout=60)
        refused = runner.wait(bad, timeout=60)
    assert result["kind"] == "windows-bake" and result["exit_code"] == 0, runner.console(iid)
    tags = instance_tags(devstack, iid)
    assert tags["bakery:bootstrap"] == "generalizing" and "sysprep started" in tags["bakery:bootstrap-detail"]
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "stopped"  # stopped by itself (sysprep --shutdown), not by the bakery
    # Phase 1 really converged: the bake's node and client were registered with the Chef server.
    node = f"bake-reporting-{good.split('bake-reporting-', 1)[1].split(chr(39), 1)[0]}"
    assert devstack.goiardi.client().node_exists(node)
    assert not (Path(result["root"]) / "chef/validation.pem").exists()
    assert refused["exit_code"] == 1
    assert "--block" in instance_tags(devstack, bad)["bakery:bootstrap-detail"]
    assert instance_tags(devstack, bad)["bakery:bootstrap"] == "failed"


def test_runner_plays_a_failing_sysprep(devstack: DevStack, tmp_path: Path) -> None:
    from bakery_lib.userdata import bake_userdata  # the real Windows bake user data

    role = _role(devstack, "reporting", "windows")
    with devstack.runner(tmp_path / "instances", windows_sysprep_exit=5) as runner:
        iid = launch(devstack, devstack.windows_image_id, bake_userdata(role, bake_id="b1", release="1"),
                     **{"bakery:purpose": "bake"})
        runner.wait(iid, timeout=60)
    tags = instance_tags(devstack, iid)
    assert tags["bakery:bootstrap"] == "failed" and "ec2launch sysprep exited 5" in tags["bakery:bootstrap-detail"]
    inst = devstack.moto.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "running"


def test_windows_and_rebooting_linux_roles_bake_end_to_end(devstack: DevStack, tmp_path: Path) -> None:
    """`bakery bake` as Jenkins runs it: a Windows role through generalizing -> stopped by itself, and a
    Linux role whose converge asks for a reboot, both to an available AMI."""
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "reporting": {"platform": "windows"}, "rebooter": {"platform": "linux"}})
    env = {**devstack.env, "BAKERY_POLL_INTERVAL": "0.2"}
    with devstack.runner(tmp_path / "instances", extra_env={"BAKERY_STUB_CHEF_REBOOT_EXIT": "35"}) as runner:
        proc = subprocess.run([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog),
                               "bake", "--all", "--release", "12.0", "--jobs", "2"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    amis = json.loads((ws / "artifacts" / "amis.json").read_text())["amis"]
    assert set(amis) == {"reporting", "rebooter"}
    ec2 = devstack.moto.client("ec2")
    for role, regions in amis.items():
        image = ec2.describe_images(ImageIds=[regions["us-east-1"]])["Images"][0]
        assert image["State"] == "available"
        assert {t["Key"]: t["Value"] for t in image["Tags"]}["bakery:role"] == role
    kinds = {r["kind"]: r for r in runner.results.values()}
    assert kinds["windows-bake"]["exit_code"] == 0 and kinds["bake"]["reboots"] == 1
    windows = next(iid for iid, r in runner.results.items() if r["kind"] == "windows-bake")
    assert "exited 35: exit 3010, EC2Launch v2 reboots and runs the bake again" in runner.console(windows)


def test_runner_windows_bake_with_a_failing_converge_tags_failed_without_sysprep(devstack: DevStack,
                                                                                 tmp_path: Path) -> None:
    from bakery_lib.catalog import parse_catalog  # the product's catalogue, pointed at this stack
    from bakery_lib.userdata import bake_userdata  # the real Windows bake user data

    data = devstack.catalog_data({"broken": {"platform": "windows", "run_lists": {"ami": ["recipe[roles::fail]"]}}})
    role = parse_catalog(data, "devstack.yaml").roles["broken"]
    with devstack.runner(tmp_path / "instances") as runner:
        iid = launch(devstack, devstack.windows_image_id, bake_userdata(role, bake_id="f1", release="1"),
                     **{"bakery:purpose": "bake"})
        result = runner.wait(iid, timeout=60)
    assert result["exit_code"] == 1
    tags = instance_tags(devstack, iid)
    assert tags["bakery:bootstrap"] == "failed"
    assert tags["bakery:bootstrap-detail"] == "cinc-client exited 1 running the ami run list recipe[roles::fail]"
    inst = devstack.moto.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "running"  # no sysprep, no shutdown
