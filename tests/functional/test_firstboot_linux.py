"""The Linux instance-side scripts, really executed: first boot, its init script, bake and launch user data.

Each script runs in a sandbox whose ``BAKERY_ROOT`` is a temp dir, against the moto server (real
``aws`` CLI from the venv), an IMDSv2 double on 127.0.0.1 that also serves the instance role's
credentials (so the CLI uses "the instance role", as on EC2), and the stub ``chef-client`` of
``tests/scripts/`` on PATH. Alerts are read back through a real SNS topic -> SQS queue subscription.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.sandbox import (
    BUCKET,
    INSTANCE_ROLE,
    REGION,
    SCRIPTS,
    VENV_BIN,
    WEB_RUN_LIST,
    Sandbox,
    firstboot,
    instance_tags,
    make_role,
    new_instance,
    output,
)

from bakery_lib.inventory import parse_inventory
from bakery_lib.userdata import bake_script, bake_userdata, instance_files, launch_userdata
from devstack.runner import BASE_PACKAGES
from devstack.runner import seed_base_image as seed_debian_base

# --- first boot -------------------------------------------------------------------------------------


def test_without_the_sentinel_first_boot_does_nothing(sandbox_factory, alerts):
    box = sandbox_factory()
    box.install_image(make_role(alerts))
    box.sentinel.unlink()

    proc = box.run(firstboot(box))

    assert proc.returncode == 0, output(proc)
    assert "nothing to do" in output(proc)
    assert box.chef_calls() == []
    assert box.imds.requests == []  # not even the metadata service was asked
    assert alerts.received() == []


def test_first_boot_registers_with_the_s3_run_list_and_removes_the_sentinel(sandbox_factory, alerts):
    instance_id = "i-0feedbeef00000001"
    box = sandbox_factory(instance_id)
    box.install_image(make_role(alerts))

    proc = box.run(firstboot(box))

    assert proc.returncode == 0, output(proc)
    calls = box.chef_calls()
    assert len(calls) == 1
    call = calls[0]
    assert call.json == WEB_RUN_LIST  # exactly what s3://BUCKET/runlists/web.json holds
    assert "-j" in call.argv and "-c" in call.argv and "-o" not in call.argv
    assert call.client_rb["node_name"] == f"web-{instance_id}"
    assert call.client_rb["chef_server_url"] == "https://chef.example.com/organizations/acme"
    assert call.client_rb["validation_client_name"] == "acme-validator"
    assert call.validator_mode == "600"
    assert not box.sentinel.exists()
    assert not (box.root / "etc/chef/validation.pem").exists()
    assert (box.root / "etc/chef/client.pem").exists()  # the instance keeps its own identity
    assert alerts.received() == []  # alerts only on failure
    log_path = box.root / "var/log/bakery-firstboot.log"
    assert f"first boot of web-{instance_id} succeeded" in log_path.read_text()
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600  # Chef's whole output: root only, like the bake log
    # IMDSv2 all the way: a token first, then token-carrying reads (the double answers 401 otherwise),
    # and the CLI's credentials came from the instance role there.
    paths = [(method, path, status) for method, path, status in box.imds.requests]
    assert paths[0] == ("PUT", "/latest/api/token", 200)
    assert ("GET", "/latest/meta-data/instance-id", 200) in paths
    assert ("GET", f"/latest/meta-data/iam/security-credentials/{INSTANCE_ROLE}", 200) in paths
    # It asked for its user data (a boot test would say so there): this instance has none, IMDS answers 404.
    assert ("GET", "/latest/user-data", 404) in paths
    assert all(status == 200 for _, path, status in paths if path != "/latest/user-data")


def test_failed_chef_run_keeps_the_sentinel_and_sends_exactly_one_alert(sandbox_factory, alerts, aws):
    instance_id = "i-0feedbeef00000002"
    box = sandbox_factory(instance_id)
    box.install_image(make_role(alerts))

    proc = box.run(firstboot(box), STUB_CHEF_EXIT="3")

    assert proc.returncode == 3, output(proc)
    assert box.sentinel.exists()  # the next boot retries
    assert not (box.root / "etc/chef/validation.pem").exists()
    received = alerts.received()
    assert len(received) == 1, received
    subject, message = received[0]["Subject"], received[0]["Message"]
    assert "web" in subject and instance_id in subject
    for expected in ("role web", instance_id, REGION, "Exit code: 3", "cinc-client exited 3",
                     "stub chef-client: converging node"):
        assert expected in message, (expected, message)
    # The log's last lines are in S3 under the role's records prefix too, and the alert names them
    # (an image without /etc/bakery/image.json names no bake: "unknown-bake").
    key = f"bakes/web/unknown-bake/firstboot/{instance_id}.log"
    assert f"Log tail:  s3://{BUCKET}/{key}" in message, message
    tail = aws["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    assert "cinc-client exited 3" in tail and "stub chef-client: converging node" in tail
    assert "PRIVATE KEY" not in tail and "PRIVATE KEY" not in message

    # A reboot retries, and a good run then completes the first boot without another alert.
    proc = box.run(firstboot(box))
    assert proc.returncode == 0, output(proc)
    assert not box.sentinel.exists()
    assert len(box.chef_calls()) == 2
    assert alerts.received() == []


def test_missing_run_list_fails_clearly_without_running_chef(sandbox_factory, alerts):
    instance_id = "i-0feedbeef00000003"
    box = sandbox_factory(instance_id)
    box.install_image(make_role(alerts, name="ghost"))  # no runlists/ghost.json in the bucket

    proc = box.run(firstboot(box))

    assert proc.returncode != 0
    assert box.chef_calls() == []
    assert box.sentinel.exists()
    received = alerts.received()
    assert len(received) == 1, received
    message = received[0]["Message"]
    assert f"the run list s3://{BUCKET}/runlists/ghost.json is missing or unreadable" in message
    assert "role ghost" in message and instance_id in message


@pytest.mark.parametrize("lock", ["flock", "mkdir"])
def test_two_starts_never_run_at_once(sandbox_factory, alerts, tmp_path, lock):
    box = sandbox_factory()
    box.install_image(make_role(alerts))
    extra = {}
    if lock == "mkdir":
        # A system without flock(1): the PATH offers every tool of /usr/bin except flock.
        nofl = tmp_path / "no-flock-bin"
        nofl.mkdir()
        for tool in os.listdir("/usr/bin"):
            if tool != "flock":
                (nofl / tool).symlink_to(Path("/usr/bin") / tool)
        extra["PATH"] = os.pathsep.join([str(box.bin), str(VENV_BIN), str(nofl)])

    first = box.popen(firstboot(box), STUB_CHEF_SLEEP="3", **extra)
    # The second starts once the first says it began (after taking the lock), never after a sleep.
    assert first.stdout is not None
    head = ""
    for line in first.stdout:
        head += line
        if "first boot of role" in line:
            break
    second = box.popen(firstboot(box), STUB_CHEF_SLEEP="3", **extra)
    out1, _ = first.communicate(timeout=120)
    out1 = head + out1
    out2, _ = second.communicate(timeout=120)

    assert (first.returncode, second.returncode) == (0, 0), out1 + out2
    assert len(box.chef_calls()) == 1
    # Whichever got there second stepped aside (normally the second one started).
    assert "not starting a second one" in out1 + out2
    assert not box.sentinel.exists()
    if lock == "mkdir":
        assert not (box.root / "var/lock/bakery-firstboot.lock.d").exists()  # released


def test_a_stale_mkdir_lock_is_taken_over(sandbox_factory, alerts, tmp_path):
    box = sandbox_factory()
    box.install_image(make_role(alerts))
    nofl = tmp_path / "no-flock-bin"
    nofl.mkdir()
    for tool in os.listdir("/usr/bin"):
        if tool != "flock":
            (nofl / tool).symlink_to(Path("/usr/bin") / tool)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lockdir = box.root / "var/lock/bakery-firstboot.lock.d"
    lockdir.mkdir(parents=True)
    (lockdir / "pid").write_text(f"{dead.pid}\n")

    proc = box.run(firstboot(box), PATH=os.pathsep.join([str(box.bin), str(VENV_BIN), str(nofl)]))

    assert proc.returncode == 0, output(proc)
    assert "removing the stale lock" in output(proc)
    assert len(box.chef_calls()) == 1


def test_init_script_start_status_stop(sandbox_factory, alerts):
    instance_id = "i-0feedbeef00000004"
    box = sandbox_factory(instance_id)
    box.install_image(make_role(alerts))
    init = str(box.root / "etc/init.d/bakery-firstboot")
    head = Path(init).read_text()
    assert "### BEGIN INIT INFO" in head and "# chkconfig: 2345" in head

    status = box.run([init, "status"])
    assert status.returncode == 3 and "pending" in status.stdout

    start = box.run([init, "start"])
    assert start.returncode == 0, output(start)
    assert [c.client_rb["node_name"] for c in box.chef_calls()] == [f"web-{instance_id}"]
    assert not box.sentinel.exists()

    status = box.run([init, "status"])
    assert status.returncode == 0 and "done" in status.stdout
    again = box.run([init, "start"])
    assert again.returncode == 0 and "already done" in again.stdout
    assert len(box.chef_calls()) == 1
    assert box.run([init, "stop"]).returncode == 0
    bad = box.run([init, "reload-everything"])
    assert bad.returncode == 2 and "Usage" in bad.stderr


def test_init_script_start_reports_a_failed_first_boot(sandbox_factory, alerts):
    box = sandbox_factory("i-0feedbeef00000005")
    box.install_image(make_role(alerts))

    start = box.run([str(box.root / "etc/init.d/bakery-firstboot"), "start"], STUB_CHEF_EXIT="1")

    assert start.returncode == 1
    assert len(alerts.received()) == 1
    assert box.run([str(box.root / "etc/init.d/bakery-firstboot"), "status"]).returncode == 3


# --- bake user data, end to end -----------------------------------------------------------------------


def test_bake_userdata_end_to_end_then_first_boot_of_the_image(sandbox_factory, alerts, aws):
    role = make_role(alerts)
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance, name="bake")
    bake_id = "20260101000000-abc123"

    seed_debian_base(box.root, {**BASE_PACKAGES, "openssl": "3.0.15-1~deb12u1"})

    proc = box.run_userdata(bake_userdata(role, bake_id=bake_id, release="2.7.1"))

    assert proc.returncode == 0, output(proc)
    tags = instance_tags(aws, bake_instance)
    assert tags["bakery:bootstrap"] == "succeeded", tags
    # What dpkg says is installed after the converge, uploaded with the instance role for the SBOM:
    # installed packages only (the removed one whose config files stay is not).
    raw = aws["s3"].get_object(Bucket=BUCKET, Key=f"bakes/web/{bake_id}/inventory.json")["Body"].read()
    inventory = parse_inventory(raw)
    assert (inventory.platform, inventory.manager, inventory.os_id, inventory.os_version) == ("linux", "dpkg", "debian", "12")
    assert {(p.key, p.version) for p in inventory.packages} == {
        ("base-files", "12.4+deb12u5"), ("bash", "5.2.15-2+b2"), ("coreutils", "9.1-1"),
        ("libc6:amd64", "2.36-9+deb12u4"), ("tzdata", "2024a-0+deb12u1"), ("openssl", "3.0.15-1~deb12u1")}
    assert "package inventory (6 packages) uploaded" in proc.stdout
    assert f"bake-web-{bake_id}" in tags["bakery:bootstrap-detail"]
    assert "bake of web succeeded" in proc.stdout  # the console, which the bootstrap stage reads

    [call] = box.chef_calls()
    assert call.argv[call.argv.index("-o") + 1] == "recipe[roles::web_ami],recipe[base]"
    assert call.client_rb["node_name"] == f"bake-web-{bake_id}"
    assert call.validator_mode == "600"

    # The first-boot mechanism is in the image, exactly as rendered, enabled, with the sentinel...
    root = box.root
    for path, content in instance_files(role).items():
        assert (root / path.lstrip("/")).read_text() == content, path
    for path in ("usr/local/sbin/bakery-firstboot", "etc/init.d/bakery-firstboot"):
        assert stat.S_IMODE((root / path).stat().st_mode) == 0o755, path
    wants = root / "etc/systemd/system/multi-user.target.wants/bakery-firstboot.service"
    assert os.readlink(wants) == "/etc/systemd/system/bakery-firstboot.service"
    assert os.readlink(root / "etc/rc3.d/S99bakery-firstboot") == "../init.d/bakery-firstboot"
    assert (root / "firstboot.txt").exists()
    info = json.loads((root / "etc/bakery/image.json").read_text())
    assert (info["role"], info["release"], info["bake_id"]) == ("web", "2.7.1", bake_id)
    # ...and the bake's Chef identity is not.
    assert not any((root / "etc/chef" / name).exists() for name in ("client.pem", "validation.pem", "client.rb"))
    assert "PRIVATE KEY" not in "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())

    # An instance launched from that image: same files, new instance id, the init script at boot.
    first = sandbox_factory("i-0launchedfromami01", name="from-ami")
    os.rmdir(first.root)
    subprocess.run(["cp", "-a", str(root), str(first.root)], check=True)
    start = first.run([str(first.root / "etc/init.d/bakery-firstboot"), "start"])
    assert start.returncode == 0, output(start)
    [boot] = first.chef_calls()
    assert boot.client_rb["node_name"] == "web-i-0launchedfromami01"
    assert boot.json == WEB_RUN_LIST
    assert not (first.root / "firstboot.txt").exists()
    assert alerts.received() == []


def test_bake_userdata_failing_chef_tags_failed_and_installs_nothing(sandbox_factory, alerts, aws):
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance)

    proc = box.run_userdata(bake_userdata(make_role(alerts), bake_id="20260101000000-bad000", release="1"),
                            STUB_CHEF_EXIT="5")

    assert proc.returncode != 0
    tags = instance_tags(aws, bake_instance)
    assert tags["bakery:bootstrap"] == "failed"
    assert "cinc-client exited 5" in tags["bakery:bootstrap-detail"]
    assert "FAILED: cinc-client exited 5" in proc.stdout
    # The last lines of the bake's log went to S3 (the tag value limit is 256 characters), named by a tag.
    key = "bakes/web/20260101000000-bad000/bootstrap-log.txt"
    assert tags["bakery:bootstrap-log"] == f"s3://{BUCKET}/{key}"
    tail = aws["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    assert "FAILED: cinc-client exited 5" in tail and "stub chef-client" in tail
    assert "PRIVATE KEY" not in tail
    # No inventory for a failed converge.
    assert "Contents" not in aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix="bakes/web/20260101000000-bad000/inventory")
    # The log left behind is a root-only summary: the reason, not Chef's output.
    summary = box.root / "var/log/bakery-bake.log"
    assert "failed: cinc-client exited 5" in summary.read_text()
    assert "stub chef-client" not in summary.read_text()
    assert stat.S_IMODE(summary.stat().st_mode) == 0o600
    assert not (box.root / "firstboot.txt").exists()
    assert not (box.root / "etc/init.d/bakery-firstboot").exists()
    assert not (box.root / "etc/chef/validation.pem").exists()
    assert alerts.received() == []  # a failed bake is reported by its tag, not by an alert


def test_bake_userdata_without_validator_key_names_the_step(sandbox_factory, alerts, aws):
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance)
    role = make_role(alerts, validation_key_s3=f"s3://{BUCKET}/chef/no-such-key.pem")

    proc = box.run_userdata(bake_userdata(role, bake_id="20260101000000-nokey0", release="1"))

    assert proc.returncode != 0
    detail = instance_tags(aws, bake_instance)["bakery:bootstrap-detail"]
    assert f"cannot fetch the validator key s3://{BUCKET}/chef/no-such-key.pem" in detail
    assert box.chef_calls() == []


def test_hostile_catalogue_values_stay_inert_when_the_bake_runs(sandbox_factory, alerts, aws, tmp_path):
    # The catalogue's URL check allows ; | > & ( ) — the shell metacharacters left after it.
    marker = tmp_path / "PWNED"
    role = make_role(
        alerts,
        server_url=f"https://chef.example.com/o;touch>{marker};(touch>{marker})|touch>{marker}&",
        installer_url=f"https://get.example.com/i.sh;touch>{marker}",
    )
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance)

    proc = box.run_userdata(bake_userdata(role, bake_id="20260101000000-hostil", release="x;touch>y"))

    assert proc.returncode == 0, output(proc)
    assert not marker.exists()
    assert not (box.tmp / "y").exists()
    [call] = box.chef_calls()
    assert call.client_rb["chef_server_url"] == role.chef.server_url  # verbatim, one Ruby string
    assert json.loads((box.root / "etc/bakery/image.json").read_text())["release"] == "x;touch>y"


# --- launch user data ------------------------------------------------------------------------------------


INSTALLER_REQUESTS: list[str] = []


class _Site(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        INSTALLER_REQUESTS.append(self.path)


@pytest.fixture()
def installer_url(tmp_path: Path) -> Iterator[str]:
    """The omnitruck installer double, served over HTTP on 127.0.0.1 (requested paths in INSTALLER_REQUESTS)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "install.sh").write_text((SCRIPTS / "install-chef.sh").read_text())
    INSTALLER_REQUESTS.clear()
    handler = partial(_Site, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/install.sh"
    server.shutdown()
    server.server_close()


def test_launch_userdata_installs_chef_and_runs_the_launch_run_list(sandbox_factory, alerts, aws, installer_url):
    role = make_role(alerts, installer_url=installer_url)
    instance_id = new_instance(aws)
    box = sandbox_factory(instance_id, chef_on_path=False)
    assert not (box.bin / "cinc-client").exists()

    proc = box.run_userdata(launch_userdata(role), STUB_CHEF_SOURCE=str(SCRIPTS / "chef-client"),
                            STUB_INSTALL_DIR=str(box.bin))

    assert proc.returncode == 0, output(proc)
    assert (box.bin / "installed-version").read_text().strip() == "18.4.12"
    assert (box.bin / "installed-project").read_text().strip() == "cinc"  # the default distribution
    [call] = box.chef_calls()
    assert call.json == {"run_list": ["recipe[roles::web_launch]"]}
    assert call.client_rb["node_name"] == f"web-{instance_id}"
    assert instance_tags(aws, instance_id)["bakery:bootstrap"] == "succeeded"
    assert not (box.root / "etc/chef/validation.pem").exists()
    assert alerts.received() == []


def test_launch_userdata_failure_alerts_once_and_tags_failed(sandbox_factory, alerts, aws):
    instance_id = new_instance(aws)
    box = sandbox_factory(instance_id)

    proc = box.run_userdata(launch_userdata(make_role(alerts)), STUB_CHEF_EXIT="2")

    assert proc.returncode == 2
    received = alerts.received()
    assert len(received) == 1
    assert "launch of role web failed" in received[0]["Message"] and instance_id in received[0]["Message"]
    tags = instance_tags(aws, instance_id)
    assert tags["bakery:bootstrap"] == "failed" and "cinc-client exited 2" in tags["bakery:bootstrap-detail"]


# --- a converge that asks for a reboot, the Chef client choice, what the image keeps (issue 12) ----------


def boot_resume_units(box: Sandbox) -> list[subprocess.CompletedProcess]:
    """What systemd runs at the next boot: each enabled unit's ExecStart whose condition holds."""
    runs = []
    wants = box.root / "etc/systemd/system/multi-user.target.wants"
    for link in sorted(wants.glob("*.service")) if wants.exists() else []:
        unit = (box.root / os.readlink(link).lstrip("/")).read_text()
        cond = next((ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ConditionPathExists=")), None)
        if cond and not (box.root / cond.lstrip("/")).exists():
            continue
        exec_start = next(ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart="))
        argv = [a if not a.startswith("/var/") else str(box.root / a.lstrip("/")) for a in exec_start.split()]
        runs.append(box.run(argv))
    return runs


def test_bake_whose_converge_asks_for_a_reboot_continues_after_it_and_only_then_succeeds(sandbox_factory, alerts,
                                                                                         aws):
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance, extra_env={"STUB_CHEF_EXIT_ONCE": "35"})
    proc = box.run_userdata(bake_userdata(make_role(alerts), bake_id="20260101000000-reboot", release="1"))

    # First boot of the bake: chef-client exits 35; the script reboots, nothing is tagged yet.
    assert proc.returncode == 0, output(proc)
    assert "rebooting to continue the converge" in proc.stdout
    assert (box.records / "reboots").read_text().count("reboot") == 1
    assert "bakery:bootstrap" not in instance_tags(aws, bake_instance)
    unit = box.root / "etc/systemd/system/bakery-bake-resume.service"
    assert "ExecStart=/bin/bash /var/lib/bakery/bake.sh" in unit.read_text()
    assert not (box.root / "firstboot.txt").exists()
    assert not (box.root / "etc/chef/validation.pem").exists()

    # The reboot: systemd runs the continuation (the first-boot unit's condition does not hold yet).
    [resumed] = boot_resume_units(box)
    assert resumed.returncode == 0, output(resumed)
    tags = instance_tags(aws, bake_instance)
    assert tags["bakery:bootstrap"] == "succeeded", tags
    assert len(box.chef_calls()) == 2  # the converge ran again, to the end
    assert (box.root / "firstboot.txt").exists()
    # One-shot: the unit, its link and the script are gone, so the image never reruns the bake.
    assert not unit.exists()
    assert not (box.root / "etc/systemd/system/multi-user.target.wants/bakery-bake-resume.service").exists()
    assert not (box.root / "var/lib/bakery/bake.sh").exists()
    assert "reboots during the converge: 1" in (box.root / "var/log/bakery-bake.log").read_text()


def test_a_converge_that_keeps_asking_for_reboots_fails_after_five(sandbox_factory, alerts, aws):
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance, extra_env={"STUB_CHEF_EXIT": "37"})
    proc = box.run_userdata(bake_userdata(make_role(alerts), bake_id="20260101000000-loop00", release="1"))
    assert proc.returncode == 0, output(proc)
    for _ in range(5):
        [run] = boot_resume_units(box)
    assert run.returncode == 1
    tags = instance_tags(aws, bake_instance)
    assert tags["bakery:bootstrap"] == "failed"
    assert "still asks for a reboot (exit 37) after 5 reboots" in tags["bakery:bootstrap-detail"]
    assert boot_resume_units(box) == []  # nothing left to run at the next boot


def test_successful_bake_leaves_only_a_root_only_summary_log(sandbox_factory, alerts, aws):
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance)
    cloud_init_log = box.root / "var/log/cloud-init-output.log"
    cloud_init_log.parent.mkdir(parents=True)
    cloud_init_log.write_text("Chef diff: +password=hunter2\n")  # what cloud-init copies of the bake's output
    proc = box.run_userdata(bake_userdata(make_role(alerts), bake_id="20260101000000-logs00", release="1"))
    assert proc.returncode == 0, output(proc)
    summary = box.root / "var/log/bakery-bake.log"
    text = summary.read_text()
    assert "succeeded" in text and len(text.splitlines()) <= 3
    assert stat.S_IMODE(summary.stat().st_mode) == 0o600
    assert "converging node" not in text  # Chef's output is on the console only
    assert cloud_init_log.read_text() == ""
    assert not (box.root / "var/lib/bakery/bake.sh").exists()
    assert not (box.root / "tmp").exists() or list((box.root / "tmp").iterdir()) == []


def test_licensed_chef_fetches_its_key_with_the_instance_role_and_never_carries_it(sandbox_factory, alerts, aws,
                                                                                     installer_url):
    key = "LICENSE-free-trial-0123456789abcdef"
    aws["s3"].put_object(Bucket=BUCKET, Key="chef/license.txt", Body=(key + "\n").encode())
    role = make_role(alerts, distribution="chef", installer_url=installer_url,
                     license_key_s3=f"s3://{BUCKET}/chef/license.txt")
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance, chef_on_path=False)
    userdata = bake_userdata(role, bake_id="20260101000000-licens", release="1")

    proc = box.run_userdata(userdata, STUB_CHEF_SOURCE=str(SCRIPTS / "chef-client"), STUB_INSTALL_DIR=str(box.bin))

    assert proc.returncode == 0, output(proc)
    assert key not in userdata and key not in bake_script(role, bake_id="20260101000000-licens", release="1")
    assert (box.bin / "installed-project").read_text().strip() == "chef"
    assert INSTALLER_REQUESTS == [f"/install.sh?license_id={key}"]  # Chef's licensed download
    [call] = box.chef_calls()
    assert call.name == "chef-client" and call.license_key == key  # in chef-client's environment only
    leaked = [p for p in box.root.rglob("*") if p.is_file() and key in p.read_text(errors="replace")]
    assert leaked == []
    assert key not in proc.stdout


