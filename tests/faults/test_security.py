"""Security properties of a real bake (and of ``create-instance``), each checked where AWS, Chef or the
instance itself would show it. These are the points of docs/security.md.

One bake of a role runs for the module: ``bakery bake`` in a subprocess whose AWS endpoint is a
logging proxy (the proxy's request log shows what was asked of EC2, e.g. ``ImdsSupport``, which moto
accepts but does not store), with the real instance runner executing the bake user data in a
sandbox root that stands for the image's disk.

- IMDSv2 required (``HttpTokens=required``, hop limit 1) on the bake instance and on instances of
  ``create-instance`` (from the base AMI and ``--from-ami latest``); ``ImdsSupport=v2.0`` asked for on
  the AMI.
- Volumes encrypted (the RunInstances block device mapping, and the volumes EC2 makes from it).
- No ingress unless the catalogue configures it, and then exactly what it configures.
- The instance role's inline policy: read the role's run list object and the validator key, publish
  to the role's topic, tag only itself with the bootstrap keys; no ``*`` action or resource.
- No secret in user data: no private key, no AWS key, nothing of the validator's or the bakery's key.
- No Chef client key, validator key or client.rb left in the image's root after the bake.
- Chef, Jenkins and AWS credentials never printed, also when they are refused.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.bakes import RELEASE, FaultTable, bakery, cli_env, prepare, read_state
from support.proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROLE = "sec-web"
KEY_MATERIAL = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}|aws_secret_access_key|[A-Za-z0-9+/]{120,}")


def pem_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM: any one of them in a text means the key leaked."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@pytest.fixture(scope="module")
def baked(devstack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One real bake of ROLE: its state, the proxy's request log, the instance's root and user data."""
    tmp = tmp_path_factory.mktemp("security")
    ws = tmp / "ws"
    catalog = devstack.write_catalog(tmp / "bakery.yaml", roles={ROLE: {"platform": "linux"}})
    with FaultProxy(devstack.moto.url) as proxy, devstack.runner(tmp / "instances") as runner:
        proc = bakery(cli_env(devstack, proxy.url), ws, catalog, "bake", "--role", ROLE, "--release", RELEASE)
        assert proc.returncode == 0, proc.stderr
        state = read_state(ws, ROLE)
        result = runner.wait(state["instance_id"])
        assert result["exit_code"] == 0, runner.console(state["instance_id"])
        ec2 = devstack.moto.client("ec2")
        userdata = base64.b64decode(ec2.describe_instance_attribute(
            InstanceId=state["instance_id"], Attribute="userData")["UserData"]["Value"]).decode()
        yield {"state": state, "calls": proxy.calls_since(), "root": runner.root(state["instance_id"]),
               "userdata": userdata, "catalog": catalog, "ws": ws, "output": proc.stdout + proc.stderr,
               "console": runner.console(state["instance_id"])}


def instance(devstack, instance_id: str) -> dict[str, Any]:
    return devstack.moto.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def assert_imdsv2(inst: dict[str, Any]) -> None:
    opts = inst["MetadataOptions"]
    assert opts["HttpTokens"] == "required" and opts["HttpEndpoint"] == "enabled", opts
    assert opts["HttpPutResponseHopLimit"] == 1, opts  # containers on the host cannot reach it


def run_instances_params(calls, tag: str) -> dict[str, Any]:
    found = [c.params for c in calls if c.operation == "RunInstances" and tag in json.dumps(c.params)]
    assert found, f"no RunInstances with {tag!r} in the proxy log"
    return found[-1]


def test_bake_instance_requires_imdsv2_and_the_ami_asks_for_it(devstack, baked):
    assert_imdsv2(instance(devstack, baked["state"]["instance_id"]))
    ami = baked["state"]["amis"][devstack.region]
    modify = [c.params for c in baked["calls"] if c.operation == "ModifyImageAttribute" and c.ok]
    assert {"ImageId": ami, "ImdsSupport.Value": "v2.0"}.items() <= modify[0].items(), modify
    FaultTable.add("security", "IMDSv2 on the bake instance and the AMI",
                   "HttpTokens=required, hop limit 1; ModifyImageAttribute ImdsSupport=v2.0 sent", "—")


def test_volumes_are_encrypted(devstack, baked):
    params = run_instances_params(baked["calls"], baked["state"]["bake_id"])
    assert params["BlockDeviceMapping.1.Ebs.Encrypted"] == "true"
    assert params["BlockDeviceMapping.1.Ebs.DeleteOnTermination"] == "true"
    # moto makes an AMI's snapshot from a fresh unencrypted volume of its own, so the snapshot cannot
    # show it here; on EC2 the snapshots of an encrypted volume are encrypted. The volumes moto does
    # create from these mappings are checked in test_create_instance_requires_imdsv2_and_encrypts.
    FaultTable.add("security", "EBS encryption", "every RunInstances maps the root volume Encrypted=true "
                   "(DeleteOnTermination); the volumes EC2 creates are encrypted", "—")


