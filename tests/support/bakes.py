"""What the fault, interruption, concurrency and security tests share.

- :func:`bakery` runs the real CLI in a subprocess (``python -m bakery_lib``) in one workspace.
- :func:`prepare` brings a fresh bake up to (not including) a stage *in process*, straight against
  moto: cheap set-up, so that each case pays only for the subprocess it is about (the stage under
  fault and ``bakery cleanup``). The bootstrap is simulated the way the instance does it: the bake's
  Chef node and client are registered in goiardi and the instance tags itself ``bakery:bootstrap``.
- :class:`Census` remembers every instance, image, snapshot and Chef node/client that exists, so that
  :meth:`Census.leaks` can list what a case left behind, whether it carries the bakery's tags or not.
- :func:`check_state` and :func:`junit_case` read what a Jenkins user would read: the state file and
  the JUnit report.
- :class:`FaultTable` collects one row per case; with ``BAKERY_FAULT_TABLE=PATH`` the rows are
  written as the Markdown table of ``docs/faults.md`` (the one place it lives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from bakery_lib.aws import Aws, Clock
from bakery_lib.catalog import load_catalog
from bakery_lib.chef import ChefHTTPError
from bakery_lib.inventory import inventory_key
from bakery_lib.settings import Settings
from bakery_lib.stages import ORDER, run_stage
from bakery_lib.stages.base import Context
from bakery_lib.state import Workspace
from devstack import DevStack
from devstack._boto import session as shared_session
from devstack.moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASE = "9.9.9"
GONE_STATES = {"terminated", "shutting-down"}


def cli_env(devstack: DevStack, endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a bakery subprocess: devstack's AWS + Chef identity, fast polls."""
    from devstack import isolated_env

    env = isolated_env(devstack.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["BAKERY_POLL_INTERVAL"] = "0.2"
    # No heartbeat beat inside the calls the fault tests count stage by stage (it is tested on its own).
    env["BAKERY_HEARTBEAT_INTERVAL"] = "86400"
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    env.update(extra)
    return env


def bakery(env: Mapping[str, str], ws: Path, catalog: Path | None, *args: str,
           timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bakery_lib", "--workspace", str(ws)]
    if catalog is not None:
        cmd += ["--catalog", str(catalog)]
    return subprocess.run([*cmd, *args], env=dict(env), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def popen_bakery(env: Mapping[str, str], ws: Path, catalog: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog),
                             *args], env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def run_in_process(args: list[str], env: Mapping[str, str], capsys: Any, monkeypatch: Any) -> tuple[int, str, str]:
    """``bakery ARGS`` run by its console entry point (``bakery_main``) in this process.

    Exactly the code the ``bakery`` script runs, minus a Python start-up (~1 s of CPU): used where a
    test needs many CLI runs. ``env`` replaces the bakery-related part of os.environ; the SIGTERM/SIGINT
    handlers ``bakery stage`` installs are put back afterwards. An unexpected exception propagates,
    so a would-be traceback fails the test.
    """
    import signal

    from bakery_lib.cli import bakery_main

    for name in list(os.environ):
        if name.startswith(("AWS_", "CHEF_", "BAKERY_", "JENKINS_")) and name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    capsys.readouterr()
    try:
        code = bakery_main(args)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out, err = capsys.readouterr()
    return code, out, err


# --- in-process set-up ---------------------------------------------------------------------------------


_SESSIONS: dict[str, boto3.session.Session] = {}


def session_for(region: str) -> boto3.session.Session:
    """One boto3 session per region for the whole run: its loaded service models are reused."""
    if region not in _SESSIONS:
        _SESSIONS[region] = shared_session(aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY,
                                           region_name=region)
    return _SESSIONS[region]


def direct_aws(devstack: DevStack, endpoint: str | None = None, **kwargs: Any) -> Aws:
    """An in-process ``Aws`` straight to moto (or to ``endpoint``, e.g. a fault proxy)."""
    return Aws(endpoint_url=endpoint or devstack.moto.url, session=session_for(devstack.region), **kwargs)


def context(devstack: DevStack, ws: Path, catalog: Path, role: str, *, aws: Aws | None = None,
            cancel: threading.Event | None = None) -> Context:
    cat = load_catalog(catalog)
    return Context(ws=Workspace(ws), catalog=cat, role=cat.role(role), aws=aws or direct_aws(devstack),
                   clock=Clock(cancel), log_fn=lambda _m: None, settings=fast_settings(devstack))


def fast_settings(devstack: DevStack, poll: float = 0.05) -> Settings:
    """The settings of an in-process bake: devstack's Chef identity, fast polls."""
    return Settings.from_env({**cli_env(devstack), "BAKERY_POLL_INTERVAL": str(poll)})


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    """Poll until ``predicate()``; fail with ``what`` (and the process's output if it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError, KeyError):
            pass  # e.g. the state file is not there yet
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited {proc.returncode} before {what}:\n{out}\n{err}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stage_status(ws: Path, role: str, stage: str) -> str | None:
    path = ws / ".bakery" / f"{role}.json"
    if not path.exists():
        return None
    return (read_state(ws, role)["stages"].get(stage) or {}).get("status")


def simulate_bootstrap(devstack: DevStack, instance_id: str, node: str, *, finish: bool = True) -> None:
    """What the bake user data does on a real instance, minus Chef's own work: register the bake's
    node and client with the Chef server and (``finish``) tag the instance ``bakery:bootstrap=succeeded``.
    Without ``finish`` the instance stays "in the middle of its Chef run" for ever."""
    admin = devstack.goiardi.client()
    # Two players may register the same instance at once (prepare's in-process bootstrap and a
    # SimulatedBoot thread): 409 Conflict means the other one was first, which is fine.
    try:
        if not admin.client_exists(node):
            admin.create_client(node)
        if not admin.node_exists(node):
            admin.request("POST", "/nodes", {"name": node, "json_class": "Chef::Node", "chef_type": "node",
                                             "chef_environment": "_default", "run_list": [], "normal": {}})
    except ChefHTTPError as exc:
        if exc.status != 409:
            raise
    if not finish:
        return
    ec2 = devstack.moto.client("ec2")
    # The bake script uploads the package inventory before it tags success (bakery_lib.inventory).
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags") or []}
    if "bakery:role" in tags and "bakery:bake-id" in tags:
        devstack.moto.client("s3").put_object(
            Bucket=devstack.bucket, Key=inventory_key(tags["bakery:role"], tags["bakery:bake-id"]),
            Body=json.dumps({"schema": 1, "platform": "linux", "manager": "dpkg", "os": {"id": "debian", "version_id": "12"},
                             "packages": [{"name": "bash", "version": "5.2.15-2+b2", "arch": "amd64"}]}).encode())
    ec2.create_tags(Resources=[instance_id], Tags=[
        {"Key": "bakery:bootstrap", "Value": "succeeded"},
        {"Key": "bakery:bootstrap-detail", "Value": "simulated by the fault tests"}])


def simulate_boot_test(devstack: DevStack, instance_id: str, node: str) -> None:
    """What the image's first boot does in test mode when it passes: the Chef client registered (a
    why-run creates the node too), then ``bakery:boot-test=passed`` on the instance."""
    simulate_bootstrap(devstack, instance_id, node, finish=False)
    devstack.moto.client("ec2").create_tags(Resources=[instance_id], Tags=[
        {"Key": "bakery:boot-test", "Value": "passed"},
        {"Key": "bakery:boot-test-detail", "Value": "simulated by the fault tests"}])


def prepare(devstack: DevStack, ws: Path, catalog: Path, role: str, upto: str) -> dict[str, Any] | None:
    """Run every stage before ``upto`` in process, directly against moto; returns the state (if any)."""
    ctx = context(devstack, ws, catalog, role)
    for name in ORDER[:ORDER.index(upto)]:
        if name == "bootstrap":
            state = ctx.ws.load(role)
            assert state is not None and state.instance_id and state.chef_node
            simulate_bootstrap(devstack, state.instance_id, state.chef_node)
        if name == "boot-test":
            with SimulatedBoot(devstack, [role]):  # the test instance's first boot passes
                result = run_stage(ctx, name)
        else:
            result = run_stage(ctx, name, release=RELEASE if name == "preflight" else None)
        assert result.exit_code == 0, f"set-up stage {name} failed: {result.message}"
    return read_state(ws, role) if upto != "preflight" else None


def mark_failed_attempt(ws: Path, role: str, stage: str) -> None:
    """Record an earlier failed attempt of ``stage`` (that created nothing), so the next run is a rerun."""
    path = ws / ".bakery" / f"{role}.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    state["stages"][stage] = {"status": "failed", "started_at": time.time(), "finished_at": time.time(),
                              "duration": 0.1, "message": "an earlier attempt failed", "attempts": 1}
    path.write_text(json.dumps(state), encoding="utf-8")


# --- what is left --------------------------------------------------------------------------------------


@dataclass
class Census:
    """Every EC2 instance/image/snapshot and Chef node/client that exists at one moment."""

    devstack: DevStack
    instances: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    clients: set[str] = field(default_factory=set)

    @classmethod
    def take(cls, devstack: DevStack) -> Census:
        c = cls(devstack)
        ec2 = devstack.moto.client("ec2")
        c.instances = {i["InstanceId"] for i in _instances(ec2)}
        c.images = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
        c.snapshots = {s["SnapshotId"] for s in _snapshots(ec2)}
        chef = devstack.goiardi.client()
        c.nodes, c.clients = set(chef.list_nodes()), set(chef.list_clients())
        return c

    def leaks(self, *, allow_available: bool = True) -> list[str]:
        """Everything created since the census that is still there and should not be."""
        ec2 = self.devstack.moto.client("ec2")
        out = []
        for inst in _instances(ec2):
            if inst["InstanceId"] not in self.instances and inst["State"]["Name"] not in GONE_STATES:
                out.append(f"instance {inst['InstanceId']} is {inst['State']['Name']}")
        images = ec2.describe_images(Owners=["self"])["Images"]
        referenced = {m["Ebs"]["SnapshotId"] for i in images for m in i.get("BlockDeviceMappings", [])
                      if m.get("Ebs", {}).get("SnapshotId")}
        for image in images:
            if image["ImageId"] in self.images:
                continue
            if image["State"] != "available" or not allow_available:
                out.append(f"image {image['ImageId']} is {image['State']}")
        for snap in _snapshots(ec2):
            if snap["SnapshotId"] not in self.snapshots and snap["SnapshotId"] not in referenced:
                out.append(f"orphan snapshot {snap['SnapshotId']} ({snap.get('Description', '')})")
        chef = self.devstack.goiardi.client()
        out += [f"Chef node {n}" for n in sorted(set(chef.list_nodes()) - self.nodes)]
        out += [f"Chef client {n}" for n in sorted(set(chef.list_clients()) - self.clients)]
        return out

    def new_available_images(self) -> list[str]:
        ec2 = self.devstack.moto.client("ec2")
        return [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]
                if i["ImageId"] not in self.images and i["State"] == "available"]


def _instances(ec2: Any) -> list[dict[str, Any]]:
    """Instances that are not (being) terminated: what could be a leak."""
    out = []
    live = [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=live):
        for r in page["Reservations"]:
            out.extend(r["Instances"])
    return out


def _snapshots(ec2: Any) -> list[dict[str, Any]]:
    """Snapshots made by CreateImage (moto keeps ~700 of its own sample snapshots: listing them
    all on every check would cost more than the cases themselves)."""
    return ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "description", "Values": ["Created by CreateImage*"]}])["Snapshots"]


def read_state(ws: Path, role: str) -> dict[str, Any]:
    return json.loads((ws / ".bakery" / f"{role}.json").read_text(encoding="utf-8"))


def check_state(devstack: DevStack, ws: Path, role: str, *, closed: bool | None = None) -> dict[str, Any]:
    """The state file parses, has no stray temp file beside it, and every id in it is real.

    Returns the state. ``closed`` checks the bake is (or is not) closed.
    """
    state = read_state(ws, role)
    assert state["schema_version"] == 1 and state["role"] == role
    strays = [p.name for p in (ws / ".bakery").iterdir() if p.name.endswith(".tmp")]
    assert not strays, f"temp files left beside the state: {strays}"
    ec2 = devstack.moto.client("ec2")
    if state.get("instance_id"):
        found = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"]
        assert found, f"state names instance {state['instance_id']}, which moto does not know"
        inst_state = found[0]["Instances"][0]["State"]["Name"]
        if state["instance_terminated"]:
            assert inst_state in GONE_STATES, f"state says terminated, instance is {inst_state}"
    if state.get("security_group_id"):
        assert ec2.describe_security_groups(GroupIds=[state["security_group_id"]])["SecurityGroups"]
    if closed is not None:
        assert state["closed"] is closed, f"state closed={state['closed']}, outcome={state.get('outcome')}"
    if closed:
        assert state["outcome"] in ("cleaned", "succeeded", "reused"), state["outcome"]
        if state.get("instance_id"):
            assert state["instance_terminated"], "closed bake with a live instance"
        if state.get("chef_node") and state["stages"].get("launch"):
            assert state["chef_cleaned"], "closed bake whose Chef identity was not removed"
    return state


def junit_case(ws: Path, role: str, stage: str) -> ET.Element:
    path = ws / "reports" / f"{role}-{stage}.xml"
    root = ET.parse(path).getroot()
    suite = root.find("testsuite") if root.tag == "testsuites" else root
    assert suite is not None and suite.get("name") == f"bakery.{role}", ET.tostring(root)[:300]
    case = suite.find("testcase")
    assert case is not None and case.get("name") == stage
    return case


def assert_junit_failure(ws: Path, role: str, stage: str, code: str) -> str:
    """The stage's JUnit report has a failure naming the AWS error code; returns its text."""
    case = junit_case(ws, role, stage)
    failure = case.find("failure")
    assert failure is not None, f"no <failure> in reports/{role}-{stage}.xml"
    text = f"{failure.get('type')} {failure.get('message')} {failure.text or ''}"
    assert failure.get("type") == code and code in (failure.get("message") or ""), text
    return failure.get("message") or ""


# --- the fault table (docs/faults.md) ------------------------------------------------------------------


class FaultTable:
    """Rows of what was tried and what happened, written where ``$BAKERY_FAULT_TABLE`` says.

    ``BAKERY_FAULT_TABLE`` is one path or several joined by ``os.pathsep``; the table's page is
    ``docs/faults.md``.
    In a file that already has the table (its header line), only the table is replaced and the text around
    it is kept; otherwise the file becomes the table. Rows are grouped by area: the areas the file's table
    already has keep their order (so a run under xdist, whose workers finish in any order, changes only
    what happened), new areas follow in the order they first appear; within an area, rows are in the
    order the cases ran.

    In one process the table is rewritten after each row (an interrupted run keeps what it found).
    Under pytest-xdist a worker holds only its own rows, so it writes nothing: it hands its rows to
    the controller (``workeroutput``, see the root conftest), which writes the whole table once.
    """

    HEADER = "| area | fault / input tried | what the bakery did | left behind after cleanup |"
    _rows: list[tuple[str, str, str, str]] = []
    _lock = threading.Lock()

    @classmethod
    def add(cls, area: str, tried: str, outcome: str, left: str) -> None:
        with cls._lock:
            cls._rows.append((area, tried, outcome, left))
        if not os.environ.get("PYTEST_XDIST_WORKER"):
            cls.write_all()

    @classmethod
    def rows(cls) -> list[list[str]]:
        """The rows so far, as lists (what a worker can send its controller)."""
        with cls._lock:
            return [list(r) for r in cls._rows]

    @classmethod
    def extend(cls, rows: list[list[str]]) -> None:
        """Take a worker's rows (on the controller)."""
        with cls._lock:
            cls._rows.extend((a, t, o, lft) for a, t, o, lft in rows)

    @classmethod
    def write_all(cls) -> None:
        for path in filter(None, os.environ.get("BAKERY_FAULT_TABLE", "").split(os.pathsep)):
            cls.write(Path(path))

    @classmethod
    def table(cls, areas_first: list[str] | None = None) -> list[str]:
        with cls._lock:
            rows = list(cls._rows)
        areas = list(dict.fromkeys([*(areas_first or []), *(r[0] for r in rows)]))
        rows.sort(key=lambda r: areas.index(r[0]))  # stable: each area's cases stay in run order
        return [cls.HEADER, "|---|---|---|---|", *(f"| {a} | {t} | {o} | {lft} |" for a, t, o, lft in rows)]

    @classmethod
    def write(cls, path: Path) -> None:
        old = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        if cls.HEADER in old:
            start = old.index(cls.HEADER)
            end = next((i for i in range(start, len(old)) if not old[i].startswith("|")), len(old))
            old_areas = [line[2:].split(" | ", 1)[0] for line in old[start + 2:end]]
            lines = old[:start] + cls.table(old_areas) + old[end:]
        else:
            lines = cls.table()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(path)


def leftover_text(leaks: list[str]) -> str:
    return "nothing" if not leaks else "; ".join(leaks)


class SimulatedBoot:
    """Plays the bake instances' part without executing their user data (cheap, for fault cases).

    Every running bake instance of ``roles`` gets, once, what its user data would do on success:
    its Chef node/client registered and the tag ``bakery:bootstrap=succeeded`` (see
    :func:`simulate_bootstrap`; ``finish=False``: registered, never tagged: a bake stuck in bootstrap). The real :class:`~devstack.InstanceRunner` is used where
    the instance's own behaviour is under test (e2e, security, the throttled bake, the realism bakes).

    Roles in ``windows`` play the EC2Launch v2 sequence instead: registered, tagged
    ``bakery:bootstrap=generalizing``, and ``sysprep`` rounds of this loop later the instance stops itself
    (sysprep ``--shutdown``; the bake instance's shutdown behaviour is ``stop``): counted in rounds, not
    on a timer, so a slow machine slows sysprep down with everything else.

    Boot-test instances (``bakery:purpose=boot-test``) get what the image's first boot does in test
    mode when it passes: the test's Chef client (and node) registered, ``bakery:boot-test=passed``.
    """

    def __init__(self, devstack: DevStack, roles: list[str], *, interval: float = 0.1, finish: bool = True,
                 windows: tuple[str, ...] = (), sysprep: int = 10):
        self.devstack = devstack
        self.finish = finish
        self.windows = set(windows)
        self.sysprep = sysprep
        self.roles = list(roles)
        self.interval = interval
        self.booted: list[str] = []
        self._sysprep_left: dict[str, int] = {}  # Windows instance -> rounds until it stops itself
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulated-boot", daemon=True)

    def __enter__(self) -> SimulatedBoot:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _generalize(self, ec2: Any, instance_id: str, node: str) -> None:
        simulate_bootstrap(self.devstack, instance_id, node, finish=False)
        ec2.create_tags(Resources=[instance_id], Tags=[
            {"Key": "bakery:bootstrap", "Value": "generalizing"},
            {"Key": "bakery:bootstrap-detail", "Value": "sysprep --clean --shutdown started"}])
        self.booted.append(instance_id)
        self._sysprep_left[instance_id] = self.sysprep

    def _sysprep_round(self, ec2: Any) -> None:
        for instance_id, left in list(self._sysprep_left.items()):
            if left > 0:
                self._sysprep_left[instance_id] = left - 1
                continue
            del self._sysprep_left[instance_id]
            ec2.stop_instances(InstanceIds=[instance_id])

    def _loop(self) -> None:
        ec2 = self.devstack.moto.client("ec2")
        while not self._stop.is_set():
            try:
                self._sysprep_round(ec2)
                found = ec2.describe_instances(Filters=[
                    {"Name": "tag:bakery:role", "Values": self.roles},
                    {"Name": "tag:bakery:purpose", "Values": ["bake", "boot-test"]},
                    {"Name": "instance-state-name", "Values": ["running"]}])
                for res in found["Reservations"]:
                    for inst in res["Instances"]:
                        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                        if inst["InstanceId"] in self.booted or "bakery:bootstrap" in tags:
                            continue
                        node = tags["bakery:chef-node"]
                        if tags.get("bakery:purpose") == "boot-test":
                            simulate_boot_test(self.devstack, inst["InstanceId"], node)
                            self.booted.append(inst["InstanceId"])
                            continue
                        if tags.get("bakery:role") in self.windows:
                            self._generalize(ec2, inst["InstanceId"], node)
                            continue
                        simulate_bootstrap(self.devstack, inst["InstanceId"], node, finish=self.finish)
                        self.booted.append(inst["InstanceId"])
                        now = ec2.describe_instances(InstanceIds=[inst["InstanceId"]])
                        if now["Reservations"][0]["Instances"][0]["State"]["Name"] in GONE_STATES:
                            # Terminated while we registered: a real instance could not have finished
                            # registering after that, so neither may the simulation.
                            admin = self.devstack.goiardi.client()
                            admin.delete_node(node)
                            admin.delete_client(node)
            except Exception:  # noqa: BLE001  (a transient error: next round)
                pass
            self._stop.wait(self.interval)
