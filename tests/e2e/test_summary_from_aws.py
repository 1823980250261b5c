"""``bakery summary --release V --from-aws`` as an operator on another machine runs it: an empty
workspace, the catalogue (for its regions) and the account. The console script runs in a subprocess
with AWS behind the fault proxy, whose call log shows it only reads.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

from support.bakes import cli_env

READ_ONLY = ("Describe", "Get")


def _seed(devstack, role: str, release: str) -> str:
    """An AMI as publish leaves it: tagged, shared, deprecated at a date, protected, and ``latest``."""
    ec2, ssm = devstack.moto.client("ec2", "us-east-1"), devstack.moto.client("ssm", "us-east-1")
    base = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]
    source = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    tags = {"bakery:role": role, "bakery:release": release, "bakery:bake-id": "20260101000000-abcdef",
            "bakery:base-ami": base, "bakery:created-by": "bakery", "bakery:boot-test": "passed",
            "bakery:build": "ami-bake-web#17"}
    image = ec2.create_image(InstanceId=source, Name=f"bakery-{role}-{release}", TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["ImageId"]
    ec2.terminate_instances(InstanceIds=[source])
    ec2.enable_image_deregistration_protection(ImageId=image, WithCooldown=True)
    ssm.put_parameter(Name=f"/bakery/{role}/latest", Value=image, Type="String", DataType="aws:ec2:image",
                      Description=f"Latest AMI Bakery image of role {role} (release {release}, bake "
                                  "20260101000000-abcdef)")
    return image


def _bakery(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakery_lib.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_summary_from_aws_in_an_empty_workspace_reads_only(devstack, proxy, tmp_path):
    role, release = f"sum{uuid.uuid4().hex[:6]}", f"9.{uuid.uuid4().hex[:6]}"
    image = _seed(devstack, role, release)
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=[role])
    env = cli_env(devstack, proxy.url)
    ws = tmp_path / "another-machine"
    proc = _bakery(["--workspace", str(ws), "--catalog", str(catalog), "summary", "--release", release, "--from-aws"],
                   env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == [str(ws / "reports" / "summary.html"), str(ws / "reports" / "summary.md")]
    md = (ws / "reports" / "summary.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith(f"| {role} |"))
    assert f"| us-east-1 | ✔ baked | {image} | {release} | passed | yes | none | enabled-with-cooldown | private |" \
        in line, line
    assert "| ami-bake-web#17 |" in line
    ops = proxy.operations()
    assert "DescribeImages" in ops and "GetParameterHistory" in ops, ops
    assert [op for op in ops if not op.startswith(READ_ONLY)] == []
    assert not (ws / ".bakery").exists()

    # A release with no AMI: exit 2 (as `summary --release` without a bake of it), one clear line, nothing written.
    empty = tmp_path / "empty"
    proc = _bakery(["--workspace", str(empty), "--catalog", str(catalog), "summary", "--release", "0.none",
                    "--from-aws"], env, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no AMI of release '0.none' in us-east-1" in proc.stderr and "Traceback" not in proc.stderr
    assert not (empty / "reports").exists()

    # The workspace summary of a release not baked here points at --from-aws.
    proc = _bakery(["--workspace", str(empty), "summary", "--release", release], env, tmp_path)
    assert proc.returncode == 2 and f"bakery summary --release {release} --from-aws" in proc.stderr, proc.stderr

    proc = _bakery(["--workspace", str(empty), "summary", "--from-aws"], env, tmp_path)
    assert proc.returncode == 2 and "--from-aws needs --release" in proc.stderr, proc.stderr
