"""End to end: the outputs an operator and a finance team rely on, as the AWS API and the workspace show
them after real bakes (CLI in subprocesses, moto server, goiardi, the instance runner).

- a role's tags merge with ``defaults.tags`` on the instance, the AMI and its snapshots;
- a reused AMI gets the catalogue's tags of today (added, changed, removed), and JUnit reports the
  stages the reuse made unnecessary as ``<skipped/>``;
- every stage line appears once in the console.
"""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROLE = "tagreuse"


def bakery(env, ws: Path, catalog: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog),
                           *args], env=env, capture_output=True, text=True, timeout=300)


def tags_on(ec2, resource: str) -> dict[str, str]:
    found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource]}])["Tags"]
    return {t["Key"]: t["Value"] for t in found}


def test_tags_merge_and_a_reused_ami_is_retagged(devstack, instance_runner, tmp_path):
    env = {**devstack.env, "BAKERY_POLL_INTERVAL": "0.2"}
    ws = tmp_path / "ws"
    catalog = tmp_path / "bakery.yaml"
    ec2 = devstack.moto.client("ec2")

    devstack.write_catalog(catalog, roles={ROLE: {"tags": {"service": "shop", "env": "prod"}}},
                           tags={"team": "platform", "env": "dev", "cost-center": "4711"})
    first = bakery(env, ws, catalog, "bake", "--role", ROLE, "--release", "1.0")
    assert first.returncode == 0, first.stdout + first.stderr
    # Each stage line once: no copy on stdout of what the log said on stderr.
    console = first.stdout + first.stderr
    assert len(re.findall(rf"{ROLE}: preflight: bake ", console)) == 1, console
    assert len(re.findall(rf"{ROLE}: publish: published ", console)) == 1, console
    ami = re.search(rf"^{ROLE}\s+succeeded\s.*us-east-1 (ami-[0-9a-f]+)", first.stdout, re.M).group(1)
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    merged = {"team": "platform", "env": "prod", "cost-center": "4711", "service": "shop"}
    for resource in (ami, snapshot):
        assert merged.items() <= tags_on(ec2, resource).items(), resource
    bake_instance = ec2.describe_instances(Filters=[{"Name": "tag:bakery:role", "Values": [ROLE]}])
    instance_tags = {t["Key"]: t["Value"]
                     for r in bake_instance["Reservations"] for i in r["Instances"] for t in i["Tags"]}
    assert merged.items() <= instance_tags.items()

    # The finance team renames a cost centre and drops `env`: nothing that shapes the image changed.
    devstack.write_catalog(catalog, roles={ROLE: {"tags": {"service": "shop"}}},
                           tags={"team": "platform", "cost-center": "0815"})
    second = bakery(env, ws, catalog, "bake", "--role", ROLE, "--release", "1.1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(rf"^{ROLE}\s+reused\s.*{ami}", second.stdout, re.M), second.stdout
    assert f"{ami} re-tagged in us-east-1 (set cost-center; removed env)" in second.stderr
    for resource in (ami, snapshot):
        tags = tags_on(ec2, resource)
        assert {"team": "platform", "cost-center": "0815", "service": "shop"}.items() <= tags.items(), tags
        assert "env" not in tags, tags
        assert tags.get("bakery:role") == ROLE or resource == snapshot
    assert tags_on(ec2, ami)["bakery:release"] == "1.0"  # the release that baked it

    skipped = ET.parse(ws / "reports" / f"{ROLE}-launch.xml").getroot().find(".//testcase/skipped")
    assert skipped is not None and ami in skipped.get("message", "")
    published = ET.parse(ws / "reports" / f"{ROLE}-publish.xml").getroot().find(".//testcase")
    assert published.find("skipped") is None and published.find("failure") is None
