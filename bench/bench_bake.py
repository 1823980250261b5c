#!/usr/bin/env python3
"""Benchmark ``bakery bake`` against Packer 1.6.6 amazon-ebs, on moto behind a latency proxy.

One run, everything on 127.0.0.1, started and stopped here:

- moto server + goiardi, seeded by :class:`devstack.DevStack`;
- :class:`bench.proxy.CountingProxy` in front of moto for the tool under test (the bakery CLI or
  Packer), one in front of moto for the EC2 side (the instance runner and the instances' own AWS CLI
  calls, counted apart: on AWS those are not the baking tool's calls), and one in front of goiardi
  for the bakery's Chef API requests; each adds a seeded random 20-50 ms to every call;
- the devstack's instance runner playing EC2: it answers each bake instance a fixed ``--boot-delay``
  after it is running, by setting the ``bakery:bootstrap`` tag the real user data sets last (see
  :class:`BenchRunner` for why), and runs the real user data for one role of (a) (or for all with
  ``--instance-work real``);
- an egress guard as HTTP(S)_PROXY for every process: anything that tries to leave 127.0.0.1 is
  refused and fails the run.

Phases (each its own subprocess, timed from start to exit), ``--repeat`` rounds, medians reported:

a. Packer 1.6.6 amazon-ebs, ``communicator: none`` (bench/packer/amazon-ebs.json), with a
   ``shell-local`` sleep of the boot delay standing in for provisioning; then ``bakery bake`` of one
   new role (creates its SG and IAM role); once: a ``--force`` rebake of it (SG/IAM exist: a release)
   and a first bake of another role whose real user data runs;
b. ``bakery bake`` of 20 new roles with ``--jobs 20``; wall time against (a)'s first bake, calls/role;
c. the same 20 roles again with a new release: same bake key, so each AMI is reused, nothing launched.

Prints a markdown report and writes it between markers into bench/README.md (``--no-readme`` not to).
Exit 0 when the run completed (goals met or not: the report says), 1 when a phase failed, 2 on bad
usage or a missing tool. ``make bench`` runs it; ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/bench_bake.py` puts bench/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))

from bakery_lib import __version__ as BAKERY_VERSION  # noqa: E402
from bakery_lib.stages import ORDER  # noqa: E402
from bench.proxy import BATCHED, CountingProxy, EgressGuard, Key  # noqa: E402
from devstack import DevStack, InstanceRunner, isolated_env  # noqa: E402

PACKER_TEMPLATE = REPO / "bench" / "packer" / "amazon-ebs.json"
README = REPO / "bench" / "README.md"
BEGIN, END = "<!-- bench_bake:begin -->", "<!-- bench_bake:end -->"
PACKER_VERSION = "1.6.6"
# A base image moto ships (AWS's own Amazon Linux 2 image, EBS-backed): Packer refuses moto's
# registered images, whose root device type moto always reports as "standard". Both tools use it.
BASE_AMI_FILTER = {"Owners": ["amazon"], "Filters": [{"Name": "name", "Values": ["amzn2-ami-hvm-*"]},
                                                    {"Name": "root-device-type", "Values": ["ebs"]}]}
MUTATING = ("Create", "Delete", "Run", "Terminate", "Stop", "Start", "Put", "Attach", "Detach", "Authorize",
            "Revoke", "Register", "Deregister", "Copy", "Modify", "Add", "Remove", "Update", "Publish", "Tag")
RELEASES = ("2026.11.0", "2026.11.1")
# How often the instance runner lists instances to find new ones (EC2's part, not the tool's): every
# listing costs moto CPU that the tool under test then waits for, so not more often than needed.
RUNNER_POLL = 0.5


class BenchError(Exception):
    """A phase failed or a prerequisite is missing; the message says which and why."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Phase:
    name: str
    wall: float
    aws: collections.Counter[Key]            # the tool's own AWS calls
    chef: collections.Counter[Key]           # the bakery's Chef API requests
    instance_side: collections.Counter[Key]  # instance runner + user data (not the tool's)
    events: list[tuple[float, Key]]
    roles: int = 1
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    userdata_seconds: list[float] = field(default_factory=list)
    tool_cpu: float = 0.0  # CPU seconds of the tool's process tree (the CLI; Packer and its plugins)
    moto_cpu: float = 0.0  # CPU seconds moto used during the phase (all callers)
    upstream_by_key: dict[Key, float] = field(default_factory=dict)
    upstream_time: float = 0.0  # sum of moto's + goiardi's own answer times for the tool's calls
    added_latency: float = 0.0  # sum of the delays the proxy added to the tool's AWS + Chef calls
    instance_work: float = 0.0  # Packer: provisioning stand-in; bakery: bootstrap stage (max over roles)
    walls: list[float] = field(default_factory=list)  # every round's wall time (set by the report)

    def total(self, op: str | None = None) -> int:
        return sum(n for (_, svc, o), n in self.aws.items() if op is None or f"{svc}.{o}" == op or o == op)

    def op_ms(self, op: str) -> str:
        """Mean moto answer time of ``service.Operation`` in this phase, in ms ('' when not called)."""
        n = sum(c for (_, svc, o), c in self.aws.items() if f"{svc}.{o}" == op)
        spent = sum(t for (_, svc, o), t in self.upstream_by_key.items() if f"{svc}.{o}" == op)
        return f"{spent / n * 1000:.0f}" if n else ""

    def ops(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for (_, svc, op), n in self.aws.items():
            out[f"{svc}.{op}"] += n
        return out

    def mutating(self) -> int:
        return sum(n for (_, _, op), n in self.aws.items() if op.startswith(MUTATING))

    def bootstrap_polls(self) -> int:
        """Batched DescribeInstances polls made for the bootstrap, i.e. while some bake was in its
        ``bootstrap`` stage and none in its ``stop`` stage (the same batched call also polls for
        ``stopped``; a call that may have served a stop counts as an ordinary call: in Packer's 19
        the waits for ``running`` and ``stopped`` are counted too)."""
        boot = [w for st in self.states.values() if (w := stage_window(st, "bootstrap"))]
        stop = [w for st in self.states.values() if (w := stage_window(st, "stop"))]
        return sum(1 for t, (_, _, op) in self.events
                   if op == "DescribeInstances" + BATCHED
                   and any(a <= t <= b for a, b in boot) and not any(a <= t <= b for a, b in stop))

    def chef_total(self) -> int:
        return sum(self.chef.values())


class BenchRunner(InstanceRunner):
    """The instance runner, answering bake instances after exactly ``boot_delay`` (``--instance-work fixed``).

    Why: the real bake user data starts the Python AWS CLI several times and a Python ``chef-client``
    stub, about 2 CPU-seconds per bake. On EC2 every instance has its own CPUs; here 20 bakes share this
    machine's, so 20 real user-data runs queue for the CPU (measured: 4.4 s alone, 30 s each with 20 at
    once on 2 cores) and the (b) ratio would measure the machine, not the bakery. So, except for the
    roles in ``real_roles`` (whose user data runs for real, as in the e2e tests), a bake instance is
    answered the way its user data ends: after the boot delay, the ``bakery:bootstrap=succeeded`` tag is
    set on it (through the instance-side proxy). The bakery sees exactly what it sees on AWS.
    A boot-test instance (``bakery:purpose=boot-test``) is answered the way the image's first boot in test
    mode ends: after the boot delay its Chef client is registered (``register``: what its chef-client
    does) and ``bakery:boot-test=passed`` is set.
    Overrides ``InstanceRunner._boot`` (a devstack internal): if that changes, this breaks loudly.
    """

    def __init__(self, *args: Any, real_roles: Sequence[str] = (), all_real: bool = False,
                 register: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.real_roles = set(real_roles)
        self.all_real = all_real
        self.register = register

    def _boot(self, instance: dict[str, Any]) -> dict[str, Any]:
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
        purpose = tags.get("bakery:purpose")
        if self.all_real or purpose not in ("bake", "boot-test") or tags.get("bakery:role") in self.real_roles:
            return super()._boot(instance)
        if self._stop.wait(self.boot_delay):
            return {"kind": "skipped", "exit_code": None, "detail": "runner stopped during the boot delay"}
        if purpose == "boot-test":
            self.register(tags["bakery:chef-node"])
            self._ec2.create_tags(Resources=[instance["InstanceId"]], Tags=[
                {"Key": "bakery:boot-test", "Value": "passed"},
                {"Key": "bakery:boot-test-detail", "Value": "benchmark: answered after the fixed boot delay"}])
            return {"kind": "boot-test", "exit_code": 0, "detail": "fixed-delay answer (first boot not run)"}
        self._ec2.create_tags(Resources=[instance["InstanceId"]], Tags=[
            {"Key": "bakery:bootstrap", "Value": "succeeded"},
            {"Key": "bakery:bootstrap-detail", "Value": "benchmark: answered after the fixed boot delay"}])
        return {"kind": "bake", "exit_code": 0, "detail": "fixed-delay answer (user data not run)"}


# --- helpers ----------------------------------------------------------------------------------------------

def parse_latency(text: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?))?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"latency {text!r}: expected MS or LOW-HIGH in milliseconds, e.g. 20-50")
    lo = float(m.group(1))
    hi = float(m.group(2)) if m.group(2) else lo
    if hi < lo or hi > 2000:
        raise argparse.ArgumentTypeError(f"latency {text!r}: need LOW <= HIGH <= 2000 ms")
    return lo / 1000, hi / 1000