def test_no_ingress_unless_configured(devstack, baked, tmp_path: Path):
    ec2 = devstack.moto.client("ec2")
    group = ec2.describe_security_groups(GroupIds=[baked["state"]["security_group_id"]])["SecurityGroups"][0]
    assert group["IpPermissions"] == []
    # A role that asks for one rule gets exactly that rule (set up in process, straight to moto).
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"sec-ingress": {
        "platform": "linux", "ingress": [{"port": 443, "cidr": "10.0.0.0/8", "description": "https from VPN"}]}})
    state = prepare(devstack, ws, catalog, "sec-ingress", "iam-role")
    assert state is not None
    group = ec2.describe_security_groups(GroupIds=[state["security_group_id"]])["SecurityGroups"][0]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [("tcp", 443, 443, ["10.0.0.0/8"])]
    FaultTable.add("security", "security group of a role without / with `ingress`",
                   "no ingress rule / exactly the configured rule", "—")


def test_instance_role_policy_is_scoped(devstack, baked):
    iam = devstack.moto.client("iam")
    name = baked["state"]["iam_role_name"]
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == ["bakery-instance"]
    doc = iam.get_role_policy(RoleName=name, PolicyName="bakery-instance")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert all(s["Effect"] == "Allow" for s in doc["Statement"])
    for s in doc["Statement"]:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        assert not any("*" in a for a in actions), s
        assert "*" not in resources, s
    assert by_sid["ReadRunListAndValidatorKey"]["Action"] == "s3:GetObject"
    assert sorted(by_sid["ReadRunListAndValidatorKey"]["Resource"]) == sorted([
        f"arn:aws:s3:::{devstack.bucket}/runlists/{ROLE}.json", f"arn:aws:s3:::{devstack.bucket}/chef/validator.pem"])
    assert by_sid["AlertOnFailure"] == {"Sid": "AlertOnFailure", "Effect": "Allow", "Action": "sns:Publish",
                                        "Resource": devstack.topic_arn}
    tag = by_sid["TagOnlyItself"]
    assert tag["Action"] == "ec2:CreateTags"
    assert tag["Condition"]["StringEquals"] == {"aws:ARN": "${ec2:SourceInstanceARN}"}
    assert tag["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == [
        "bakery:bootstrap", "bakery:bootstrap-detail", "bakery:bootstrap-log", "bakery:boot-test",
        "bakery:boot-test-detail"]
    # The bake's records (inventory, a failed run's log tail): PutObject only, under the role's own prefix.
    assert by_sid["WriteBakeRecords"] == {"Sid": "WriteBakeRecords", "Effect": "Allow", "Action": "s3:PutObject",
                                          "Resource": f"arn:aws:s3:::{devstack.bucket}/bakes/{ROLE}/*"}
    assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
    FaultTable.add("security", "the instance role's inline policy",
                   "s3:GetObject on the run list and validator key, s3:PutObject under `bakes/ROLE/` only, "
                   "sns:Publish on the topic, ec2:CreateTags on itself with the three bootstrap and two boot-test "
                   "keys; no `*` action", "—")


def unpacked(userdata: str) -> str:
    """The bake script the user data carries gzip+base64 (EC2's 16 KiB limit), as the instance unpacks it."""
    m = re.search(r"base64 -d <<'(\w+)'.*?\n(.*?)\1", userdata, re.S)
    assert m, "no packed bake script in the user data"
    return gzip.decompress(base64.b64decode(m.group(2))).decode()


def test_user_data_carries_no_secret(devstack, baked):
    raw = baked["userdata"]
    script = unpacked(raw)
    secrets = [devstack.goiardi.create_validator(devstack.validator_name),
               Path(devstack.goiardi.admin_key_path).read_text()]
    for text in (raw, script):
        assert not KEY_MATERIAL.search(text), KEY_MATERIAL.search(text)
        for pem in secrets:
            assert not any(line in text for line in pem_lines(pem))
    assert "validator.pem" in script  # the validator key is fetched from S3 with the instance role instead
    FaultTable.add("security", "the bake instance's user data scanned for key material",
                   "no private key, AWS key or long base64 block; the validator key is fetched from S3", "—")


def test_no_chef_key_left_in_the_image(devstack, baked):
    root: Path = baked["root"]
    assert (root / "firstboot.txt").is_file()  # the root really is the baked image's disk
    left = [p for p in root.rglob("*") if p.is_file() and (p.suffix == ".pem" or p.name in ("client.rb",
            "first-boot.json")) or (p.is_file() and b"PRIVATE KEY" in p.read_bytes())]
    assert left == [], f"left in the image: {[str(p.relative_to(root)) for p in left]}"
    # The Chef identity really existed during the bake (the stub chef-client wrote its key there) and
    # was removed by the bake script (its console says so; the image keeps only a short summary).
    assert "removing this instance's Chef identity from the image" in baked["console"]
    FaultTable.add("security", "the image's disk after the bake",
                   "no client.pem, validation.pem, client.rb or any private key; firstboot.txt present", "—")


