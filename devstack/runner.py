"""The instance runner: plays EC2's part for moto instances, which run nothing by themselves.

A background thread describes the instances (one DescribeInstances for all instances of the region)
whenever one's state may have changed: it waits on the AMI layer's count of state changes
(:class:`devstack.hypervisor.Doorbell`), or every ``poll_interval`` seconds where there is no layer.
Each *running* instance it has not seen yet is "booted" once, in a worker thread, inside a sandbox
directory ``WORKDIR/INSTANCE_ID/``:

- ``root/`` is the instance's ``/`` (``BAKERY_ROOT``); ``console.log`` is its console; ``user-data``
  is the script it ran;
- an :class:`~devstack.imds.ImdsDouble` serves its metadata (``BAKERY_IMDS_URL``);
- the environment is clean: AWS variables pointing at moto with dummy credentials, and
  ``PATH`` = stub bin (``chef-client`` that talks to goiardi, no-op ``systemctl``...) + the venv's
  bin (the real ``aws`` CLI) + ``/usr/bin:/bin``.

Linux user data (``#!...``) runs as cloud-init would run it. An instance launched from an AMI tagged
``bakery:bake-id=X`` whose bake instance this runner executed boots from a copy of that bake
instance's root, runs its user data (if any), then ``etc/init.d/bakery-firstboot start`` if the image
has it -- what the init system does at boot. ``results[instance_id]`` records what happened.

Reboots (Linux). What the real system does: chef-client exits 35 ("reboot scheduled") or 37 ("reboot
needed") when a converge wants a reboot (Chef RFC 062, exit codes); the bake script then enables a
one-shot systemd unit and runs ``reboot``. At the next boot systemd starts every unit linked under
``multi-user.target.wants`` whose ``ConditionPathExists=`` holds (systemd.unit(5)); cloud-init does
not run a per-instance user data script again. Here the sandbox's ``reboot`` (a stub) only records the
call; when a script made one, the runner "reboots": it runs the ``ExecStart=`` of each such unit of
the root, nothing else, and repeats while reboots are asked for (at most ``MAX_REBOOTS``).

Windows (``<powershell>``) user data cannot run here (no PowerShell); for a *bake* instance the runner
plays the bake's documented sequence instead, after checking the script has its shape. What the real
system does (AWS EC2 User Guide, "Run commands on your Windows instance at launch" and "EC2Launch v2
task definitions"): EC2Launch v2 runs a ``<powershell>`` block attached -- it waits for it --
unless ``<detach>true</detach>``; exit 3010 makes it reboot and run the script again;
``ec2launch sysprep --block`` waits for EC2Launch v2's own run to end, so from an attached user data
script it can never return; ``--shutdown`` powers the instance off once it is generalized. The
played sequence: phase 1's converge runs the stub client against the Chef server with the bake
script's own settings (validator key from S3, ``client.rb``, the ``ami`` run list; an exit 35/37 is
"exit 3010": EC2Launch v2 reboots and the converge runs again; any other failure tags ``failed``
with the script's detail); phase 2 tags ``bakery:bootstrap=generalizing`` (+ detail), then sysprep
stops the instance (``StopInstances`` from here, as the shutdown would). With
``windows_sysprep_exit`` != 0 sysprep "fails": the instance tags ``failed`` and keeps running. A
user data without that shape (``--block``, ``<detach>``, no generalizing tag before sysprep) is tagged
``failed`` with the runner's reason, so a bake with a broken script fails as it would on EC2.

Boot tests (the bakery's ``boot-test`` stage). Linux: a test instance is launched from a baked AMI, so
it boots as above -- a copy of the bake's root, its user data (which only carries the
``# bakery:boot-test`` lines), then ``bakery-firstboot start``, whose real script reads those lines from
the IMDS double (``/latest/user-data``; 404 when an instance has none, as IMDS answers) and tags
``bakery:boot-test`` itself. Windows: the startup task's ``firstboot.ps1`` cannot run here, so its test
mode is played with the image's own settings (read from the bake script this runner played): the run
list and validator key from S3, ``client.rb`` with the user data's node name, the stub client with
``--why-run`` (unless ``why-run=no``) and ``-o`` for a run list override, then the ``bakery:boot-test``
tag, ``failed`` with the script's detail on a client failure. A health command (PowerShell) cannot be
run here: such a test is tagged ``failed`` saying so, never passed unchecked.

Whose instances. Tests share one moto per worker: a runner given an ``owner`` boots only instances
tagged ``devstack:test=OWNER`` (a test's catalogues carry it), and ``hold(tags)`` keeps the instances a
test wants never to boot (e.g. a boot test's instance that never answers). Termination: what EC2 does
(EC2 User Guide, "Instance state changes" and "Terminate Amazon EC2 instances"): a terminated instance
is shut down (``shutting-down``, then ``terminated``); nothing on it runs afterwards. So once an
instance is reported ``shutting-down``/``terminated``, the runner kills what its sandbox runs and
starts no further step of it.

Base image packages (Linux). A bake's root starts as a Debian 12 base image's package database:
``etc/os-release`` and ``var/lib/dpkg/status`` in dpkg's own format (deb-control(5) stanzas with
``Package``, ``Status: install ok installed``, ``Architecture``, ``Version``), which the bake script's
real ``dpkg-query --admindir`` reads, as on a Debian AMI. ``packages`` (name -> version, or
``name:arch`` -> version) is what that image holds; a test changes ``runner.packages`` between bakes to
play a new base image or a converge that installed something. One ``deinstall ok config-files`` entry
(a removed package whose configuration stays, as dpkg keeps it) is always there: it is not installed.

Two kinds of calls, two endpoints. What plays the hypervisor (finding running instances, reading
their user data and AMI, the OS shutting down at the end of sysprep) goes to ``ec2_endpoint``: on EC2
these are not API calls and see no eventual consistency. What the instance itself calls -- its
scripts' AWS CLI and the tags the played Windows scripts set -- goes to ``instance_endpoint`` (default:
the same), e.g. a proxy playing AWS's timing: on AWS an instance's own CreateTags right after boot can
answer ``InvalidInstanceID.NotFound`` like anyone's (EC2 API reference, "Eventual consistency"). The
played Windows tags therefore retry as the scripts' ``Invoke-Retry`` does (6 attempts, 2*i s apart).
"""

