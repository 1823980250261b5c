"""The real-init instance runner: each moto instance boots a Debian 12 under systemd and cloud-init.

Same interface as :class:`devstack.runner.InstanceRunner` (a context manager started around a test;
``wait``, ``console``, ``root``, ``results``, ``errors``), but nothing is played: an instance is
``systemd-nspawn -b`` of its own tree, systemd 252 is PID 1, Debian's cloud-init runs its user data.

- An AMI is a stack of read-only directory layers. A base AMI (any image this runner did not make)
  is a base of :mod:`devstack.realinit_base` (``nocli`` or ``awscli``, per image id through
  ``variants``, else ``default_variant``). An image whose ``bakery:bake-id`` tag names a bake
  instance this runner booted is that instance's tree: its own layer on top of its AMI's layers --
  CreateImage of a stopped instance is a snapshot.
- An instance is an overlay (its own upper layer on its AMI's layers). Before its first boot the
  runner writes what EC2 would hand it: the NoCloud seed (``/var/lib/cloud/seed/nocloud/meta-data``
  with ``instance-id``, and ``user-data``, empty when it has none), and, like the link-local metadata
  address of an EC2 instance, a systemd manager drop-in
  ``/etc/systemd/system.conf.d/90-bakery-test.conf`` whose ``DefaultEnvironment=`` gives every unit
  (cloud-final, the first-boot unit, a bake's resume unit) ``BAKERY_IMDS_URL`` = this instance's own
  :class:`~devstack.imds.ImdsDouble` (its own instance id, AMI, region, user data), the AWS endpoint
  (``AWS_ENDPOINT_URL``, moto or ``instance_endpoint``), dummy credentials and
  ``AWS_EC2_METADATA_DISABLED=true``. Nothing in the container is pointed at 169.254.169.254:
  cloud-init's only data source is NoCloud (the seed), the CLI has static credentials.
- The container shares the host's network namespace (nspawn's default without ``--private-network``),
  so the loopback services (moto, goiardi, the IMDS doubles) are reachable as 127.0.0.1.
- Power: a ``poweroff`` inside (nspawn exits 0) is an instance-initiated shutdown: the runner stops
  the instance in moto, as EC2 does with the default shutdown behaviour ``stop``. A ``reboot`` inside
  makes nspawn exit 133 (systemd-nspawn(1): "If the container reboots, exits with 133"): the runner
  boots the same tree again. StopInstances/TerminateInstances seen by the poll: SIGTERM to nspawn,
  which powers the container off in order (``--kill-signal`` defaults to SIGRTMIN+3 with ``-b``).
  A stop the container does not finish within :data:`STOP_GRACE` (a halt job that fails on a starved
  machine leaves systemd up) ends as EC2 ends a graceful shutdown that does not complete: forcibly (a
  second SIGTERM, "Send SIGTERM again to trigger immediate termination", nspawn says), noted on the
  console. StartInstances of a stopped instance boots its tree again (a second boot).

Booting here (systemd 252, no systemd on the host, root): ``systemd-nspawn --register=no --keep-unit
-q -b -D TREE`` works as is -- found out on this machine kind: ``--register=no`` because no machined
runs on the host, ``--keep-unit`` because there is no host manager to make a scope (without it even a
non-booting nspawn fails "Failed to open system bus"); the default console (a pseudo-TTY whose output
nspawn copies to its stdout, here the console file) shows the boot, while ``--console=pipe`` showed
nothing of it; ``SYSTEMD_NSPAWN_LOCK=0``: the trees are overlays the runner owns, nspawn's image lock
is not needed; ``--private-users`` is not needed (root, no user namespace). The harmless "Attempted to
remove disk file system under /run/systemd/nspawn/propagate" at exit is nspawn cleaning up. The repository is bind-mounted read-only at
``/opt/bakery-test/src`` and the venv's packages at ``/opt/bakery-test/site-packages`` for the stub
Chef client of the base (see :mod:`devstack.realinit_base`).

``results[iid]``: ``kind`` (bake, firstboot, launch), ``running`` (booted and not powered off),
``boots`` (how many times nspawn booted it), ``exit_code`` (nspawn's last), ``root`` and ``console``.
``wait(iid)`` returns once the instance is powered off; ``wait_until(iid, what, check)`` once a condition
on the runner (a console line, a file in the tree) holds, checked on each poll round and at least
once a second.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hypervisor import (
    Doorbell,
    describe_instances,
    metadata_service,
    next_round,
    poll_round,
    read_console,
    user_data,
    wait_finished,
)
from .imds import ImdsDouble
from .moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, aws_env
from .realinit_base import REPO_ROOT, SITE_MOUNT, SRC_MOUNT, base_layers, mount_overlay, site_packages, umount

BAKE_ID_TAG = "bakery:bake-id"
PURPOSE_TAG = "bakery:purpose"
REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container rebooted
MAX_BOOTS = 12  # a container that keeps rebooting is stopped here
# How long a stopped instance's orderly shutdown may take before the runner forces it (EC2 shuts down
# forcibly a stop whose graceful OS shutdown does not complete: StopInstances, ``Force``).
STOP_GRACE = 120.0


@dataclass
class _Instance:
    iid: str
    box: Path
    layers: list[Path]  # its AMI's layers, top first
    kind: str
    imds: ImdsDouble | None = None
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    want_off: threading.Event = field(default_factory=threading.Event)
    off: threading.Event = field(default_factory=threading.Event)

    @property
    def upper(self) -> Path:
        return self.box / "upper"

    @property
    def merged(self) -> Path:
        return self.box / "root"

    @property
    def console(self) -> Path:
        return self.box / "console.log"


class RealInitRunner:
    """``with RealInitRunner(moto.url, "us-east-1", workdir) as runner: ... runner.wait(iid)``."""

    def __init__(
        self,
        ec2_endpoint: str,
        region: str,
        workdir: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        extra_env: Mapping[str, str] | None = None,
        ignore_existing: bool = True,
        instance_endpoint: str | None = None,
        default_variant: str = "awscli",
        variants: Mapping[str, str] | None = None,
    ):
        self.endpoint = ec2_endpoint
        self.instance_endpoint = instance_endpoint or ec2_endpoint
        self.region = region
        self.workdir = Path(workdir)
        self.poll_interval = poll_interval
        self.extra_env = dict(extra_env or {})
        self.ignore_existing = ignore_existing
        self.default_variant = default_variant
        self.variants = dict(variants or {})
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._instances: dict[str, _Instance] = {}
        self._ignored: set[str] = set()
        self._bake_instances: dict[str, _Instance] = {}  # bake id -> its bake instance
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._doorbell = Doorbell(ec2_endpoint)
        self._thread: threading.Thread | None = None
        self._ec2: Any = None

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> RealInitRunner:
        from ._boto import client  # test/demo plumbing, as in devstack.runner

        self.workdir.mkdir(parents=True, exist_ok=True)
        for variant in {self.default_variant, *self.variants.values()}:
            base_layers(variant)  # built (or found in the cache) before any instance waits on it
        self._ec2 = client(
            "ec2", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)
        if self.ignore_existing:
            self._ignored.update(i["InstanceId"] for i in describe_instances(self._ec2))
        self._thread = threading.Thread(target=self._poll_loop, name="realinit-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._doorbell.close()
        if self._thread is not None:
            self._thread.join(30)
        with self._cond:
            instances = list(self._instances.values())
        for inst in instances:
            inst.want_off.set()
            _terminate(inst.proc)
        for inst in instances:
            if inst.thread is not None:
                inst.thread.join(60)
            umount(inst.merged)

    def __enter__(self) -> RealInitRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests read ----------------------------------------------------------------------------
    def wait(self, instance_id: str, timeout: float = 300.0) -> dict[str, Any]:
        """The instance's record once it is powered off (after a stop, terminate or its own poweroff)."""
        return wait_finished(self._cond, self.results, instance_id, timeout, every=1.0, why_not=lambda: (
            f"real-init runner: {instance_id} still running after {timeout:.0f}s: "
            f"{self.results.get(instance_id)}; errors: {self.errors[-3:]}"))

    def wait_until(self, instance_id: str, what: str, check: Callable[[RealInitRunner], bool],
                   timeout: float = 300.0) -> None:
        """Until ``check(self)`` holds (an event, e.g. a line on the console or a file in the tree, never
        a sleep: checked on each poll round, and at least once a second as the runner's rounds now wait
        on instance state changes); ``what`` names it in the timeout's message."""
        deadline = time.monotonic() + timeout
        while not check(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"real-init runner: {what} not seen on {instance_id} after {timeout:.0f}s; "
                                   f"errors: {self.errors[-3:]}; console:\n{self.console(instance_id)[-4000:]}")
            with self._cond:
                self._cond.wait(1.0)

    def console(self, instance_id: str) -> str:
        return read_console(self.workdir / instance_id / "console.log")

    def root(self, instance_id: str) -> Path:
        """The instance's ``/``: its live tree while booted, a read-only view of it when off."""
        return self.workdir / instance_id / "root"

    # --- polling ------------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        seen = self._doorbell.count()
        while not self._stop.is_set():
            poll_round(self._ec2, self._observe, self.errors)
            with self._cond:
                self._cond.notify_all()  # wait_for() checks its file on each round
            seen = next_round(self._doorbell, self._stop, seen, self.poll_interval)

    def _observe(self, instance: dict[str, Any]) -> None:
        iid = instance["InstanceId"]
        state = instance.get("State", {}).get("Name")
        if iid in self._ignored:
            return
        inst = self._instances.get(iid)
        if state == "running":
            if inst is None:
                inst = self._new_instance(instance)
                if inst is None:
                    return
            if inst.thread is None or not inst.thread.is_alive():
                inst.want_off.clear()
                inst.off.clear()
                with self._cond:
                    self.results[iid]["running"] = True
                inst.thread = threading.Thread(target=self._power_on_guarded, args=(inst, instance),
                                               name=f"boot-{iid}", daemon=True)
                inst.thread.start()
        elif inst is not None and state in ("stopping", "stopped", "shutting-down", "terminated"):
            if not inst.want_off.is_set():
                inst.want_off.set()
                _terminate(inst.proc)

    def _new_instance(self, instance: dict[str, Any]) -> _Instance | None:
        iid = instance["InstanceId"]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
        platform = (instance.get("Platform") or "").lower()
        if platform == "windows":
            self._ignored.add(iid)
            with self._cond:
                self.results[iid] = {"kind": "skipped", "running": False, "detail": "Windows: not booted here"}
                self._cond.notify_all()
            return None
        image_id = instance.get("ImageId", "")
        source = self._source_of(image_id)
        if source is not None:
            if not source.off.is_set():
                return None  # CreateImage of a stopped instance: its tree must be at rest (next round)
            kind = "firstboot"
            layers = [source.upper, *source.layers]
        else:
            kind = "bake" if tags.get(PURPOSE_TAG) == "bake" else "launch"
            layers = base_layers(self.variants.get(image_id, self.default_variant))
        inst = _Instance(iid=iid, box=self.workdir / iid, layers=layers, kind=kind)
        for d in (inst.upper, inst.box / "work", inst.merged):
            d.mkdir(parents=True, exist_ok=True)
        if kind == "bake" and BAKE_ID_TAG in tags:
            self._bake_instances.setdefault(tags[BAKE_ID_TAG], inst)
        self._instances[iid] = inst
        with self._cond:
            self.results[iid] = {"kind": kind, "running": True, "boots": 0, "exit_code": None,
                                 "image_id": image_id, "root": str(inst.merged), "console": str(inst.console)}
        return inst

    def _source_of(self, image_id: str) -> _Instance | None:
        if not image_id:
            return None
        try:
            images = self._ec2.describe_images(ImageIds=[image_id])["Images"]
        except Exception:
            return None
        tags = {t["Key"]: t["Value"] for t in (images[0].get("Tags") or [])} if images else {}
        bake_id = tags.get(BAKE_ID_TAG)
        return self._bake_instances.get(bake_id) if bake_id else None

    # --- one power cycle ----------------------------------------------------------------------------
    def _power_on_guarded(self, inst: _Instance, instance: dict[str, Any]) -> None:
        try:
            self._power_on(inst, instance)
        except Exception as exc:
            self.errors.append(f"{inst.iid}: {type(exc).__name__}: {exc}")
            self._note(inst, f"runner error: {type(exc).__name__}: {exc}")
        finally:
            self._rest(inst)
            inst.off.set()
            with self._cond:
                self.results[inst.iid]["running"] = False
                self._cond.notify_all()

    def _power_on(self, inst: _Instance, instance: dict[str, Any]) -> None:
        umount(inst.merged)  # the read-only view of a stopped instance
        mount_overlay(inst.merged, inst.layers, upper=inst.upper, work=inst.box / "work")
        if inst.imds is None:
            inst.imds = self._imds(inst, instance)
        self._seed(inst)
        while not inst.want_off.is_set() and not self._stop.is_set():
            code = self._boot_once(inst)
            if code == REBOOT_EXIT and self.results[inst.iid]["boots"] < MAX_BOOTS:
                self._note(inst, "the instance rebooted: booting the same tree again")
                continue
            if code == 0 and not inst.want_off.is_set():
                self._note(inst, "the instance powered itself off: stopping it (instance-initiated shutdown)")
                self._ec2.stop_instances(InstanceIds=[inst.iid])
            break

    def _rest(self, inst: _Instance) -> None:
        """Unmounts the live tree and leaves a read-only view of it for the tests to read."""
        try:
            umount(inst.merged)
            mount_overlay(inst.merged, [inst.upper, *inst.layers])
        except Exception as exc:
            self.errors.append(f"{inst.iid}: {exc}")

    def _imds(self, inst: _Instance, instance: dict[str, Any]) -> ImdsDouble:
        data = user_data(self._ec2, inst.iid)
        inst.box.joinpath("user-data").write_bytes(data or b"")
        return metadata_service(instance, self.region, data)

    def _seed(self, inst: _Instance) -> None:
        """What EC2 hands the instance: its identity and user data (NoCloud), its metadata address."""
        assert inst.imds is not None
        seed = inst.merged / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "meta-data").write_text(f"instance-id: {inst.iid}\nlocal-hostname: {inst.iid}\n", encoding="utf-8")
        shutil.copyfile(inst.box / "user-data", seed / "user-data")
        (seed / "user-data").chmod(0o600)
        env = {**aws_env(self.instance_endpoint, self.region), "BAKERY_IMDS_URL": inst.imds.url,
               "AWS_EC2_METADATA_DISABLED": "true", **self.extra_env}
        conf = inst.merged / "etc/systemd/system.conf.d/90-bakery-test.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        quoted = " ".join(f'"{k}={v}"' for k, v in sorted(env.items()))
        conf.write_text("# AMI Bakery test instance: its metadata service and AWS endpoint (loopback).\n"
                        f"[Manager]\nDefaultEnvironment={quoted}\n", encoding="utf-8")

    def _boot_once(self, inst: _Instance) -> int:
        with self._cond:
            self.results[inst.iid]["boots"] += 1
            n = self.results[inst.iid]["boots"]
        self._note(inst, f"boot {n} of {inst.iid} ({inst.layers[0].name} ...)")
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "-b",
                f"--machine={inst.iid}", "-D", str(inst.merged),
                f"--bind-ro={REPO_ROOT}:{SRC_MOUNT}", f"--bind-ro={site_packages()}:{SITE_MOUNT}"]
        env = {**os.environ, "SYSTEMD_NSPAWN_LOCK": "0"}
        with inst.console.open("ab") as fh:
            inst.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        if inst.want_off.is_set():  # stopped while it was starting
            _terminate(inst.proc)
        code = self._wait_powered_off(inst, inst.proc)
        with self._cond:
            self.results[inst.iid]["exit_code"] = code
        self._note(inst, f"systemd-nspawn exited {code}")
        return code

    def _wait_powered_off(self, inst: _Instance, proc: subprocess.Popen) -> int:
        """nspawn's exit status: once the container powers itself off or reboots, or, after a stop (SIGTERM
        already sent), once it has shut down, forced after :data:`STOP_GRACE` seconds."""
        while proc.poll() is None and not inst.want_off.wait(timeout=1.0):
            pass
        try:
            return proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._note(inst, f"no orderly shutdown within {STOP_GRACE:g} s of the stop: forcing it, as EC2 does")
            _terminate(proc)  # nspawn's second SIGTERM: immediate termination
            return proc.wait()

    def _note(self, inst: _Instance, text: str) -> None:
        with inst.console.open("a", encoding="utf-8") as fh:
            fh.write(f"[realinit-runner] {text}\n")


def _terminate(proc: subprocess.Popen | None) -> None:
    """SIGTERM to nspawn: an orderly poweroff of the container."""
    if proc is not None and proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