def first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return ((out.stdout or out.stderr).strip().splitlines() or ["unknown"])[0]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError, ValueError):
        mem = "unknown RAM"
    return f"{cpu}, {os.cpu_count()} CPUs, {mem}, {platform.system()} {platform.release()}"


def versions(packer: str) -> str:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    goiardi = first_line(["goiardi", "-v"]).split(" (")[0].replace("goiardi version ", "")
    return (f"bakery {BAKERY_VERSION}, Python {platform.python_version()}, boto3 {dist('boto3')}, "
            f"moto {dist('moto')}, goiardi {goiardi}, {first_line([packer, 'version'])}")


def stage_window(state: Mapping[str, Any], name: str) -> tuple[float, float] | None:
    rec = (state.get("stages") or {}).get(name) or {}
    if rec.get("started_at") and rec.get("finished_at"):
        return float(rec["started_at"]), float(rec["finished_at"])
    return None


def userdata_times(runner: InstanceRunner, instance_ids: Sequence[str]) -> list[float]:
    """Seconds each instance's user data ran, from the runner's console logs."""
    out = []
    for iid in instance_ids:
        m = re.search(r"user data exited with status \d+ after ([\d.]+)s", runner.console(iid))
        if m:
            out.append(float(m.group(1)))
    return out


