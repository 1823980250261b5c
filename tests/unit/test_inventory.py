"""Unit tests of the package inventory -> CycloneDX SBOM -> package diff chain (bakery_lib.inventory),
of the summary's package section, and of the instance scripts' own pieces of it executed in bash:
``inventory_json`` over a real ``dpkg-query`` and ``scrub`` over text carrying secrets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bakery_lib.catalog import parse_catalog
from bakery_lib.inventory import (
    Package,
    PackageDiff,
    build_sbom,
    diff_packages,
    inventory_key,
    parse_inventory,
    sbom_packages,
)
from bakery_lib.stages.iam_role import instance_policy
from bakery_lib.state import BakeState, Workspace
from bakery_lib.summary import write_summary
from bakery_lib.userdata import render_role_scripts
from devstack.runner import BASE_PACKAGES, seed_base_image

CATALOGUE = {
    "defaults": {
        "region": "us-east-1", "runlist_bucket": "acme-bakery",
        "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:bakery-alerts",
        "chef": {"server_url": "https://chef.example.com/organizations/acme", "validation_client_name": "acme-validator",
                 "validation_key_s3": "s3://acme-bakery/chef/validator.pem"},
    },
    "roles": {"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"}},
}

LINUX_DOC = {
    "schema": 1, "platform": "linux", "manager": "dpkg", "role": "web", "bake_id": "b1",
    "os": {"id": "debian", "version_id": "12"},
    "packages": [{"name": "bash", "version": "5.2.15-2+b2", "arch": "amd64"},
                 {"name": "libc6", "version": "2.36-9", "arch": "amd64"},
                 {"name": "libc6", "version": "2.36-9", "arch": "i386"},
                 {"name": "tzdata", "version": "2024a-0", "arch": "all"}],
}
WINDOWS_DOC = {
    "schema": 1, "platform": "windows", "manager": "windows", "os": {"id": "windows", "version_id": "10.0.20348"},
    "packages": [{"name": "Amazon SSM Agent", "version": "3.3.0.0", "arch": "x64"},
                 {"name": "Microsoft Visual C++ 2015-2022 Redistributable", "version": "14.38", "arch": "x86"}],
    "hotfixes": [{"id": "KB5034439"}, {"id": "KB5034129"}],
}


def role():
    return parse_catalog(CATALOGUE, "bakery.yaml").roles["web"]


def test_linux_inventory_becomes_a_valid_cyclonedx_sbom_with_purls():
    inv = parse_inventory(json.dumps(LINUX_DOC))
    text = build_sbom(inv, role="web", release="2.0", bake_id="b1", base_ami="ami-0123456789abcdef0")
    doc = json.loads(text)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", "1.6")
    assert doc["metadata"]["component"]["name"] == "web" and doc["metadata"]["component"]["version"] == "2.0"
    purls = sorted(c["purl"] for c in doc["components"])
    assert purls == ["pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12",
                     "pkg:deb/debian/libc6@2.36-9?arch=amd64&distro=debian-12",
                     "pkg:deb/debian/libc6@2.36-9?arch=i386&distro=debian-12",
                     "pkg:deb/debian/tzdata@2024a-0?arch=all&distro=debian-12"]
    # Every package hangs off the image in the dependency graph.
    image_ref = doc["metadata"]["component"]["bom-ref"]
    [root] = [d for d in doc["dependencies"] if d["ref"] == image_ref]
    assert len(root["dependsOn"]) == 4
    jsonschema = pytest.importorskip("jsonschema")  # noqa: F841 (the validator needs it)
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    # What the diff reads back is what went in.
    assert sbom_packages(text) == sorted(inv.packages)


def test_windows_inventory_keeps_programs_and_hotfixes():
    inv = parse_inventory(json.dumps(WINDOWS_DOC))
    assert {p.kind for p in inv.packages} == {"package", "hotfix"}
    assert Package("KB5034439", kind="hotfix") in inv.packages
    back = sbom_packages(build_sbom(inv, role="reporting", release="1", bake_id="b"))
    assert back == sorted(inv.packages)
    assert all("purl" not in c for c in json.loads(build_sbom(inv, role="r", release="1", bake_id="b"))["components"])


@pytest.mark.parametrize("raw, says", [
    ("not json", "is not JSON"),
    (json.dumps({"packages": "bash"}), "\"packages\" list"),
    (json.dumps({"packages": [["bash", "5"]]}), "packages[0] is not an object"),
    (json.dumps({"packages": [{"name": {"x": 1}}]}), "packages[0].name: expected a string"),
])
def test_bad_inventory_documents_are_refused_with_where(raw, says):
    from bakery_lib.inventory import InventoryError

    with pytest.raises(InventoryError) as err:
        parse_inventory(raw, "s3://b/k")
    assert "s3://b/k" in str(err.value) and says in str(err.value)


def test_diff_adds_removes_and_changes_by_name_and_arch():
    before = [Package("bash", "5.2.15-2", "amd64"), Package("libc6", "2.36-9", "amd64"), Package("libc6", "2.36-9", "i386"),
              Package("nano", "7.2-1", "amd64"), Package("tzdata", "2024a", "all")]
    after = [Package("bash", "5.2.15-3", "amd64"), Package("libc6", "2.36-9", "amd64"), Package("curl", "7.88", "amd64"),
             Package("tzdata", "2024a", "all")]
    added, removed, changed = diff_packages(before, after)
    assert added == [Package("curl", "7.88", "amd64")]
    assert removed == [Package("libc6", "2.36-9", "i386"), Package("nano", "7.2-1", "amd64")]
    assert changed == [(Package("bash", "5.2.15-2", "amd64"), Package("bash", "5.2.15-3", "amd64"))]
    assert diff_packages(after, after) == ([], [], [])


def test_a_program_installed_twice_compares_as_its_versions():
    before = [Package("Tool", "1.0", "x64"), Package("Tool", "2.0", "x64")]
    after = [Package("Tool", "2.0", "x64")]
    _, _, changed = diff_packages(before, after)
    assert [(a.version, b.version) for a, b in changed] == [("1.0, 2.0", "2.0")]


def _state(ws: Workspace, bake_id: str) -> None:
    state = BakeState(role="web", bake_id=bake_id, release="2.0", region="us-east-1", platform="linux")
    state.amis = {"us-east-1": "ami-0000000000000new"}
    state.outcome, state.closed = "succeeded", True
    ws.save(state)


def _diff(bake_id: str) -> PackageDiff:
    return PackageDiff("web", "2.0", "s3://acme-bakery/bakes/web/b2/sbom.cdx.json", 4, bake_id, "ami-0000000000000old",
                       "1.0", "s3://acme-bakery/bakes/web/b1/sbom.cdx.json",
                       added=[Package("curl", "7.88.1-10", "amd64")], removed=[Package("<nano>", "7.2-1", "amd64")],
                       changed=[(Package("bash", "5.2.15-2", "amd64"), Package("bash", "5.2.15-3", "amd64"))])


def test_summary_shows_the_package_changes_of_the_role(tmp_path):
    ws = Workspace(tmp_path)
    _state(ws, "b2")
    ws.artifacts_dir.mkdir(parents=True)
    (ws.artifacts_dir / "web.packages.json").write_text(json.dumps(_diff("b2").to_json()))
    html_path, md_path = write_summary(ws, release="2.0")
    md = md_path.read_text()
    assert "## Package changes against each role's previous AMI" in md
    assert "**web**: 4 packages; against ami-0000000000000old (release 1.0): 1 added, 1 removed, 1 changed" in md
    assert "- added: curl (amd64) 7.88.1-10" in md
    assert "- removed: &lt;nano&gt; (amd64) 7.2-1" in md
    assert "- changed: bash (amd64) 5.2.15-2 → 5.2.15-3" in md
    html = html_path.read_text()
    assert "<h3>Packages</h3>" in html and "bash (amd64) 5.2.15-2 → 5.2.15-3" in html
    assert "&lt;nano&gt;" in html and "<nano>" not in html  # escaped like the rest of the page


def test_summary_leaves_out_a_diff_of_another_bake(tmp_path):
    ws = Workspace(tmp_path)
    _state(ws, "b3")  # a newer bake of the role, whose bootstrap wrote no diff
    ws.artifacts_dir.mkdir(parents=True)
    (ws.artifacts_dir / "web.packages.json").write_text(json.dumps(_diff("b2").to_json()))
    html_path, md_path = write_summary(ws, release="2.0")
    assert "Package changes" not in md_path.read_text() and "<h3>Packages</h3>" not in html_path.read_text()


def test_instance_role_may_only_put_objects_under_its_own_records_prefix():
    by_sid = {s["Sid"]: s for s in instance_policy(role())["Statement"]}
    assert by_sid["WriteBakeRecords"] == {"Sid": "WriteBakeRecords", "Effect": "Allow", "Action": "s3:PutObject",
                                          "Resource": "arn:aws:s3:::acme-bakery/bakes/web/*"}
    assert inventory_key("web", "b1").startswith("bakes/web/")
    assert "bakery:bootstrap-log" in by_sid["TagOnlyItself"]["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]


# --- the instance scripts' pieces, executed ---------------------------------------------------------


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render")
    render_role_scripts(role(), out, bake_id="20260101000000-abc123", release="1")
    return out / "web"


def _bash(scripts: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    prog = f"set -euo pipefail\n. ./bakery-lib.sh\n{body}\n"
    return subprocess.run([shutil.which("bash") or "/bin/bash", "-c", prog], cwd=scripts, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg-query")
def test_inventory_json_reads_the_dpkg_database_of_the_root(scripts, tmp_path):
    root = tmp_path / "root"
    seed_base_image(root, {**BASE_PACKAGES, "g++-12:amd64": "12.2.0-14"})
    proc = _bash(scripts, 'eval "$(sed -n "/^os_field()/p; /^inventory_json()/,/^}/p" bake.sh)"\n'
                          'BAKE_ID=b1 INSTANCE_ID=i-1\ninventory_json', BAKERY_ROOT=str(root))
    assert proc.returncode == 0, proc.stderr
    inv = parse_inventory(proc.stdout)
    assert (inv.manager, inv.os_id, inv.os_version) == ("dpkg", "debian", "12")
    names = {p.key: p.version for p in inv.packages}
    # Installed packages only: nano is deinstalled, only its config files are kept.
    assert names == {**BASE_PACKAGES, "g++-12:amd64": "12.2.0-14"}
    assert "dpkg-query" not in proc.stderr  # a status file as dpkg writes it: no parse warnings


def test_inventory_json_fails_without_a_package_database(scripts, tmp_path):
    tools = tmp_path / "bin"  # the usual tools, but neither dpkg-query nor rpm
    tools.mkdir()
    for tool in ("bash", "sed", "tr", "head", "sort", "date", "cat"):
        (tools / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    proc = _bash(scripts, 'eval "$(sed -n "/^os_field()/p; /^inventory_json()/,/^}/p" bake.sh)"\n'
                          'BAKE_ID=b1\nif inventory_json; then echo produced; else echo none; fi',
                 BAKERY_ROOT=str(tmp_path), PATH=str(tools))
    assert proc.stdout.strip().splitlines()[-1] == "none", proc.stdout + proc.stderr


def test_scrub_removes_keys_credentials_and_the_license_key(scripts):
    text = "\n".join([
        "converging", "-----BEGIN RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEAsecretbody", "-----END RSA PRIVATE KEY-----",
        "key id AKIAIOSFODNN7EXAMPLE used", "password=hunter2 next", '"token": "abc123", more',
        "url ?license_id=LIC-42-XYZ&x", "the license LIC-42-XYZ itself",
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJz", "FATAL: recipe failed",
    ])
    proc = _bash(scripts, 'CHEF_LICENSE_KEY_VALUE=LIC-42-XYZ scrub <<\'END\'\n' + text + "\nEND")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for secret in ("PRIVATE KEY", "secretbody", "AKIAIOSFODNN7EXAMPLE", "hunter2", "abc123", "LIC-42-XYZ",
                   "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVph"):
        assert secret not in out, (secret, out)
    assert out.splitlines() == ["converging", "key id [removed] used", "password=[removed] next",
                                '"token": [removed], more', "url ?license_id=[removed]&x", "the license [removed] itself",
                                "FATAL: recipe failed"]
