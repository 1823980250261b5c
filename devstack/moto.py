"""A moto server (the AWS API double) on a free 127.0.0.1 port, and seeding helpers.

moto runs in its own process (``python -m devstack.moto_server``: moto's server, its EC2 tag look-up
indexed) rather than a thread of the test process, so
its answers do not queue behind the tests' own Python work (the GIL) and a crashing test cannot take
it down. Clients reach it through ``AWS_ENDPOINT_URL``, which boto3 and the AWS CLI v1 in the venv
both honour (checked: awscli 1.46 / botocore 1.4x), so no ``aws`` wrapper is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from typing import Any

from ._proc import LOOPBACK, free_port, stop_process, wait_until

ACCOUNT_ID = "123456789012"  # moto's default account
# Requests a moto started with iam_enforcement answers unauthenticated before enforce_iam(): more than
# any seeding makes, so enforcement starts when the test says, not at a count.
FREE_SEEDING_REQUESTS = 1_000_000
REGION = "us-east-1"
DUMMY_ACCESS_KEY = "testing"
DUMMY_SECRET_KEY = "testing"  # moto accepts any credentials; these are not secrets

# Variables that would make a client read real credentials or go somewhere else: removed from any
# environment built for something that must talk to moto only.
AWS_LEAKS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CA_BUNDLE",
    "AWS_REGION",
)


def aws_env(endpoint_url: str, region: str = REGION) -> dict[str, str]:
    """The variables a boto3/AWS CLI client needs to talk to ``endpoint_url`` and nothing else."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
        "AWS_DEFAULT_REGION": region,
        # No real ~/.aws files are read, and the SDKs never fall back to the instance metadata
        # service (169.254.169.254) for credentials or region.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
    }


def isolated_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) minus credential/endpoint leaks, plus ``extra``."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name in AWS_LEAKS or name.startswith("AWS_ENDPOINT_URL_"):
            del env[name]
    env.update(extra)
    return env


class MotoServer:
    """``with MotoServer() as m:`` -> ``m.url``, ``m.env()``, ``m.client("ec2")``."""

    def __init__(self, *, region: str = REGION, startup_timeout: float = 30, iam_enforcement: bool = False):
        self.region = region
        # moto evaluates the callers' IAM policies once INITIAL_NO_AUTH_ACTION_COUNT requests were made
        # (moto/core/authorization.py): started with a count no seeding reaches, then enforce_iam()
        # resets the count to 0 (moto's /moto-api/reset-auth) once the account and its users exist.
        self.iam_enforcement = iam_enforcement
        self.startup_timeout = startup_timeout
        self.port = 0
        self.url = ""
        self._proc: subprocess.Popen | None = None
        self._log_dir: str | None = None

    @property
    def log_path(self) -> str | None:
        return os.path.join(self._log_dir, "moto.log") if self._log_dir else None

    def start(self) -> MotoServer:
        self._log_dir = tempfile.mkdtemp(prefix="moto-")
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://{LOOPBACK}:{self.port}"
            with open(self.log_path or os.devnull, "ab") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "devstack.moto_server", "-H", LOOPBACK, "-p", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=isolated_env(self._server_env()),
                )
            try:
                wait_until(self._answers, timeout=self.startup_timeout, what=f"moto server on {self.url}",
                           proc=self._proc, log_path=self.log_path, interval=0.1)
                return self
            except RuntimeError:
                stop_process(self._proc)
                if attempt == 2:
                    raise
        return self

    def _server_env(self) -> dict[str, str]:
        # devstack.moto_server (moto's server with its tag look-up indexed) is imported from this checkout.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}
        if self.iam_enforcement:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(FREE_SEEDING_REQUESTS)
        return env

    def enforce_iam(self) -> None:
        """From now on every request must be signed by an IAM user's key and allowed by its policies."""
        if not self.iam_enforcement:
            raise RuntimeError("this moto server was not started with iam_enforcement=True")
        # text/plain: as a form body flask would consume it and moto would read an empty count.
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"moto reset-auth answered {response.status}")

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2) as response:
            return bool(response.status == 200)

    def env(self, region: str | None = None) -> dict[str, str]:
        """The AWS variables for a process that must talk to this moto (see :func:`aws_env`)."""
        return aws_env(self.url, region or self.region)

    def client(self, service: str, region: str | None = None) -> Any:
        """A boto3 client for this moto (test/demo plumbing; product code uses bakery_lib.aws)."""
        from ._boto import client

        return client(service, endpoint_url=self.url, region_name=region or self.region,
                      aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
        if self._log_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def seed_base_image(
    ec2: Any, name: str = "bakery-demo-centos-7-2026", *, description: str = "CentOS 7 (bakery demo base)",
    tags: Mapping[str, str] | None = None, platform: str = "linux",
) -> str:
    """Register a base AMI owned by this account (``owners: [self]``) and return its id.

    Idempotent on the name: an existing image of that name owned by self is returned as is (moto,
    unlike AWS, would accept a duplicate name). A ``windows`` image is made as on AWS: an image
    registered from a snapshot is ``Linux/UNIX`` (the platform comes from the billing product of the
    instance it was made from), so it is created from an instance of one of moto's Amazon Windows
    AMIs and DescribeImages answers ``Platform: windows`` for it, as for a real Windows base.
    """
    found = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
    if found:
        return str(found[0]["ImageId"])
    if platform == "windows":
        image_id = _windows_image(ec2, name, description)
    else:
        image_id = ec2.register_image(
            Name=name, Description=description, Architecture="x86_64", RootDeviceName="/dev/sda1",
            VirtualizationType="hvm", EnaSupport=True,
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1",
                                  "Ebs": {"VolumeSize": 8, "VolumeType": "gp3", "DeleteOnTermination": True}}],
        )["ImageId"]
    all_tags = {"Name": name, **(tags or {})}
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in all_tags.items()])
    return str(image_id)


def _windows_image(ec2: Any, name: str, description: str) -> str:
    # The name filter first: moto renders every one of its 1,300 Amazon images for a platform filter alone.
    amazon = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["Windows_Server-*"]},
                                                             {"Name": "platform", "Values": ["windows"]}])["Images"]
    if not amazon:
        raise RuntimeError("moto offers no Amazon Windows AMI to make a Windows base image from")
    source = sorted(amazon, key=lambda i: i["ImageId"])[0]["ImageId"]
    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1, InstanceType="t3.medium")["Instances"][0]
    image_id = ec2.create_image(InstanceId=instance["InstanceId"], Name=name, Description=description)["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    return str(image_id)
