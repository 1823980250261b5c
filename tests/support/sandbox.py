"""The first-boot sandbox: a temp ``BAKERY_ROOT``, the real ``aws`` CLI against moto, an IMDSv2 double
serving the instance role's credentials, the stub ``chef-client`` of ``tests/support/scripts/`` on PATH,
and alerts read back through a real SNS topic -> SQS queue subscription.

Used by the first-boot tests and the boot-test tests (tests/functional); their fixtures (``aws``,
``alerts``, ``sandbox_factory``) are in ``tests/functional/conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery_lib.catalog import RoleSpec, parse_catalog
from bakery_lib.userdata import instance_files
from devstack import awscli_zygote
from devstack.imds import ImdsDouble

SCRIPTS = Path(__file__).resolve().parent / "scripts"
VENV_BIN = Path(sys.executable).parent
REGION = "us-east-1"
BUCKET = "bakery-firstboot-tests"
VALIDATOR_KEY = "chef/validator.pem"
VALIDATOR_PEM = "-----BEGIN RSA PRIVATE KEY-----\nnot a real validator key\n-----END RSA PRIVATE KEY-----\n"
INSTANCE_ROLE = "bakery-test-instance-role"
WEB_RUN_LIST = {"run_list": ["role[web]", "recipe[web::firstboot]"], "web": {"port": 8080}}



# --- AWS side: one moto per session (conftest), our bucket + a topic/queue pair per test ------------


@dataclass
class Alerts:
    """An SNS topic with an SQS queue subscribed: what an on-call mailbox would receive."""

    topic_arn: str
    sqs: Any
    queue_url: str

    def received(self) -> list[dict[str, Any]]:
        messages = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            if not got.get("Messages"):
                return messages
            for m in got["Messages"]:
                messages.append(json.loads(m["Body"]))  # the SNS envelope: Subject, Message, TopicArn
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])


def make_role(alerts: Alerts, name: str = "web", **chef: Any) -> RoleSpec:
    catalogue = {
        "defaults": {
            "region": REGION,
            "runlist_bucket": BUCKET,
            "alert_topic_arn": alerts.topic_arn,
            "chef": {
                "server_url": "https://chef.example.com/organizations/acme",
                "validation_client_name": "acme-validator",
                "validation_key_s3": f"s3://{BUCKET}/{VALIDATOR_KEY}",
                "client_version": "18.4.12",
                **chef,
            },
        },
        "roles": {name: {"platform": "linux", "base_ami": "ami-0123456789abcdef0",
                         "run_lists": {"ami": [f"recipe[roles::{name}_ami]", "recipe[base]"]}}},
    }
    return parse_catalog(catalogue, "test-catalogue.yaml").roles[name]


def new_instance(aws: dict[str, Any]) -> str:
    # Any image will do; a name filter spares moto rendering all 1,300 of its Amazon images (~2 CPU-s).
    images = aws["ec2"].describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}])
    image_id = images["Images"][0]["ImageId"]
    return aws["ec2"].run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]


def instance_tags(aws: dict[str, Any], instance_id: str) -> dict[str, str]:
    found = aws["ec2"].describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in found.get("Tags", [])}


# --- the instance side: IMDS double, stub chef-client, sandbox root ---------------------------------


def imds_for(instance_id: str) -> ImdsDouble:
    creds = {
        "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIAINSTANCEROLE", "SecretAccessKey": "instance",
        "Token": "instance-session-token", "LastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 3600)),
    }
    return ImdsDouble(instance_id=instance_id, region=REGION,
                      extra={f"iam/security-credentials/{INSTANCE_ROLE}": json.dumps(creds)})


@dataclass
class ChefCall:
    argv: list[str]
    client_rb: dict[str, str]
    json: dict[str, Any] | None
    validator_mode: str | None
    name: str = "chef-client"
    license_key: str = ""


@dataclass
class Sandbox:
    """One simulated instance: its ``/`` (BAKERY_ROOT), PATH, IMDS and the stub chef-client's records."""

    tmp: Path
    aws_url: str
    imds: ImdsDouble
    chef_on_path: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # The scripts' pauses between tries pass at once (their log says how long each would be).
    instant_sleep: bool = False

    def __post_init__(self) -> None:
        self.root = self.tmp / "root"
        self.bin = self.tmp / "bin"
        self.records = self.tmp / "chef-records"
        for d in (self.root, self.bin, self.tmp / "home"):
            d.mkdir(parents=True, exist_ok=True)
        if self.chef_on_path:
            for name in ("chef-client", "cinc-client"):
                (self.bin / name).symlink_to(SCRIPTS / "chef-client")
        # `reboot` inside the sandbox only records the request (the test then plays the boot).
        (self.bin / "reboot").write_text('#!/bin/sh\necho "$0 $*" >>"$STUB_CHEF_DIR/reboots"\n')
        (self.bin / "reboot").chmod(0o755)
        if self.instant_sleep:
            (self.bin / "sleep").write_text("#!/bin/sh\nexit 0\n")
            (self.bin / "sleep").chmod(0o755)

    @property
    def sentinel(self) -> Path:
        return self.root / "firstboot.txt"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            # The real AWS CLI, forked warm per call (devstack.awscli_zygote), ahead of the venv's.
            "PATH": os.pathsep.join([str(self.bin), *awscli_zygote.path_dirs(), str(VENV_BIN), "/usr/bin", "/bin"]),
            "HOME": str(self.tmp / "home"),
            "LANG": "C.UTF-8",
            "BAKERY_ROOT": str(self.root),
            "BAKERY_IMDS_URL": self.imds.url,
            "AWS_ENDPOINT_URL": self.aws_url,
            # No credentials in the environment: the CLI must get the instance role's from IMDS.
            # Set here too (the scripts derive it from BAKERY_IMDS_URL) so that nothing can ever
            # fall back to 169.254.169.254.
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "STUB_CHEF_DIR": str(self.records),
            **self.extra_env,
            **extra,
        }

    def popen(self, argv: list[str], **extra: str) -> subprocess.Popen:
        return subprocess.Popen(argv, env=self.env(**extra), cwd=self.tmp, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, argv: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env(**extra), cwd=self.tmp, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=180)

    def run_userdata(self, text: str, **extra: str) -> subprocess.CompletedProcess:
        script = self.tmp / "user-data"
        script.write_text(text)
        script.chmod(0o700)
        return self.run([str(script)], **extra)

    def install_image(self, role: RoleSpec) -> None:
        """Lay the first-boot files into the root as the bake installs them, plus the sentinel."""
        for path, content in instance_files(role).items():
            dest = self.root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(content)
            dest.chmod(0o755 if "/sbin/" in path or "/init.d/" in path else 0o644)
        self.sentinel.write_text("first boot pending\n")

    def chef_calls(self) -> list[ChefCall]:
        calls = []
        for d in sorted((self.records / "calls").glob("*")) if (self.records / "calls").exists() else []:
            rb = {}
            for line in (d / "client.rb").read_text().splitlines():
                key, _, value = line.partition(" ")
                rb[key] = value.strip("'")
            calls.append(ChefCall(
                argv=(d / "argv").read_text().splitlines(),
                client_rb=rb,
                json=json.loads((d / "json").read_text()) if (d / "json").exists() else None,
                validator_mode=(d / "validator-mode").read_text().strip() if (d / "validator-mode").exists()
                else None,
                name=(d / "name").read_text().strip(),
                license_key=(d / "license-key").read_text(),
            ))
        return calls


def firstboot(box: Sandbox) -> list[str]:
    return [str(box.root / "usr/local/sbin/bakery-firstboot")]


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr
