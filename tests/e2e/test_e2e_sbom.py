"""End to end: two releases of a role baked with the CLI, the instance runner executing the real bake
script (whose ``dpkg-query`` reads the played base image's package database): each AMI gets its
CycloneDX SBOM (artifact, S3, ``bakery:sbom`` tag) and the second release's summary shows what changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.runner import BASE_PACKAGES

pytestmark = pytest.mark.e2e


def bakery(env, ws: Path, catalog: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog), *args],
                          env={**env, "BAKERY_POLL_INTERVAL": "0.2"}, capture_output=True, text=True, timeout=timeout)


def test_each_release_gets_an_sbom_and_the_summary_shows_the_package_changes(devstack, instance_runner, tmp_path,
                                                                              names):
    role = names.role("pkgs")
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    ec2, s3 = devstack.moto.client("ec2"), devstack.moto.client("s3")

    proc = bakery(devstack.env, ws, catalog, "bake", "--role", role, "--release", "1.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = json.loads((ws / ".bakery" / f"{role}.json").read_text())
    ami1 = first["amis"]["us-east-1"]
    uri1 = f"s3://{devstack.bucket}/bakes/{role}/{first['bake_id']}/sbom.cdx.json"
    tags = {t["Key"]: t["Value"] for t in ec2.describe_images(ImageIds=[ami1])["Images"][0]["Tags"]}
    assert tags["bakery:sbom"] == uri1
    artifact = json.loads((ws / "artifacts" / f"{role}.cdx.json").read_text())
    assert sorted(c["name"] for c in artifact["components"]) == sorted(k.split(":")[0] for k in BASE_PACKAGES)
    stored = json.loads(s3.get_object(Bucket=devstack.bucket, Key=uri1.split("/", 3)[3])["Body"].read())
    assert stored["serialNumber"] == artifact["serialNumber"]

    # The next release's image: one package more, one upgraded, one gone (a new base image, a converge).
    packages = {**BASE_PACKAGES, "bash": "5.2.15-2+b7", "curl": "7.88.1-10+deb12u8"}
    del packages["tzdata"]
    instance_runner.packages = packages
    proc = bakery(devstack.env, ws, catalog, "bake", "--role", role, "--release", "2.0", "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    second = json.loads((ws / ".bakery" / f"{role}.json").read_text())
    assert second["bake_id"] != first["bake_id"] and second["sbom_uri"].endswith(f"/{second['bake_id']}/sbom.cdx.json")

    md = (ws / "reports" / "summary.md").read_text()
    assert f"**{role}**: 5 packages; against {ami1} (release 1.0): 1 added, 1 removed, 1 changed" in md, md
    assert "- added: curl 7.88.1-10+deb12u8" in md
    assert "- removed: tzdata 2024a-0+deb12u1" in md
    assert "- changed: bash 5.2.15-2+b2 → 5.2.15-2+b7" in md
    html = (ws / "reports" / "summary.html").read_text()
    assert "<h3>Packages</h3>" in html and "bash 5.2.15-2+b2 → 5.2.15-2+b7" in html