def test_preinstalled_client_missing_fails_clearly_without_downloading(sandbox_factory, alerts, aws, installer_url):
    role = make_role(alerts, preinstalled=True, installer_url=installer_url)  # type: ignore[arg-type]
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance, chef_on_path=False)
    proc = box.run_userdata(bake_userdata(role, bake_id="20260101000000-prein0", release="1"))
    assert proc.returncode != 0
    detail = instance_tags(aws, bake_instance)["bakery:bootstrap-detail"]
    assert "chef.preinstalled is true but cinc-client is neither on PATH nor in /opt/cinc/bin" in detail
    assert INSTALLER_REQUESTS == []


def test_a_failing_installer_leaves_nothing_in_tmp(sandbox_factory, alerts, aws, installer_url):
    role = make_role(alerts, installer_url=installer_url)
    bake_instance = new_instance(aws)
    box = sandbox_factory(bake_instance, chef_on_path=False)
    tmp = box.root / "tmp"
    tmp.mkdir()
    # No STUB_CHEF_SOURCE: the installer double exits 1, as a failed package install would.
    proc = box.run_userdata(bake_userdata(role, bake_id="20260101000000-inst00", release="1"), TMPDIR=str(tmp),
                            STUB_INSTALL_DIR=str(box.bin))
    assert proc.returncode != 0
    assert "the cinc installer exited 1" in instance_tags(aws, bake_instance)["bakery:bootstrap-detail"]
    assert list(tmp.iterdir()) == []