def run_child(cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float,
              what: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; on timeout or interruption stop the whole group."""
    proc = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:
        # SIGTERM first: the bakery then runs its cleanups, Packer deletes what it made.
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"{what} did not finish within {timeout:.0f} s; stopped it") from None
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a running process has used so far; 0 when unknown."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Meter:
    wall: float = 0.0
    tool_cpu: float = 0.0
    moto_cpu: float = 0.0


@contextmanager
def measure(moto_pid: int | None, *proxies: CountingProxy) -> Iterator[Meter]:
    """Reset the proxies' counts, then time the block: wall, waited-for children's CPU, moto's CPU."""
    for p in proxies:
        p.reset()
    meter = Meter()
    c0, m0, t0 = children_cpu(), process_cpu(moto_pid), time.monotonic()
    try:
        yield meter
    finally:
        meter.wall = time.monotonic() - t0
        meter.tool_cpu = children_cpu() - c0
        meter.moto_cpu = process_cpu(moto_pid) - m0


# --- the benchmark --------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, stack: DevStack, aws: CountingProxy,
                 inst: CountingProxy, chef: CountingProxy, guard: EgressGuard, packer: str):
        self.args = args
        self.tmp = tmp
        self.stack = stack
        self.aws_proxy = aws
        self.inst_proxy = inst
        self.chef_proxy = chef
        self.guard = guard
        self.packer = packer
        self.ec2 = stack.moto.client("ec2")
        images = self.ec2.describe_images(**BASE_AMI_FILTER)["Images"]
        if not images:
            raise BenchError("moto has no EBS-backed amzn2-ami-hvm-* image (are moto's default AMIs disabled? "
                             "unset MOTO_EC2_LOAD_DEFAULT_AMIS / MOTO_AMIS_PATH)", 2)
        self.base_ami = max(images, key=lambda i: (i.get("CreationDate") or "", i["ImageId"]))["ImageId"]
        # New roles for every round, so each first bake really creates the role's SG and IAM role.
        self.solo_real = "solo-real"
        self.solos = [f"solo-{r}" for r in range(1, args.repeat + 1)]
        self.fleets = [[f"r{r}-fleet{i:02d}" for i in range(1, args.roles + 1)] for r in range(1, args.repeat + 1)]
        names = [self.solo_real, *self.solos, *(n for f in self.fleets for n in f)]
        boot_test = {"enabled": args.boot_test == "on"}  # --boot-test off: the bake alone, for comparison
        self.catalog = stack.write_catalog(tmp / "bakery.yaml", roles={
            n: {"base_ami": self.base_ami, "boot_test": boot_test} for n in names})
        self.runner: BenchRunner | None = None
        # moto's pid, to read its CPU time: a devstack internal, so optional (0 = not shown).
        proc = getattr(stack.moto, "_proc", None)
        self.moto_pid: int | None = getattr(proc, "pid", None)

    def _register(self, node: str) -> None:
        """What a boot-test instance's chef-client does on the Chef server: its client (and node)."""
        admin = self.stack.goiardi.client()
        admin.create_client(node)
        admin.request("POST", "/nodes", {"name": node, "json_class": "Chef::Node", "chef_type": "node",
                                         "chef_environment": "_default", "run_list": [], "normal": {}})

    def _instances(self) -> set[str]:
        out = set()
        for page in self.ec2.get_paginator("describe_instances").paginate():
            for res in page["Reservations"]:
                out.update(i["InstanceId"] for i in res["Instances"])
        return out

    def _snapshot(self, name: str, meter: Meter, roles: int) -> Phase:
        phase = Phase(name, meter.wall, self.aws_proxy.snapshot(), self.chef_proxy.snapshot(),
                      self.inst_proxy.snapshot(), self.aws_proxy.events(), roles)
        phase.tool_cpu, phase.moto_cpu = meter.tool_cpu, meter.moto_cpu
        phase.added_latency = self.aws_proxy.added_latency + self.chef_proxy.added_latency
        phase.upstream_time = self.aws_proxy.upstream_time + self.chef_proxy.upstream_time
        phase.upstream_by_key = self.aws_proxy.upstream_by_key()
        return phase

    def _check_guard(self, what: str) -> None:
        if self.guard.attempts:
            raise BenchError(f"{what} tried to reach something outside 127.0.0.1 (refused by the egress guard): "
                             f"{'; '.join(self.guard.attempts[:5])}")
        errors = self.aws_proxy.errors + self.inst_proxy.errors + self.chef_proxy.errors
        if errors:
            raise BenchError(f"{what}: the proxy could not reach its upstream: {'; '.join(errors[:3])}")

    # (a) Packer ------------------------------------------------------------------------------------------
    def packer_phase(self) -> Phase:
        home = self.tmp / "packer-home"
        ptmp = self.tmp / "packer-tmp"
        for d in (home, ptmp, home / "cache"):
            d.mkdir(parents=True, exist_ok=True)
        env = isolated_env({
            **self.stack.moto.env(), "HOME": str(home), "TMPDIR": str(ptmp), "PACKER_CACHE_DIR": str(home / "cache"),
            "CHECKPOINT_DISABLE": "1",  # no version check against checkpoint-api.hashicorp.com
            "PACKER_NO_COLOR": "1", "PACKER_LOG": "1", "PACKER_LOG_PATH": str(self.tmp / "packer.log"),
        })
        env.pop("AWS_ENDPOINT_URL", None)  # aws-sdk-go of Packer 1.6.6 ignores it; custom_endpoint_ec2 is used
        ami_name = f"packer-bench-{int(time.time())}"
        cmd = [self.packer, "build", "-machine-readable",
               "-var", f"endpoint={self.aws_proxy.url}", "-var", f"region={self.stack.region}",
               "-var", f"source_ami={self.base_ami}", "-var", f"ami_name={ami_name}",
               "-var", f"poll_delay={max(1, round(self.args.poll_interval))}",
               "-var", f"provision_seconds={self.args.boot_delay:g}", str(PACKER_TEMPLATE)]
        with measure(self.moto_pid, self.aws_proxy, self.chef_proxy, self.inst_proxy) as meter:
            proc = run_child(cmd, env=env, cwd=self.tmp, timeout=180, what="Packer")
        self._check_guard("Packer")
        m = re.search(r",artifact,0,id,[\w-]+:(ami-[0-9a-f]+)", proc.stdout)
        if proc.returncode != 0 or not m:
            errors = [ln.split(",ui,error,", 1)[1] for ln in proc.stdout.splitlines() if ",ui,error," in ln]
            raise BenchError(f"Packer build failed (exit {proc.returncode}): {' | '.join(errors[-3:]) or proc.stderr[-500:]}"
                             f"; log: {self.tmp / 'packer.log'} (rerun with --keep to keep it)")
        ami = m.group(1)
        image = self.ec2.describe_images(ImageIds=[ami])["Images"][0]
        if image["State"] != "available":
            raise BenchError(f"Packer's AMI {ami} is {image['State']}, not available")
        phase = self._snapshot("packer", meter, 1)
        phase.instance_work = self.args.boot_delay
        return phase

    # bakery phases ---------------------------------------------------------------------------------------
    def bakery_env(self) -> dict[str, str]:
        env = isolated_env({**self.stack.env, "AWS_ENDPOINT_URL": self.aws_proxy.url,
                            "CHEF_SERVER_URL": self.chef_proxy.url,
                            "BAKERY_POLL_INTERVAL": f"{self.args.poll_interval:g}"})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env

    def bakery_cmd(self, name: str) -> list[str]:
        """How the CLI is started (an experiment may wrap it, e.g. in cProfile)."""
        return [sys.executable, "-m", "bakery_lib"]

    def bake(self, name: str, ws: Path, roles: list[str], release: str, *extra: str,
             expect: str = "succeeded") -> Phase:
        assert self.runner is not None
        cmd = [*self.bakery_cmd(name), "--workspace", str(ws), "--catalog", str(self.catalog), "bake",
               *[a for r in roles for a in ("--role", r)], "--release", release,
               "--jobs", str(min(self.args.jobs, len(roles))), *extra]
        before = self._instances()
        with measure(self.moto_pid, self.aws_proxy, self.chef_proxy, self.inst_proxy) as meter:
            proc = run_child(cmd, env=self.bakery_env(), cwd=ws, timeout=120 + 10 * len(roles),
                             what=f"bakery bake ({name})")
        self._check_guard(f"bakery ({name})")
        if proc.returncode != 0:
            raise BenchError(f"bakery bake ({name}) exited {proc.returncode}:\n{proc.stdout[-1500:]}\n{proc.stderr[-2500:]}")
        phase = self._snapshot(name, meter, len(roles))
        for r in roles:
            state = json.loads((ws / ".bakery" / f"{r}.json").read_text())
            if state.get("outcome") != expect or not state.get("closed"):
                raise BenchError(f"bakery bake ({name}): role {r} ended {state.get('outcome')!r}, expected {expect!r}")
            ami = state["amis"][self.stack.region]
            if self.ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] != "available":
                raise BenchError(f"bakery bake ({name}): AMI {ami} of role {r} is not available")
            phase.states[r] = state
        new = sorted(self._instances() - before)
        for iid in new:  # the runner has finished with them: their user data is what tagged them
            self.runner.wait(iid, timeout=30)
        phase.userdata_seconds = userdata_times(self.runner, new)
        boots = [s["stages"]["bootstrap"]["duration"] or 0.0 for s in phase.states.values()
                 if s["stages"].get("bootstrap", {}).get("status") == "succeeded"]
        phase.instance_work = max(boots, default=0.0)
        return phase

    def _logged(self, runs: dict[str, list[Phase]], kind: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Phase:
        self.args.log(f"{what} ...")
        phase = fn(*args, **kwargs)
        runs.setdefault(kind, []).append(phase)
        self.args.log(f"    {phase.wall:.1f} s, {phase.total()} AWS calls, {phase.chef_total()} Chef requests")
        return phase

    def run(self) -> dict[str, list[Phase]]:
        """Every phase, ``--repeat`` times (rebake and real-user-data once); kind -> runs in order."""
        runs: dict[str, list[Phase]] = {}
        a = self.args
        a.log(f"base AMI {self.base_ami}; latency {a.latency[0] * 1000:g}-{a.latency[1] * 1000:g} ms per call; "
              f"boot delay {a.boot_delay:g} s; poll {a.poll_interval:g} s; {a.repeat} round(s)")
        self.runner = BenchRunner(self.inst_proxy.url, self.stack.region, self.tmp / "instances",
                                  boot_delay=a.boot_delay, poll_interval=RUNNER_POLL, max_parallel=max(8, a.roles + 2),
                                  extra_env=self.guard.env(), real_roles=[self.solo_real],
                                  all_real=a.instance_work == "real", register=self._register).start()
        for r in range(1, a.repeat + 1):
            tag = f"[{r}/{a.repeat}] "
            ws_solo, ws_fleet = self.tmp / f"ws-solo-{r}", self.tmp / f"ws-fleet-{r}"
            for ws in (ws_solo, ws_fleet):
                ws.mkdir()
            solo, fleet = self.solos[r - 1], self.fleets[r - 1]
            self._logged(runs, "packer", f"{tag}(a) Packer {PACKER_VERSION} amazon-ebs, communicator none",
                         self.packer_phase)
            if r == 1:
                self._logged(runs, "real", f"{tag}(a) bakery bake, 1 new role, its real user data run",
                             self.bake, "real", ws_solo, [self.solo_real], RELEASES[0])
            self._logged(runs, "first", f"{tag}(a) bakery bake, 1 new role",
                         self.bake, "first", ws_solo, [solo], RELEASES[0])
            if r == 1:
                self._logged(runs, "rebake", f"{tag}(a) bakery bake --force, the same role (SG, IAM exist)",
                             self.bake, "rebake", ws_solo, [solo], RELEASES[1], "--force")
            self._logged(runs, "fleet", f"{tag}(b) bakery bake, {len(fleet)} new roles, --jobs {a.jobs}",
                         self.bake, "fleet", ws_fleet, fleet, RELEASES[0])
            self._logged(runs, "reuse", f"{tag}(c) bakery bake, the same {len(fleet)} roles unchanged, new release",
                         self.bake, "reuse", ws_fleet, fleet, RELEASES[1], expect="reused")
            amis = json.loads((ws_fleet / "artifacts" / "amis.json").read_text())
            if amis.get("release") != RELEASES[1] or len(amis.get("amis", {})) != len(fleet):
                raise BenchError(f"(c): artifacts/amis.json does not list the {len(fleet)} reused AMIs for "
                                 f"release {RELEASES[1]}: {amis}")
        return runs


# --- the report -------------------------------------------------------------------------------------------

def _s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _ok(flag: bool) -> str:
    return "✅ met" if flag else "❌ missed"


def per_stage(phase: Phase) -> list[tuple[str, int, collections.Counter[str]]]:
    """Calls of a one-role bake attributed to its stages by time (the stages run one after another)."""
    state = next(iter(phase.states.values()))
    windows = [(name, stage_window(state, name)) for name in ORDER]
    rows: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in ORDER}
    rows["(outside stages)"] = collections.Counter()
    for t, (_, svc, op) in phase.events:
        # A request reaches the proxy after its stage started and before it finished: strict containment.
        where = next((name for name, w in windows if w and w[0] <= t <= w[1]), "(outside stages)")
        rows[where][f"{svc}.{op}"] += 1
    return [(name, sum(c.values()), c) for name, c in rows.items()]