from __future__ import annotations

import base64
import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import awscli_zygote
from .hypervisor import (
    Doorbell,
    describe_instances,
    metadata_service,
    next_round,
    poll_round,
    read_console,
    wait_finished,
)
from .hypervisor import user_data as read_user_data
from .moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, aws_env
from .stub_chef_client import write_stub_bin

BAKE_ID_TAG = "bakery:bake-id"
PURPOSE_TAG = "bakery:purpose"
# Where an image's first-boot init script may be: Debian-style and Red Hat-style SysV paths.
FIRSTBOOT_SCRIPTS = ("etc/init.d/bakery-firstboot", "etc/rc.d/init.d/bakery-firstboot")
WANTS_DIR = "etc/systemd/system/multi-user.target.wants"
BOOT_TEST_MARK = b"# bakery:boot-test"  # the line that makes an instance's first boot a boot test
MAX_REBOOTS = 6
# What EC2 reports once an instance's OS is being shut down for good (TerminateInstances).
SHUT_DOWN_STATES = ("shutting-down", "terminated")
# The packages of the played Debian base image (see the module docstring): a few of debootstrap's minbase.
BASE_PACKAGES: dict[str, str] = {"base-files": "12.4+deb12u5", "bash": "5.2.15-2+b2", "coreutils": "9.1-1",
                                 "libc6:amd64": "2.36-9+deb12u4", "tzdata": "2024a-0+deb12u1"}
REMOVED_PACKAGE = ("nano", "7.2-1")
MAINTAINER = "Debian Developers <debian-devel@lists.debian.org>"  # deinstalled, config files kept: never in an inventory


def dpkg_status(packages: Mapping[str, str]) -> str:
    """A dpkg ``status`` file (deb-control(5) stanzas) for ``packages`` (``name[:arch]`` -> version)."""
    stanzas = []
    for spec, version in sorted(packages.items()):
        name, _, arch = spec.partition(":")
        stanzas.append(f"Package: {name}\nStatus: install ok installed\nPriority: required\n"
                       f"Maintainer: {MAINTAINER}\nArchitecture: {arch or 'all'}\nVersion: {version}\n"
                       f"Description: {name}\n")
    name, version = REMOVED_PACKAGE
    stanzas.append(f"Package: {name}\nStatus: deinstall ok config-files\nPriority: optional\n"
                   f"Maintainer: {MAINTAINER}\nArchitecture: amd64\nVersion: {version}\nDescription: {name}\n")
    return "\n".join(stanzas)


def seed_base_image(root: Path, packages: Mapping[str, str]) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").write_text(dpkg_status(packages))


# A runner given an ``owner`` boots only the instances tagged with it (see ``InstanceRunner``).
OWNER_TAG = "devstack:test"


@dataclass
class _Boot:
    """One instance being booted: what it is, where its sandbox is, and what happened so far."""

    iid: str
    image_id: str
    tags: dict[str, str]
    kind: str  # bake | launch | firstboot (a baked image whose bake this runner ran)
    baked_from: str | None  # the image's bake id
    box: Path
    root: Path
    console: Path
    result: dict[str, Any]


