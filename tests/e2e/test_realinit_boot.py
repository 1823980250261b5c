"""End to end through real init: the bakery bakes and launches Debian 12 instances that boot under
systemd 252 (PID 1 of a ``systemd-nspawn -b`` container) and Debian's cloud-init (NoCloud seed), with
the real-init runner (``devstack.realinit``) playing EC2: stop = power off, a reboot inside = a
reboot, CreateImage of the stopped bake instance = a snapshot of its tree.

One bake serves the module (about two minutes): a role on the base **without** the AWS CLI whose
cookbook reboots (the stub Chef client runs ``shutdown -r +0 &`` and exits 35, as Chef's rebooter
does). Then two instances launched from the published AMI, one of them booted twice. Needs root,
``debootstrap`` and ``systemd-nspawn`` (``make deps``); the debootstrapped bases are cached in
``.tools/realinit/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import DevStack
from devstack.moto import seed_base_image
from devstack.realinit import RealInitRunner
from devstack.realinit_base import base_layers

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")


def _tags(ec2: Any, resource: str) -> dict[str, str]:
    found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource]}])["Tags"]
    return {t["Key"]: t["Value"] for t in found}


def _journal(root: Path) -> list[dict[str, Any]]:
    """The instance's persistent journal, oldest first (read with the host's journalctl)."""
    proc = subprocess.run(["journalctl", "--directory", str(root / "var/log/journal"), "-o", "json", "--no-pager"],
                          capture_output=True, text=True, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _multi_user_reached(console: str) -> int:
    return sum(1 for line in ANSI.sub("", console).splitlines() if "Reached target multi-user.target" in line)


@dataclass
class Baked:
    devstack: DevStack
    runner: RealInitRunner
    role: str
    proc: subprocess.CompletedProcess
    state: dict[str, Any]
    catalog: Path
    ws: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def baked(devstack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baked]:
    for tool in ("debootstrap", "systemd-nspawn", "journalctl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required for the real-init tests (make deps installs it)")
    if os.geteuid() != 0:
        pytest.fail("the real-init tests boot containers and must run as root")
    base_layers("nocli")
    tmp = tmp_path_factory.mktemp("realinit")
    ec2 = devstack.moto.client("ec2")
    nocli = seed_base_image(ec2, f"debian-12-no-aws-cli-{uuid.uuid4().hex[:8]}")
    role = f"rinit{uuid.uuid4().hex[:6]}"
    # bootstrap_timeout bounds a bake that never reports (today's code on this base) to a few minutes.
    catalog = devstack.write_catalog(tmp / "bakery.yaml", roles={role: {"platform": "linux", "base_ami": nocli}},
                                     bootstrap_timeout="6m")
    ws = tmp / "ws"
    env = {**devstack.env, "BAKERY_POLL_INTERVAL": "0.5"}
    with RealInitRunner(devstack.moto.url, devstack.region, tmp / "instances", variants={nocli: "nocli"},
                        extra_env={"BAKERY_STUB_CHEF_REBOOT_EXIT": "35"}) as runner:
        proc = subprocess.run([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog),
                               "bake", "--role", role, "--release", "1.0"],
                              env=env, capture_output=True, text=True, timeout=900)
        state_file = ws / ".bakery" / f"{role}.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        yield Baked(devstack, runner, role, proc, state, catalog, ws, env)


def _bake_instance(baked: Baked) -> str:
    iid = baked.state.get("instance_id")
    assert iid, baked.proc.stderr[-3000:]
    return str(iid)


def test_a_base_without_the_aws_cli_bakes_through_a_cookbook_that_reboots(baked: Baked) -> None:
    """2a + 2c: the bake installs Debian's awscli itself, survives the reboot its converge asks for
    (chef-client 35 with the shutdown already under way) and ends succeeded; the AMI is published."""
    iid = _bake_instance(baked)
    console = baked.runner.console(iid)
    assert baked.proc.returncode == 0, baked.proc.stderr[-4000:] + "\n--- console ---\n" + console[-4000:]
    assert baked.state["outcome"] == "succeeded"
    ec2 = baked.devstack.moto.client("ec2")
    assert _tags(ec2, iid)["bakery:bootstrap"] == "succeeded"
    record = baked.runner.results[iid]
    assert record["boots"] == 2, console[-4000:]  # booted, rebooted by its converge, powered off by the stop
    root = baked.runner.root(iid)
    assert (root / "usr/bin/aws").exists()  # Debian's awscli, installed by the bake from the image's apt
    runs = [json.loads(line) for line in (root / "var/log/stub-chef-client.jsonl").read_text().splitlines()]
    assert [r.get("exit", 0) for r in runs] == [35, 0]
    assert not (root / "etc/systemd/system/bakery-bake-resume.service").exists()
    assert not (root / "var/lib/bakery/bake.sh").exists()
    ami = baked.state["amis"][baked.devstack.region]
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available"
    # After the converge, dpkg's own list of the booted Debian (awscli included: the bake installed it)
    # went to S3 and became the AMI's SBOM.
    sbom = _tags(ec2, ami)["bakery:sbom"]
    names = {c["name"] for c in json.loads((baked.ws / "artifacts" / f"{baked.role}.cdx.json").read_text())["components"]}
    assert {"systemd", "cloud-init", "awscli"} <= names, sorted(names)
    assert sbom == f"s3://{baked.devstack.bucket}/bakes/{baked.role}/{baked.state['bake_id']}/sbom.cdx.json"


def test_the_image_gets_a_fresh_machine_id_and_first_boot_runs_once(baked: Baked) -> None:
    """2b + 2d: the boot test and each launch run first boot through the real unit (after
    network-online.target and cloud-init), each instance has its own machine id, and a second boot
    of an instance does not run first boot again."""
    bake = _bake_instance(baked)
    assert baked.proc.returncode == 0, baked.proc.stderr[-3000:]
    runner, ec2 = baked.runner, baked.devstack.moto.client("ec2")
    base_id = (base_layers("nocli")[0] / "etc/machine-id").read_text().strip()
    assert MACHINE_ID.match(base_id)  # the base has one, as most bases do
    assert (runner.root(bake) / "etc/machine-id").read_text() == "uninitialized\n"  # as cloud-init clean does

    tests = [i for i, r in runner.results.items() if r["kind"] == "firstboot"]
    assert len(tests) == 1 and _tags(ec2, tests[0])["bakery:boot-test"] == "passed", _tags(ec2, tests[0])

    launched = []
    for _ in range(2):
        code = "import sys; from bakery_lib.cli import create_instance_main; sys.exit(create_instance_main())"
        proc = subprocess.run([sys.executable, "-c", code, baked.role, "--from-ami", "latest", "--catalog",
                               str(baked.catalog), "--workspace", str(baked.ws)],
                              env=baked.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        launched.append(proc.stdout.strip())
    log = "var/log/bakery-firstboot.log"
    for iid in launched:
        runner.wait_until(iid, "first boot succeeded", lambda r, i=iid: "succeeded; removed" in _read(r.root(i) / log))
    first, second = launched
    ec2.stop_instances(InstanceIds=[first])
    runner.wait(first)
    ec2.start_instances(InstanceIds=[first])
    runner.wait_until(first, "the second boot reaching multi-user.target",
                      lambda r: r.results[first]["boots"] == 2 and _multi_user_reached(r.console(first)) == 2)
    ec2.stop_instances(InstanceIds=launched)
    for iid in launched:
        runner.wait(iid)

    ids = [(runner.root(i) / "etc/machine-id").read_text().strip() for i in [*tests, *launched]]
    assert all(MACHINE_ID.match(i) for i in ids), ids
    assert len(set(ids)) == 3 and base_id not in ids, ids

    text = _read(runner.root(first) / log)
    assert text.count("first boot of role") == 1, text  # the second boot did not run it
    assert (runner.root(first) / log).stat().st_mode & 0o077 == 0  # root only (Chef's whole output)
    own_id = (runner.root(first) / "etc/machine-id").read_text().strip()
    journal = [e for e in _journal(runner.root(first)) if e.get("_MACHINE_ID") == own_id]  # not the bake's
    boots = list(dict.fromkeys(e["_BOOT_ID"] for e in journal))
    assert len(boots) == 2
    for boot, starts in zip(boots, (1, 0), strict=True):
        entries = [e for e in journal if e["_BOOT_ID"] == boot and e.get("_PID") == "1"]
        started = [n for n, e in enumerate(entries) if e.get("UNIT") == "bakery-firstboot.service"
                   and str(e.get("MESSAGE", "")).startswith("Starting")]
        assert len(started) == starts, [e.get("MESSAGE") for e in entries if e.get("UNIT") == "bakery-firstboot.service"]
        if starts:
            done: dict[str, int] = {}
            for n, e in enumerate(entries):
                if e.get("JOB_TYPE") == "start" and e.get("JOB_RESULT") == "done":
                    done.setdefault(str(e.get("UNIT")), n)
            assert done["cloud-init.service"] < started[0] and done["network-online.target"] < started[0]


def test_the_image_units_pass_the_distributions_checks(baked: Baked) -> None:
    """2e: the first-boot unit as systemd 252 reads it in the image; the SysV script as insserv does."""
    bake = _bake_instance(baked)
    root = baked.runner.root(bake)
    unit = "/etc/systemd/system/bakery-firstboot.service"
    assert (root / unit.lstrip("/")).is_file(), baked.proc.stderr[-3000:]
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True)
    assert proc.returncode == 0 and "bakery-firstboot" not in proc.stderr, proc.stderr
    if shutil.which("insserv") is None:
        pytest.fail("insserv is required (make deps installs it)")
    scripts = Path(baked.ws).parent / "insserv" / "etc"
    shutil.copytree(root / "etc/init.d", scripts / "init.d", symlinks=True)
    for level in "0123456S":
        (scripts / f"rc{level}.d").mkdir()
    shutil.copy("/etc/insserv.conf", scripts / "insserv.conf")
    proc = subprocess.run(["insserv", "-n", "-p", str(scripts / "init.d"), "-c", str(scripts / "insserv.conf"),
                           "bakery-firstboot"], capture_output=True, text=True)
    assert proc.returncode == 0 and "warning" not in proc.stderr.lower(), proc.stderr


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