def _stage_time(phase: Phase, name: str) -> str:
    state = next(iter(phase.states.values()))
    if name in ORDER:
        w = stage_window(state, name)
        return _s(w[1] - w[0]) if w else "—"
    spent = sum(w[1] - w[0] for w in (stage_window(state, n) for n in ORDER) if w)
    return _s(phase.wall - spent)  # process start-up, locking, summary


def _op_list(c: collections.Counter[str]) -> str:
    return ", ".join(f"{op.split('.', 1)[1].replace(BATCHED, ' (batched)')}×{n}" if n > 1 else
                     op.split(".", 1)[1].replace(BATCHED, " (batched)") for op, n in sorted(c.items())) or "—"


def median_phase(runs: list[Phase]) -> Phase:
    """The run with the median wall time (the lower one of an even count), with every run's wall time."""
    ordered = sorted(runs, key=lambda p: p.wall)
    rep = ordered[(len(ordered) - 1) // 2]
    rep.walls = [p.wall for p in runs]
    return rep


def _wall(p: Phase) -> str:
    if len(p.walls) <= 1:
        return _s(p.wall)
    return f"{_s(p.wall)} ({min(p.walls):.1f}–{max(p.walls):.1f})"


def report(runs: dict[str, list[Phase]], args: argparse.Namespace, machine_text: str, versions_text: str) -> str:
    phases = {kind: median_phase(r) for kind, r in runs.items()}
    pk, real, first, rebake, fleet, reuse = (phases[k] for k in ("packer", "real", "first", "rebake", "fleet", "reuse"))
    n = fleet.roles
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lat = f"{args.latency[0] * 1000:g}–{args.latency[1] * 1000:g} ms"
    lines = [
        f"Run {now} on {machine_text}.",
        f"Versions: {versions_text}.",
        (f"Each figure is from the run with the median wall time of {args.repeat} rounds (range in brackets); "
         "this machine was shared with other work, so expect some noise.") if args.repeat > 1 else "",
        f"Settings: {lat} added to every AWS and Chef API call (uniform, seeded); poll interval "
        f"{args.poll_interval:g} s for both tools (`BAKERY_POLL_INTERVAL`, Packer `aws_polling`); {n} roles with "
        f"`--jobs {args.jobs}`; `--instance-work {args.instance_work}`: " + (
            f"every bake instance runs its real user data {args.boot_delay:g} s after it is running."
            if args.instance_work == "real" else
            f"the instance runner answers each bake exactly {args.boot_delay:g} s after the instance is running "
            "by setting `bakery:bootstrap=succeeded` on it (what the user data does last), except in the "
            "\"real user data\" column, where the bake's real user data runs after that delay."),
        "",
        "### (a) One role: bakery against Packer 1.6.6 amazon-ebs (`communicator: none`)",
        "",
        *table_a(pk, real, first, rebake),
        "",
        "What each does: Packer (`communicator: none`) checks the AMI name, looks up the source AMI, creates a "
        "temporary key pair and security group, launches, waits for `running`, runs the provisioner (a local "
        "sleep here), stops, creates the image, waits for it, terminates, deletes the temporary key pair and "
        "group. The bakery does the same launch → stop → image → wait → terminate, and also: checks the Chef "
        "server and the run list, resolves the base AMI, refuses a second bake in flight, looks for a reusable "
        "AMI (bake key), converges the role's own security group and IAM role + instance profile (kept between "
        "bakes, nothing temporary), launches with IMDSv2 + encrypted volume + tags, waits for the instance's "
        "Chef run to tag `bakery:bootstrap`, tags the image's snapshots, requires IMDSv2 on the image, deletes "
        "the bake's Chef node and client, and publishes (SSM parameter `/bakery/ROLE/latest`, the first-boot "
        "run list in S3, artifacts).",
        "",
        f"### (b) {n} roles with `--jobs {args.jobs}` against 1 role",
        "",
        f"| | 1 role (first bake) | {n} roles | ratio / per role | goal | |",
        "|---|---:|---:|---:|---|---|",
        f"| wall time | {_wall(first)} | {_wall(fleet)} | {fleet.wall / first.wall:.2f}× | ≤ 1.5× | "
        f"{_ok(fleet.wall / first.wall <= 1.5)} |",
        f"| AWS API calls | {first.total()} | {fleet.total()} | {fleet.total() / n:.1f} per role | | |",
        f"| … bootstrap polls (batched) | {first.bootstrap_polls()} | {fleet.bootstrap_polls()} | "
        f"{fleet.bootstrap_polls() / n:.1f} per role | | |",
        f"| … excluding bootstrap polls | {first.total() - first.bootstrap_polls()} | "
        f"{fleet.total() - fleet.bootstrap_polls()} | "
        f"{(fleet.total() - fleet.bootstrap_polls()) / n:.1f} per role | ≤ Packer's {pk.total()} per bake | "
        f"{_ok((fleet.total() - fleet.bootstrap_polls()) / n <= pk.total())} |",
        f"| … all of them, every poll included | {first.total()} | {fleet.total()} | {fleet.total() / n:.1f} per role "
        f"| (≤ Packer's {pk.total()}: not a goal) | {_ok(fleet.total() / n <= pk.total())} |",
        f"| RunInstances | {first.total('RunInstances')} | {fleet.total('RunInstances')} | | | |",
        f"| Chef API requests | {first.chef_total()} | {fleet.chef_total()} | {fleet.chef_total() / n:.1f} per role | | |",
        f"| slowest `bootstrap` stage | {_s(first.instance_work)} | {_s(fleet.instance_work)} | | | |",
        f"| moto/goiardi answer time per call, mean | {_ms(first)} | {_ms(fleet)} | | | |",
        f"| CPU time: bakery process / moto process | {_s(first.tool_cpu)} / {_s(first.moto_cpu)} | "
        f"{_s(fleet.tool_cpu)} / {_s(fleet.moto_cpu)} | | | |",
        *([f"| user data run time on the runner, mean (max) | {_mean(first.userdata_seconds)} | "
           f"{_mean(fleet.userdata_seconds)} | | | |"] if fleet.userdata_seconds else []),
        "",
        f"### (c) {n} unchanged roles (second bake, new release: same bake key, AMIs reused)",
        "",
        "| | value | goal | |",
        "|---|---:|---|---|",
        f"| wall time | {_wall(reuse)} | < 5 s | {_ok(reuse.wall < 5)} |",
        f"| RunInstances | {reuse.total('RunInstances')} | 0 | {_ok(reuse.total('RunInstances') == 0)} |",
        f"| roles reported reused | {sum(1 for s in reuse.states.values() if s.get('outcome') == 'reused')}/{n} | "
        f"{n}/{n} | {_ok(all(s.get('outcome') == 'reused' for s in reuse.states.values()))} |",
        f"| AWS API calls | {reuse.total()} ({reuse.total() / n:.1f} per role) | | |",
        f"| Chef API requests | {reuse.chef_total()} ({reuse.chef_total() / n:.1f} per role) | | |",
        f"| moto/goiardi answer time per call, mean | {_ms(reuse)} | | |",
        f"| CPU time: bakery process / moto process | {_s(reuse.tool_cpu)} / {_s(reuse.moto_cpu)} | | |",
        "",
        "### AWS API calls by operation",
        "",
        f"| operation | Packer | bakery first bake | bakery rebake | bakery, per role of {n} | "
        f"bakery reused, per role | moto's mean answer time in (b), ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ops = set()
    for p in phases.values():
        ops.update(p.ops())
    for op in sorted(ops, key=lambda o: (o.split(".")[0], o.split(".", 1)[1].replace(BATCHED, ""), o)):
        cells = [str(pk.ops().get(op, "")), str(first.ops().get(op, "")), str(rebake.ops().get(op, "")),
                 _per(fleet.ops().get(op, 0), n), _per(reuse.ops().get(op, 0), n), fleet.op_ms(op)]
        lines.append(f"| {op.replace(BATCHED, ' (batched poll)')} | " + " | ".join(cells) + " |")
    lines.append(f"| **total** | **{pk.total()}** | **{first.total()}** | **{rebake.total()}** | "
                 f"**{fleet.total() / n:.1f}** | **{reuse.total() / n:.1f}** | {_ms(fleet)} (all calls) |")
    chef_ops = sorted({f"{svc}.{op}" for p in (first, fleet, reuse) for (_, svc, op) in p.chef})
    lines += ["", "Chef API requests by operation (the bakery's own identity; the instances' are not counted): "
              + "; ".join(f"`{op.split('.', 1)[1]}` first bake {_count(first.chef, op)}, per role of {n} "
                          f"{_per(_count(fleet.chef, op), n) or 0}, reused per role {_per(_count(reuse.chef, op), n) or 0}"
                          for op in chef_ops) + "."]
    lines += ["", "### Where a one-role bake's time and AWS calls go (calls matched to stage start/finish times)", "",
              "| stage | first bake: time | calls | | rebake (`--force`): time | calls | |",
              "|---|---:|---:|---|---:|---:|---|"]
    a, b = per_stage(first), {name: (k, c) for name, k, c in per_stage(rebake)}
    for name, k, c in a:
        k2, c2 = b.get(name, (0, collections.Counter()))
        lines.append(f"| {name} | {_stage_time(first, name)} | {k} | {_op_list(c)} | {_stage_time(rebake, name)} | "
                     f"{k2} | {_op_list(c2)} |")
    cli = _by_op(real.instance_side, "aws-cli")
    lines += ["", f"Not counted above, as on AWS they are not the baking tool's calls: the real user data of "
              f"(a) made {sum(cli.values())} AWS CLI calls from the instance ({_op_list(cli)}) and ran for "
              f"{_mean(real.userdata_seconds)} on the runner; in (b) the instance runner (EC2's part, through "
              f"its own proxy) made {sum(fleet.instance_side.values())} calls "
              f"({_op_list(_by_op(fleet.instance_side, 'boto3'))})."]
    return "\n".join(lines) + "\n"


def table_a(pk: Phase, real: Phase, first: Phase, rebake: Phase) -> list[str]:
    cols = [pk, real, first, rebake]

    def row(label: str, fn: Any, packer: str | None = None) -> str:
        cells = [packer if (packer is not None and p is pk) else fn(p) for p in cols]
        return f"| {label} | " + " | ".join(cells) + " |"

    return [
        "| | Packer 1.6.6 | bakery, first bake of a role, real user data | bakery, first bake of a role | "
        "bakery, rebake (`--force`: SG, IAM exist) |",
        "|---|---:|---:|---:|---:|",
        row("wall time", _wall),
        row("instance-side time (Packer: a `shell-local` sleep of the boot delay standing in for provisioning; "
            "bakery: the `bootstrap` stage, i.e. boot delay + user data + poll granularity)",
            lambda p: _s(p.instance_work)),
        row("**orchestration time** (wall − instance-side)", lambda p: f"**{_s(p.wall - p.instance_work)}**"),
        row("**AWS API calls**", lambda p: f"**{p.total()}**"),
        row("… of which mutating", lambda p: str(p.mutating())),
        row("… of which bootstrap polls (batched DescribeInstances made during the `bootstrap` stage)",
            lambda p: str(p.bootstrap_polls()), "—"),
        row("AWS API calls excluding bootstrap polls", lambda p: str(p.total() - p.bootstrap_polls())),
        row("Chef API requests", lambda p: str(p.chef_total()), "—"),
        row("latency the proxy added to the tool's calls (sum)", lambda p: _s(p.added_latency)),
        row("moto/goiardi answer time for the tool's calls (sum)", lambda p: _s(p.upstream_time)),
        row("CPU time of the tool's processes", lambda p: _s(p.tool_cpu)),
    ]


def _by_op(counts: collections.Counter[Key], agent: str) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for (ag, svc, op), n in counts.items():
        if ag == agent:
            out[f"{svc}.{op}"] += n
    return out


def _count(counts: collections.Counter[Key], op: str) -> int:
    return sum(n for (_, svc, o), n in counts.items() if f"{svc}.{o}" == op)


def _ms(phase: Phase) -> str:
    calls = phase.total() + phase.chef_total()
    return f"{phase.upstream_time / calls * 1000:.0f} ms" if calls else "—"


def _per(total: int, n: int) -> str:
    return f"{total / n:.2g}" if total else ""


def _mean(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{sum(values) / len(values):.1f} s ({max(values):.1f} s)"


def write_readme(section: str, path: Path = README) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Latest figures (bench_bake.py)\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{section}{END}{tail}", encoding="utf-8")
    os.replace(tmp, path)


# --- entry point ------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_bake.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--latency-ms", dest="latency", type=parse_latency, default=parse_latency("20-50"),
                   metavar="LOW-HIGH", help="latency added to every AWS/Chef call, in ms (default 20-50)")
    p.add_argument("--boot-delay", type=float, default=2.0, metavar="S",
                   help="seconds the instance runner waits before running a bake's user data (default 2)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="S",
                   help="poll period of both tools, seconds (default 1; Packer rounds it to whole seconds)")
    p.add_argument("--instance-work", choices=("fixed", "real"), default="fixed",
                   help="fixed (default): bake instances are answered after exactly --boot-delay, except one role "
                        "in (a) whose real user data runs; real: every bake's user data runs on this machine")
    p.add_argument("--boot-test", choices=("on", "off"), default="off",
                   help="off (default): the bake alone, what Packer's amazon-ebs does too (roles with boot_test.enabled "
                        "false); on: every new AMI boot-tested, as the catalogue's default, to measure what that adds")
    p.add_argument("--roles", type=int, default=20, metavar="N", help="roles baked at once in (b) and (c) (default 20)")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="--jobs for (b) and (c) (default: --roles)")
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="rounds of Packer, first bake, N roles and reuse; the report shows medians (default 3)")
    p.add_argument("--no-readme", action="store_true", help="print the report only; leave bench/README.md alone")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, workspaces) for inspection")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.jobs = args.jobs or args.roles
    if args.roles < 1 or args.jobs < 1 or not 1 <= args.repeat <= 9 or args.boot_delay < 0 or not 0.05 <= args.poll_interval <= 60:
        print("bench_bake.py: --roles/--jobs must be >= 1, --repeat 1..9, --boot-delay >= 0, --poll-interval in [0.05, 60]",
              file=sys.stderr)
        return 2
    args.log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    packer = shutil.which("packer") or ""
    missing = [f"{tool} ({how})" for tool, how, ok in (
        ("packer", "Debian package `packer` 1.6.6", bool(packer)),
        ("goiardi", "Debian package `goiardi`", bool(shutil.which("goiardi"))),
    ) if not ok]
    if missing:
        print(f"bench_bake.py: required tools not found on PATH: {'; '.join(missing)}; `make system-deps` installs them",
              file=sys.stderr)
        return 2
    pver = first_line([packer, "version"])
    if PACKER_VERSION not in pver:
        args.log(f"warning: {pver} found, the comparison is meant for Packer {PACKER_VERSION}")

    # SIGTERM (a CI abort) unwinds like Ctrl-C, so every service below is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="bakery-bench-"))
    saved_env = dict(os.environ)
    try:
        with ExitStack() as stack:
            guard = stack.enter_context(EgressGuard())
            # Every child (moto, goiardi, the CLI, Packer, instance scripts) and this process's own clients
            # send non-loopback traffic to the guard, never to the network.
            os.environ.update(guard.env())
            args.log("starting moto, goiardi and the proxies ...")
            dev = stack.enter_context(DevStack(tmp / "stack"))
            lo_hi = args.latency
            aws = stack.enter_context(CountingProxy(dev.moto.url, latency=lo_hi, seed=1, name="aws"))
            inst = stack.enter_context(CountingProxy(dev.moto.url, latency=lo_hi, seed=2, name="instances"))
            chef = stack.enter_context(CountingProxy(dev.goiardi.url, kind="chef", latency=lo_hi, seed=3, name="chef"))
            bench = Bench(args, tmp, dev, aws, inst, chef, guard, packer)
            try:
                runs = bench.run()
            finally:
                if bench.runner is not None:
                    bench.runner.stop()
            if guard.attempts:
                raise BenchError(f"something tried to leave 127.0.0.1: {guard.attempts[:5]}")
        text = report(runs, args, machine(), versions(packer))
    except BenchError as exc:
        print(f"bench_bake.py: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bench_bake.py: interrupted; services stopped", file=sys.stderr)
        return 130
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        if args.keep:
            print(f"bench_bake.py: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if not args.no_readme:
        write_readme(text)
        args.log(f"figures written to {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