class InstanceRunner:
    """``with InstanceRunner(moto.url, "us-east-1", workdir) as runner: ... runner.wait(iid)``.

    ``owner``: boot only instances tagged ``devstack:test=OWNER`` (a test's own: its catalogue carries
    the tag, see :meth:`DevStack.catalog_data`), so that an instance another test launches on the same
    moto -- a leftover process, a bake still cleaning up -- is never booted as this test's. Without it,
    every instance that starts running after :meth:`start` is booted (the demo: one user, one stack).
    """

    def __init__(
        self,
        ec2_endpoint: str,
        region: str,
        workdir: str | os.PathLike[str],
        *,
        boot_delay: float = 0.0,
        # Without the AMI layer's count of state changes only (a plain moto): every poll is a
        # DescribeInstances (moto's answer and botocore's parsing), and half a second adds at most that
        # to a boot's start, which nothing waits on by the clock.
        poll_interval: float = 0.5,
        script_timeout: float = 600.0,
        extra_env: Mapping[str, str] | None = None,
        ignore_existing: bool = True,
        max_parallel: int = 8,
        windows_sysprep_exit: int = 0,
        instance_endpoint: str | None = None,
        credentials: tuple[str, str] | None = None,
        owner: str | None = None,
        hold: Callable[[dict[str, str]], bool] | None = None,
        packages: Mapping[str, str] | None = None,
    ):
        self.endpoint = ec2_endpoint
        # The hypervisor's own identity (an access key pair) on a moto enforcing IAM; dummy keys elsewhere.
        self.credentials = credentials or (DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY)
        self.instance_endpoint = instance_endpoint or ec2_endpoint
        self.region = region
        self.workdir = Path(workdir)
        self.boot_delay = boot_delay
        self.poll_interval = poll_interval
        self.script_timeout = script_timeout
        self.extra_env = dict(extra_env or {})
        self.ignore_existing = ignore_existing
        self.max_parallel = max_parallel
        self.windows_sysprep_exit = windows_sysprep_exit
        self.owner = owner
        self.hold = hold
        self.packages = dict(BASE_PACKAGES if packages is None else packages)  # read at each bake's boot
        self._halted: set[str] = set()  # instances terminated: no step of theirs starts any more
        self.stub_bin = self.workdir / "bin"
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []  # polling errors, for a test's failure message
        self._seen: set[str] = set()
        self._bake_roots: dict[str, Path] = {}  # bake id -> root of the bake instance we ran
        self._image_bake_ids: dict[str, str | None] = {}
        self._windows_scripts: dict[str, str] = {}  # bake id -> the Windows bake script played
        self._procs: dict[str, subprocess.Popen] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._doorbell = Doorbell(ec2_endpoint)
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ec2: Any = None
        self._instance_ec2: Any = None  # the instance's own EC2 calls (see the module docstring)
        self._s3: Any = None

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> InstanceRunner:
        from botocore.config import Config

        from ._boto import (  # test/demo plumbing: product code reaches AWS only through bakery_lib.aws
            client,
            session,
        )

        self.workdir.mkdir(parents=True, exist_ok=True)
        write_stub_bin(self.stub_bin)
        self._ec2 = session().client(
            "ec2", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.credentials[0], aws_secret_access_key=self.credentials[1],
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
        )
        self._instance_ec2 = session().client(
            "ec2", endpoint_url=self.instance_endpoint, region_name=self.region,
            aws_access_key_id=self.credentials[0], aws_secret_access_key=self.credentials[1],
            config=Config(retries={"max_attempts": 5, "mode": "legacy"}, max_pool_connections=32),
        )
        self._s3 = client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.credentials[0], aws_secret_access_key=self.credentials[1])
        if self.ignore_existing:
            # Instances left by earlier tests or runs on a shared moto are not ours to boot.
            self._seen.update(i["InstanceId"] for i in describe_instances(self._ec2, self._filters()))
        self._pool = ThreadPoolExecutor(self.max_parallel, thread_name_prefix="instance")
        self._thread = threading.Thread(target=self._poll_loop, name="instance-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._doorbell.close()
        with self._cond:
            procs = list(self._procs.values())
        for proc in procs:
            _kill_group(proc)
        if self._thread is not None:
            self._thread.join(10)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> InstanceRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests and the demo read ---------------------------------------------------------------
    def wait(self, instance_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The result of booting ``instance_id``, waiting for it to be finished."""
        return wait_finished(self._cond, self.results, instance_id, timeout, every=0.5, why_not=lambda: (
            f"instance runner: {instance_id} not finished after {timeout:.0f}s: "
            f"{self.results.get(instance_id, {'state': 'not seen (is it running?)'})}; "
            f"polling errors: {self.errors[-3:]}"))

    def console(self, instance_id: str) -> str:
        """The instance's console output so far ("" when it never booted)."""
        return read_console(self.workdir / instance_id / "console.log")

    def root(self, instance_id: str) -> Path:
        return self.workdir / instance_id / "root"

    # --- polling ------------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        seen = self._doorbell.count()
        while not self._stop.is_set():
            poll_round(self._ec2, self._consider, self.errors, self._filters())
            seen = next_round(self._doorbell, self._stop, seen, self.poll_interval)

    def _filters(self) -> list[dict[str, Any]]:
        """Only the owner's instances, when the runner has one (see :func:`describe_instances`)."""
        return [{"Name": f"tag:{OWNER_TAG}", "Values": [self.owner]}] if self.owner else []

    def _owns(self, instance: dict[str, Any]) -> bool:
        if self.owner is None:
            return True
        return any(t["Key"] == OWNER_TAG and t["Value"] == self.owner for t in instance.get("Tags") or [])

    def _consider(self, instance: dict[str, Any]) -> None:
        """Boot a running instance once, if it is ours; another owner's is never looked at again."""
        iid = instance["InstanceId"]
        state = instance.get("State", {}).get("Name")
        if state in SHUT_DOWN_STATES:
            self._shut_down(iid, state)
        if iid in self._seen or state != "running":
            return
        self._seen.add(iid)  # tags come with RunInstances (TagSpecifications): ownership never changes
        if not self._owns(instance):
            return
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
        with self._cond:
            self.results[iid] = {"kind": "booting", "running": True, "exit_code": None,
                                 "root": str(self.root(iid)), "console": str(self.workdir / iid / "console.log")}
            if self.hold is not None and self.hold(tags):
                self.results[iid].update(kind="held", running=False, detail="held by the test: never booted")
                self._cond.notify_all()
                return
        assert self._pool is not None
        self._pool.submit(self._boot_guarded, instance)

    def _shut_down(self, iid: str, state: str) -> None:
        """A terminated instance's OS is shut down: what its scripts were running dies with it."""
        with self._cond:
            if iid in self._halted:
                return
            self._halted.add(iid)
            proc = self._procs.get(iid)
        if proc is not None:
            self._note(self.workdir / iid / "console.log", f"instance {state}: the OS shuts down, its processes end")
            _kill_group(proc)

    # --- one boot -----------------------------------------------------------------------------------
    def _boot_guarded(self, instance: dict[str, Any]) -> None:
        iid = instance["InstanceId"]
        result: dict[str, Any]
        try:
            result = self._boot(instance)
        except Exception as exc:  # recorded, never lost in a worker thread
            result = {"kind": "error", "exit_code": None, "detail": f"{type(exc).__name__}: {exc}"}
        with self._cond:
            self.results[iid].update(result)
            self.results[iid]["running"] = False
            self._cond.notify_all()

    def _image_bake_id(self, image_id: str) -> str | None:
        if image_id not in self._image_bake_ids:
            try:
                images = self._ec2.describe_images(ImageIds=[image_id])["Images"]
            except Exception:
                images = []
            tags = {t["Key"]: t["Value"] for t in (images[0].get("Tags") or [])} if images else {}
            self._image_bake_ids[image_id] = tags.get(BAKE_ID_TAG)
        return self._image_bake_ids[image_id]

    def _boot(self, instance: dict[str, Any]) -> dict[str, Any]:
        boot = self._prepare(instance)
        if self.boot_delay and self._stop.wait(self.boot_delay):
            return {**boot.result, "kind": "skipped", "detail": "runner stopped during boot delay"}
        try:
            user_data = read_user_data(self._ec2, boot.iid)
        except Exception as exc:  # e.g. terminated and gone meanwhile
            return {**boot.result, "kind": "skipped", "detail": f"cannot read user data: {exc}"}
        self._note(boot.console, f"{boot.iid} booting ({boot.kind}) from {boot.image_id}, root {boot.root}")
        stripped = (user_data or b"").lstrip()
        if stripped[:12].lower() == b"<powershell>" or stripped[:8].lower() == b"<script>":
            return {**boot.result, **self._boot_windows(boot, stripped)}
        return self._boot_linux(boot, instance, user_data, stripped)

    def _prepare(self, instance: dict[str, Any]) -> _Boot:
        """The instance's sandbox: a copy of its bake's root for a baked image we ran, else empty."""
        iid = instance["InstanceId"]
        image_id = instance.get("ImageId", "")
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
        box = self.workdir / iid
        box.mkdir(parents=True, exist_ok=True)
        root = box / "root"
        baked_from = self._image_bake_id(image_id) if image_id else None
        source_root = self._bake_roots.get(baked_from) if baked_from else None
        if source_root is not None:
            kind = "firstboot"
            shutil.copytree(source_root, root, symlinks=True)
        else:
            kind = "bake" if tags.get(PURPOSE_TAG) == "bake" else "launch"
            root.mkdir(parents=True, exist_ok=True)
            seed_base_image(root, self.packages)
        (root / "root").mkdir(exist_ok=True)
        result: dict[str, Any] = {"kind": kind, "exit_code": None, "image_id": image_id, "steps": [],
                                  "detail": ""}
        if baked_from and source_root is None:
            result["detail"] = (f"image {image_id} is a baked AMI (bake id {baked_from}) whose bake this "
                                "runner did not run: booted from an empty root")
        return _Boot(iid, image_id, tags, kind, baked_from, box, root, box / "console.log", result)

    def _boot_windows(self, boot: _Boot, user_data: bytes) -> dict[str, Any]:
        if BOOT_TEST_MARK in [line.strip() for line in user_data.splitlines()]:
            return self._play_windows_boot_test(boot.iid, boot.baked_from, user_data, boot.root, boot.console)
        if boot.kind == "bake" and BAKE_ID_TAG in boot.tags:
            self._windows_scripts[boot.tags[BAKE_ID_TAG]] = _unpacked_ps(user_data.decode("utf-8", "replace"))
        return self._windows_boot(boot.iid, boot.kind, user_data, boot.root, boot.console)

    def _boot_linux(self, boot: _Boot, instance: dict[str, Any], user_data: bytes | None,
                    stripped: bytes) -> dict[str, Any]:
        """cloud-init's part (the user data script, then reboots it asked for), then the init system's
        (``bakery-firstboot start`` on an image whose bake we ran)."""
        result = boot.result
        if user_data and not stripped.startswith(b"#!"):
            self._note(boot.console, "user data is not a script (cloud-config/MIME): not executed")
            result["detail"] = "user data is not a #! script: not executed"
            user_data = None
        if boot.kind == "bake" and BAKE_ID_TAG in boot.tags:
            # Remembered before the run: the image is made from this root after the run succeeds.
            self._bake_roots.setdefault(boot.tags[BAKE_ID_TAG], boot.root)
        imds = metadata_service(instance, self.region, user_data)
        before = len(self._stub_calls(boot.root))  # an image's root carries its bake's calls
        try:
            env = self._env(boot.root, imds.url)
            if user_data is not None:
                self._run_user_data(boot, user_data, env)
            if boot.kind == "firstboot" and not result["exit_code"]:
                self._run_firstboot(boot, env)
        finally:
            imds.stop()
        result["imds_requests"] = len(imds.requests)
        self._power_off_if_asked(boot, self._stub_calls(boot.root)[before:])
        return result

    @staticmethod
    def _stub_calls(root: Path) -> list[str]:
        log = root / "var/log/stub-commands.log"
        return log.read_text(errors="replace").splitlines() if log.exists() else []

    def _power_off_if_asked(self, boot: _Boot, lines: list[str]) -> None:
        """A script ran ``poweroff`` (or ``halt``, ``shutdown -h``/``-P``): the OS goes down and EC2 moves
        the instance as its InstanceInitiatedShutdownBehavior says (the bakery launches with ``stop``; EC2
        User Guide, "Change the instance initiated shutdown behavior"). The sandbox's stub only records the
        call; here the runner stops the instance, so the bakery sees it stopped, as on EC2."""
        asked = any(ln.split(" ", 1)[0] in ("poweroff", "halt")
                    or (ln.startswith("shutdown ") and not {"-r", "--reboot"} & set(ln.split()[1:]))
                    for ln in lines)
        if not asked or boot.iid in self._halted:
            return
        self._note(boot.console, "the OS powered off: the instance stops (InstanceInitiatedShutdownBehavior stop)")
        try:
            behaviour = self._ec2.describe_instance_attribute(
                InstanceId=boot.iid, Attribute="instanceInitiatedShutdownBehavior")
            value = behaviour.get("InstanceInitiatedShutdownBehavior", {}).get("Value", "stop")
            if value == "terminate":
                self._ec2.terminate_instances(InstanceIds=[boot.iid])
            else:
                self._ec2.stop_instances(InstanceIds=[boot.iid])
        except Exception as exc:  # terminated meanwhile: nothing left to stop
            self._note(boot.console, f"power off: {type(exc).__name__}: {exc}")

    def _run_user_data(self, boot: _Boot, user_data: bytes, env: dict[str, str]) -> None:
        script = boot.box / "user-data"
        script.write_bytes(user_data)
        script.chmod(0o700)
        first_line = user_data.split(b"\n", 1)[0]
        cmd = ["bash", str(script)] if (b"sh" in first_line.split(b"/")[-1]) else [str(script)]
        result = boot.result
        code = self._exec(boot.iid, cmd, boot.root, env, boot.console, "user data")
        result["steps"].append({"step": "user-data", "exit_code": code})
        result["exit_code"] = code
        result["exit_code"] = self._reboots(boot.iid, boot.root, env, boot.console, result)

    def _run_firstboot(self, boot: _Boot, env: dict[str, str]) -> None:
        root = boot.root
        init = next((root / p for p in FIRSTBOOT_SCRIPTS if (root / p).is_file()), None)
        if init is None:
            self._note(boot.console, "no etc/init.d/bakery-firstboot in the image: nothing to start")
            return
        code = self._exec(boot.iid, [str(init), "start"], root, env, boot.console, f"{init.relative_to(root)} start")
        boot.result["steps"].append({"step": "firstboot", "exit_code": code})
        boot.result["exit_code"] = code

    # --- reboots (Linux) -------------------------------------------------------------------------------
    @staticmethod
    def _reboot_calls(root: Path) -> int:
        log = root / "var/log/stub-commands.log"
        if not log.exists():
            return 0
        return sum(1 for line in log.read_text(errors="replace").splitlines() if line.split(" ", 1)[0] == "reboot")

    def _boot_units(self, root: Path) -> list[list[str]]:
        """ExecStart of each unit systemd would start at boot (enabled, condition met), mapped into root."""
        wants = root / WANTS_DIR
        commands = []
        for link in sorted(wants.glob("*.service")) if wants.is_dir() else []:
            unit_path = root / os.readlink(link).lstrip("/") if link.is_symlink() else link
            try:
                lines = unit_path.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            conds = [ln.split("=", 1)[1].strip() for ln in lines if ln.startswith("ConditionPathExists=")]
            if any(not (root / c.lstrip("/")).exists() for c in conds):
                continue
            for ln in lines:
                if ln.startswith("ExecStart="):
                    argv = ln.split("=", 1)[1].split()
                    commands.append([str(root / a.lstrip("/")) if a.startswith("/") and not
                                     a.startswith(("/bin/", "/usr/bin/")) else a for a in argv])
        return commands

    def _reboots(self, iid: str, root: Path, env: dict[str, str], console: Path, result: dict[str, Any]) -> int:
        """While the last script asked for a reboot: "reboot" and run what systemd starts at boot."""
        code = result["exit_code"]
        seen = 0
        for n in range(1, MAX_REBOOTS + 1):
            calls = self._reboot_calls(root)
            if calls <= seen or code != 0:
                break
            seen = calls
            self._note(console, f"reboot {n} requested: booting again (systemd units of the root)")
            for argv in self._boot_units(root):
                code = self._exec(iid, argv, root, env, console, " ".join(argv[-1:]))
                result["steps"].append({"step": f"reboot-{n}", "exit_code": code})
        result["reboots"] = seen
        return code

    # --- Windows bake: played, not executed ------------------------------------------------------------
    def _windows_boot(self, iid: str, kind: str, user_data: bytes, root: Path, console: Path) -> dict[str, Any]:
        if kind == "bake" and user_data[:12].lower() == b"<powershell>":
            return self._play_windows_bake(iid, user_data, root, console)
        self._note(console, "Windows user data: cannot be executed here, skipped")
        return {"kind": "skipped", "detail": "Windows user data (<powershell>) is not executed"}

    def _play_windows_bake(self, iid: str, user_data: bytes, root: Path, console: Path) -> dict[str, Any]:
        problem = _windows_bake_problem(user_data)
        if problem:
            problem = f"instance runner: {problem}"
        else:
            problem = self._play_windows_converge(iid, user_data, root, console)
        tag = lambda status, detail: self._tag_self(iid, "bakery:bootstrap", status, detail)  # noqa: E731
        if problem:
            self._note(console, f"Windows bake user data refused: {problem}")
            tag("failed", problem)
            return {"kind": "windows-bake", "exit_code": 1, "detail": problem}
        self._note(console, "Windows bake played: phase 1 (attached converge) converged; phase 2 tags generalizing")
        tag("generalizing", "ami run list converged; first boot installed; sysprep started (played by the runner)")
        if self.windows_sysprep_exit:
            detail = f"ec2launch sysprep exited {self.windows_sysprep_exit} (step: generalizing with EC2Launch v2 sysprep)"
            self._note(console, f"sysprep failed: {detail}")
            tag("failed", detail)
            return {"kind": "windows-bake", "exit_code": 1, "detail": detail}
        self._note(console, "ec2launch sysprep --clean --shutdown: generalized, shutting down")
        self._ec2.stop_instances(InstanceIds=[iid])
        return {"kind": "windows-bake", "exit_code": 0, "detail": "tagged generalizing, then stopped itself"}

    def _play_windows_converge(self, iid: str, user_data: bytes, root: Path, console: Path) -> str:
        """Phase 1's converge as bake.ps1 runs it, with the stub client against the Chef server: the
        validator key from S3, client.rb, the ``ami`` run list; 35/37 -> "exit 3010" -> run again.
        Returns "" or the failure detail the script would tag."""
        script = _unpacked_ps(user_data.decode("utf-8", errors="replace"))
        names = ("ChefServerUrl", "ChefValidator", "ValidatorBucket", "ValidatorKey", "NodeName", "RunList", "ChefBin")
        v = {n: _ps_value(script, n) for n in names}
        if None in v.values():
            return f"cannot read {[n for n, x in v.items() if x is None]} from the bake script"
        chef = root / "chef"
        chef.mkdir(parents=True, exist_ok=True)
        validator = chef / "validation.pem"
        body = self._s3.get_object(Bucket=v["ValidatorBucket"], Key=v["ValidatorKey"])["Body"].read()
        validator.write_bytes(body)
        validator.chmod(0o600)
        rb = [f"chef_server_url '{v['ChefServerUrl']}'", f"node_name '{v['NodeName']}'",
              f"validation_client_name '{v['ChefValidator']}'", "validation_key '/chef/validation.pem'",
              "client_key '/chef/client.pem'", "log_location STDOUT"]
        (chef / "client.rb").write_text("\n".join(rb) + "\n", encoding="utf-8")
        argv = [str(self.stub_bin / str(v["ChefBin"])), "-c", str(chef / "client.rb"), "-o", str(v["RunList"])]
        env = self._env(root, "http://127.0.0.1:9")  # the converge itself needs no metadata
        code = -1
        for run in range(1, MAX_REBOOTS + 1):
            code = self._exec(iid, argv, root, env, console, f"phase 1 converge (run {run})")
            if code not in (35, 37):
                break
            self._note(console, f"{v['ChefBin']} exited {code}: exit 3010, EC2Launch v2 reboots and runs the bake again")
        validator.unlink(missing_ok=True)
        (chef / "client.pem").unlink(missing_ok=True)
        return "" if code == 0 else f"{v['ChefBin']} exited {code} running the ami run list {v['RunList']}"

    # --- Windows boot test: played, not executed -------------------------------------------------------
    def _play_windows_boot_test(self, iid: str, baked_from: str | None, user_data: bytes, root: Path,
                                console: Path) -> dict[str, Any]:
        """firstboot.ps1 in test mode (see the module docstring); tags bakery:boot-test as it would."""
        lines = user_data.decode("utf-8", errors="replace").splitlines()
        setting = {ln.split("=", 1)[0][len("# bakery:boot-test-"):]: ln.split("=", 1)[1].strip()
                   for ln in lines if ln.startswith("# bakery:boot-test-") and "=" in ln}

        def tag(status: str, detail: str) -> dict[str, Any]:
            self._tag_self(iid, "bakery:boot-test", status, detail)
            self._note(console, f"Windows boot test played: {status}: {detail}")
            return {"kind": "windows-boot-test", "exit_code": 0 if status == "passed" else 1, "detail": detail}

        script = self._windows_scripts.get(baked_from or "")
        if script is None:
            self._note(console, "Windows boot test: the image's bake was not played here: its first boot cannot be")
            return {"kind": "skipped", "detail": "Windows image whose bake this runner did not play"}
        names = ("ChefServerUrl", "ChefValidator", "ValidatorBucket", "ValidatorKey", "ChefBin", "RunlistBucket",
                 "RunlistKey")
        v = {n: _ps_value(script, n) for n in names}
        if None in v.values():
            return tag("failed", f"instance runner: cannot read {[n for n, x in v.items() if x is None]} from the image")
        run_list = base64.b64decode(setting.get("run-list", "")).decode()
        command = base64.b64decode(setting.get("command", "")).decode()
        chef = root / "chef"
        chef.mkdir(parents=True, exist_ok=True)
        try:
            body = self._s3.get_object(Bucket=v["RunlistBucket"], Key=v["RunlistKey"])["Body"].read()
        except Exception as exc:  # what Read-S3Object would throw, as the script reports it
            return tag("failed", f"the run list s3://{v['RunlistBucket']}/{v['RunlistKey']} is missing or unreadable: "
                                 f"{exc} (step: fetching the run list)")
        (chef / "first-boot.json").write_bytes(body)
        validator = chef / "validation.pem"
        validator.write_bytes(self._s3.get_object(Bucket=v["ValidatorBucket"], Key=v["ValidatorKey"])["Body"].read())
        rb = [f"chef_server_url '{v['ChefServerUrl']}'", f"node_name '{setting.get('node', '')}'",
              f"validation_client_name '{v['ChefValidator']}'", "validation_key '/chef/validation.pem'",
              "client_key '/chef/client.pem'", "log_location STDOUT"]
        (chef / "client.rb").write_text("\n".join(rb) + "\n", encoding="utf-8")
        extra = ([] if setting.get("why-run") == "no" else ["--why-run"]) + (["-o", run_list] if run_list else [])
        argv = [str(self.stub_bin / str(v["ChefBin"])), "-c", str(chef / "client.rb"), "-j",
                str(chef / "first-boot.json"), *extra]
        code = self._exec(iid, argv, root, self._env(root, "http://127.0.0.1:9"), console, "first boot (boot test)")
        validator.unlink(missing_ok=True)
        mode = "".join(f" {a}" for a in extra)
        if code != 0:
            return tag("failed", f"{v['ChefBin']}{mode} exited {code} (step: running {v['ChefBin']}{mode})")
        if command:
            return tag("failed", "instance runner: a PowerShell health command cannot be run here "
                                 "(step: boot test: running the health command)")
        return tag("passed", f"{v['ChefBin']}{mode} succeeded as {setting.get('node', '')}")

    def _tag_self(self, iid: str, key: str, status: str, detail: str) -> None:
        """``Set-ResultTag`` of bakery-lib.ps1: New-EC2Tag in ``Invoke-Retry`` (6 attempts, 2*i s apart)."""
        tags = [{"Key": key, "Value": status}, {"Key": f"{key}-detail", "Value": detail[:255]}]
        for attempt in range(1, 7):
            try:
                self._instance_ec2.create_tags(Resources=[iid], Tags=tags)
                return
            except Exception:  # what Invoke-Retry catches: any error, the last one rethrown
                if attempt == 6 or self._stop.wait(2 * attempt):
                    raise

    def _env(self, root: Path, imds_url: str) -> dict[str, str]:
        venv_bin = os.path.dirname(sys.executable)
        env = {
            # The real AWS CLI, forked warm per call (devstack.awscli_zygote), ahead of the venv's.
            "PATH": os.pathsep.join([str(self.stub_bin), *awscli_zygote.path_dirs(), venv_bin, "/usr/bin", "/bin"]),
            "HOME": str(root / "root"),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "BAKERY_ROOT": str(root),
            "BAKERY_IMDS_URL": imds_url,
            **aws_env(self.instance_endpoint, self.region),
        }
        env.update(self.extra_env)
        return env

    def _note(self, console: Path, text: str) -> None:
        with console.open("a", encoding="utf-8") as fh:
            fh.write(f"[instance-runner] {text}\n")

    def _exec(self, iid: str, cmd: list[str], cwd: Path, env: dict[str, str], console: Path, what: str) -> int:
        if self._stop.is_set() or iid in self._halted:
            return -1
        with console.open("ab") as fh:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        with self._cond:
            self._procs[iid] = proc
            if iid in self._halted:  # terminated while this step was starting
                _kill_group(proc)
        started = time.monotonic()
        try:
            code = proc.wait(self.script_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = proc.wait()
            self._note(console, f"{what} killed after {self.script_timeout:.0f}s")
        finally:
            with self._cond:
                self._procs.pop(iid, None)
        self._note(console, f"{what} exited with status {code} after {time.monotonic() - started:.1f}s")
        return code


def _ps_value(script: str, name: str) -> str | None:
    """The value of ``$Name = '...'`` in a rendered PowerShell script (a verbatim string: '' is ')."""
    m = re.search(rf"^\${name} = '((?:[^']|'')*)'$", script, re.M)
    return m.group(1).replace("''", "'") if m else None


def _unpacked_ps(text: str) -> str:
    packed = re.search(r"\$Packed = '([A-Za-z0-9+/=\s]+)'", text)
    return gzip.decompress(base64.b64decode("".join(packed.group(1).split()))).decode() if packed else text


def _windows_bake_problem(user_data: bytes) -> str:
    """Why EC2Launch v2 would not carry this bake through (see the module docstring), or ""."""
    text = user_data.decode("utf-8", errors="replace")
    if "<detach>" in text.lower():
        return "<detach> detaches the whole user data: the converge's exit 3010 (reboot) would be ignored"
    try:
        script = _unpacked_ps(text)
    except (ValueError, OSError, EOFError) as exc:
        return f"the packed bake script does not unpack: {exc}"
    sysprep = script.find("& $ec2launch sysprep --clean --shutdown")
    tagged = script.find("Set-BootstrapTag 'generalizing'")
    if "--block" in (text + script).replace("No --block", ""):
        return "ec2launch sysprep --block in a script EC2Launch v2 waits for never returns (deadlock)"
    if sysprep < 0:
        return "no '& $ec2launch sysprep --clean --shutdown': the image would not be generalized"
    if tagged < 0 or tagged > sysprep:
        return "bakery:bootstrap=generalizing is not tagged before sysprep shuts the instance down"
    if "exit 3010" not in script:
        return "a converge that asks for a reboot (chef-client 35/37) is not mapped to exit 3010"
    return ""


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