@pytest.mark.parametrize("from_ami", [None, "latest"])
def test_create_instance_requires_imdsv2_and_encrypts(devstack, baked, from_ami: str | None):
    env = cli_env(devstack)
    args = [ROLE, "--catalog", str(baked["catalog"]), "--workspace", str(baked["ws"])]
    if from_ami:
        args += ["--from-ami", from_ami]
    proc = subprocess.run([sys.executable, "-c", "import sys; from bakery_lib.cli import create_instance_main as m; "
                           "sys.exit(m(sys.argv[1:]))", *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    instance_id = proc.stdout.strip().splitlines()[-1]
    try:
        inst = instance(devstack, instance_id)
        assert_imdsv2(inst)
        volumes = devstack.moto.client("ec2").describe_volumes(Filters=[
            {"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
        assert volumes and all(v["Encrypted"] for v in volumes), volumes
        userdata = base64.b64decode(devstack.moto.client("ec2").describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]).decode()
        assert not KEY_MATERIAL.search(userdata)
        if from_ami:
            assert inst["ImageId"] == baked["state"]["amis"][devstack.region]
    finally:
        devstack.moto.client("ec2").terminate_instances(InstanceIds=[instance_id])
    if from_ami:
        FaultTable.add("security", "`create-instance` from the base AMI and `--from-ami latest`",
                       "HttpTokens=required, hop limit 1, encrypted volumes, no key in user data", "—")


def test_chef_and_aws_credentials_never_printed(devstack, tmp_path: Path):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["sec-creds"])
    wrong_key = tmp_path / "wrong.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(wrong_key), "2048"], check=True,
                   capture_output=True)
    aws_secret = "AwsSecretThatMustNeverBePrinted0123456789"
    env = cli_env(devstack, CHEF_CLIENT_KEY=str(wrong_key), AWS_SECRET_ACCESS_KEY=aws_secret)
    knife = tmp_path / "knife.rb"
    knife.write_text(f"chef_server_url '{devstack.goiardi.url}'\nnode_name 'admin'\nclient_key '{wrong_key}'\n")
    ws = tmp_path / "ws"
    runs = [bakery(env, ws, catalog, "stage", "preflight", "--role", "sec-creds", "--release", "1.0"),
            bakery(env, ws, catalog, "--chef-config", str(knife), "stage", "preflight", "--role", "sec-creds",
                   "--release", "1.0"),
            bakery(env, tmp_path / "ws2", catalog, "reap", "--dry-run")]
    secrets = pem_lines(wrong_key.read_text()) + pem_lines(Path(devstack.goiardi.admin_key_path).read_text())
    for proc in runs:
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in text, text
        assert "401" in text and devstack.goiardi.url in text  # the cause is named ...
        assert not [s for s in secrets if s in text] and aws_secret not in text  # ... never the key
    junit = (ws / "reports" / "sec-creds-preflight.xml").read_text()
    assert not [s for s in secrets if s in junit] and aws_secret not in junit
    FaultTable.add("security", "a Chef key the server refuses (env, knife.rb, reap); a distinctive AWS secret",
                   "exit 1 naming the server and HTTP 401; no line of any key, nor the secret, in output or "
                   "JUnit", "—")


def test_jenkins_token_never_printed(tmp_path: Path, devstack):
    from devstack.jenkins_double import (  # only this test needs the Jenkins double
        JenkinsDouble,
        deploy_job_xml,
    )

    token = "JenkinsTokenThatMustNeverBePrinted42"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["web"])
    with JenkinsDouble({"admin": token}) as jenkins:
        jenkins.put_item("deploy-release", deploy_job_xml())  # the upstream job the catalogue names must exist
        for given_token, expect in (("wrong-" + token[:8], 1), (token, 0)):
            env = cli_env(devstack, JENKINS_URL=jenkins.url, JENKINS_USER="admin", JENKINS_API_TOKEN=given_token)
            proc = subprocess.run([sys.executable, "-c", "import sys; from bakery_lib.cli import generate_jobs_main "
                                   "as m; sys.exit(m(sys.argv[1:]))", "--catalog", str(catalog), "--workspace",
                                   str(tmp_path / "ws")], env=env, capture_output=True, text=True, timeout=120)
            text = proc.stdout + proc.stderr
            assert proc.returncode == expect and "Traceback" not in text, text
            assert token not in text and given_token not in text
            if expect:
                assert "HTTP 401" in text
    FaultTable.add("security", "generate-jobs with a wrong / right Jenkins API token",
                   "exit 1 \"refused the credentials (HTTP 401)\" / exit 0; the token never printed", "—")
