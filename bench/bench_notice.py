#!/usr/bin/env python3
"""How fast waits notice, and what they cost: ``bakery bake`` at its default settings beside Packer 1.6.6.

Everything on 127.0.0.1, started and stopped here: moto + goiardi (:class:`devstack.DevStack`), and in
front of moto the fault proxy with its realism layer (``tests/faults/realism.py``) so that states take
time as on AWS: new ids invisible for 1 s, instances ``pending`` 1 s and ``stopping`` ``--stopping``
seconds, images ``pending`` ``--image-pending`` seconds. Each bake instance is answered by a booter
thread that tags it ``bakery:bootstrap=succeeded`` ``--boot-delay`` seconds after it is running (the
last thing the real user data does) and records when. An egress guard refuses anything not for
127.0.0.1.

Measured, with the bakery at its defaults (no ``BAKERY_POLL_INTERVAL``) for 1 role and for ``--roles``
roles baked together, and Packer at its defaults (``bench/packer/amazon-ebs-defaults.json``: no
``aws_polling``) through the same layer:

- **notice latency**, per event: from the moment the ``bakery:bootstrap`` tag is set / the instance
  is ``stopped`` / the image is ``available`` to (a) the first describe call of the tool that could see
  it (both tools) and (b) for the bakery, the stage finishing (the state file's ``finished_at``);
- **describe calls per minute** (DescribeInstances + DescribeImages of the tool) over the bake, and the
  most such calls in any 3-second window (the batching: one per region per few seconds however many
  bakes run).

Prints a markdown report and writes it between markers into bench/README.md (``--no-readme`` not to).
Exit 0 when the run completed, 1 when a bake failed, 2 on a missing tool.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests"):  # `python bench/bench_notice.py`: the repo and the test helpers
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from faults.proxy import Call, FaultProxy  # noqa: E402
from faults.realism import Realism  # noqa: E402

from bench.bench_bake import BASE_AMI_FILTER, run_child  # noqa: E402
from bench.proxy import EgressGuard  # noqa: E402
from devstack import DevStack, isolated_env  # noqa: E402

README = REPO / "bench" / "README.md"
BEGIN, END = "<!-- bench_notice:begin -->", "<!-- bench_notice:end -->"
PACKER_TEMPLATE = REPO / "bench" / "packer" / "amazon-ebs-defaults.json"
DESCRIBES = ("DescribeInstances", "DescribeImages")


class Booter(threading.Thread):
    """Tags each running bake instance ``bakery:bootstrap=succeeded`` ``delay`` s after first seeing it."""

    def __init__(self, dev: DevStack, delay: float):
        super().__init__(name="booter", daemon=True)
        self.dev, self.delay = dev, delay
        self.tagged: dict[str, float] = {}  # instance id -> wall time of the tag
        self.stop = threading.Event()

    def run(self) -> None:
        ec2 = self.dev.moto.client("ec2")
        seen: dict[str, float] = {}
        while not self.stop.wait(0.05):
            found = ec2.describe_instances(Filters=[{"Name": "tag:bakery:purpose", "Values": ["bake"]},
                                                    {"Name": "instance-state-name", "Values": ["running"]}])
            now = time.time()
            for inst in (i for r in found["Reservations"] for i in r["Instances"]):
                iid = inst["InstanceId"]
                seen.setdefault(iid, now)
                if iid not in self.tagged and now - seen[iid] >= self.delay:
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    admin = self.dev.goiardi.client()
                    node = tags["bakery:chef-node"]
                    if not admin.client_exists(node):
                        admin.create_client(node)
                    ec2.create_tags(Resources=[iid], Tags=[{"Key": "bakery:bootstrap", "Value": "succeeded"}])
                    self.tagged[iid] = time.time()


def mentions(call: Call, rid: str) -> bool:
    return any(rid == v or (isinstance(v, list) and rid in v) for v in call.params.values())


def first_poll_after(calls: Sequence[Call], op: str, rid: str, at: float) -> float | None:
    """When the tool's first ``op`` naming ``rid`` (by id or filter) came after ``at``: it could see the event."""
    for c in calls:
        if c.operation == op and c.at >= at and mentions(c, rid):
            return c.at
    return None


def events(calls: Sequence[Call], realism: Realism, tagged: dict[str, float]) -> list[tuple[str, str, str, float]]:
    """(kind, resource, poll operation, wall time the event became visible) of every bake in ``calls``."""
    out: list[tuple[str, str, str, float]] = []
    for iid, at in tagged.items():
        out.append(("bootstrap", iid, "DescribeInstances", at))
    for c in calls:
        if c.operation == "StopInstances" and c.ok:
            iid = str(c.params.get("InstanceId.1"))
            out.append(("stop", iid, "DescribeInstances", c.at + realism.stopping))
        if c.operation == "CreateImage" and c.ok:
            out.append(("image", str(c.params.get("InstanceId")), "DescribeImages", c.at + realism.image_pending))
    return out


def is_poll(call: Call) -> bool:
    """A wait's describe: the bakery's batched ``instance-id``/``image-id`` filter, or Packer's by-id call."""
    values = {str(v) for v in call.params.values()}
    return bool(values & {"instance-id", "image-id"}) or any(k.startswith(("InstanceId.", "ImageId.")) for k in call.params)


def describe_rate(calls: Sequence[Call], op: str, start: float, end: float, polls: bool = False) -> tuple[float, int]:
    """``op`` calls (only the polls: ``polls``) per minute over [start, end], and the most in any 3 s window."""
    times = sorted(c.at for c in calls if c.operation == op and start <= c.at <= end and (not polls or is_poll(c)))
    per_min = len(times) / max(end - start, 1e-6) * 60
    peak = max((sum(1 for u in times if t <= u < t + 3.0) for t in times), default=0)
    return per_min, peak


def pct(values: Iterable[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    return vals[min(len(vals) - 1, int(round(q * (len(vals) - 1))))]


class Run:
    """One tool run: its calls, its events and their notice latencies."""

    def __init__(self, name: str, roles: int):
        self.name, self.roles = name, roles
        self.first_poll: dict[str, list[float]] = {"bootstrap": [], "stop": [], "image": []}
        self.stage_end: dict[str, list[float]] = {"bootstrap": [], "stop": [], "image": []}
        self.rates: dict[str, tuple[float, int]] = {}
        self.poll_rates: dict[str, tuple[float, int]] = {}
        self.wall = 0.0


def analyse(run: Run, calls: list[Call], realism: Realism, tagged: dict[str, float], dev: DevStack,
            states: dict[str, dict[str, Any]], start: float, end: float) -> Run:
    images = {}  # instance id -> image id (CreateImage's answer is not in the call log: ask moto)
    ec2 = dev.moto.client("ec2")
    for image in ec2.describe_images(Owners=["self"])["Images"]:
        if image.get("SourceInstanceId"):
            images[image["SourceInstanceId"]] = image["ImageId"]
    by_instance = {s.get("instance_id"): s for s in states.values()}
    stage_of = {"bootstrap": "bootstrap", "stop": "stop", "image": "wait-image"}
    for kind, iid, op, at in events(calls, realism, tagged):
        rid = images.get(iid, "") if kind == "image" else iid
        seen = first_poll_after(calls, op, rid, at) if rid else None
        if seen is not None:
            run.first_poll[kind].append(seen - at)
        state = by_instance.get(iid)
        if state:
            rec = state["stages"].get(stage_of[kind]) or {}
            if rec.get("finished_at"):
                run.stage_end[kind].append(max(0.0, rec["finished_at"] - at))
    run.rates = {op: describe_rate(calls, op, start, end) for op in DESCRIBES}
    run.poll_rates = {op: describe_rate(calls, op, start, end, polls=True) for op in DESCRIBES}
    run.wall = end - start
    return run


def bake(dev: DevStack, tmp: Path, proxy: FaultProxy, roles: int, tag: str, boot_delay: float) -> tuple[Run, Realism]:
    names = [f"n{tag}{i:02d}" for i in range(roles)]
    catalog = dev.write_catalog(tmp / f"bakery-{tag}.yaml", roles=names)
    realism = Realism(invisible=1.0, pending=1.0, stopping=ARGS.stopping, image_pending=ARGS.image_pending, iam=0)
    proxy.reset()
    proxy.realism = realism
    env = isolated_env({**dev.env, "AWS_ENDPOINT_URL": proxy.url})
    env.pop("BAKERY_POLL_INTERVAL", None)  # the defaults are what is measured
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    ws = tmp / f"ws-{tag}"
    booter = Booter(dev, boot_delay)
    booter.start()
    start = time.time()
    try:
        cmd = [sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(catalog), "bake",
               "--release", "1.0", "--jobs", str(roles)] + [a for n in names for a in ("--role", n)]
        proc = run_child(cmd, env=env, cwd=tmp, timeout=600, what=f"bakery bake ({roles} roles)")
    finally:
        booter.stop.set()
        booter.join(5)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"bench_notice.py: the bake of {roles} role(s) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    states = {n: json.loads((ws / ".bakery" / f"{n}.json").read_text()) for n in names}
    run = analyse(Run(f"bakery, {roles} role(s)", roles), proxy.calls_since(), realism, booter.tagged, dev,
                  states, start, end)
    return run, realism


def packer(dev: DevStack, tmp: Path, proxy: FaultProxy, packer_bin: str) -> Run:
    realism = Realism(invisible=1.0, pending=1.0, stopping=ARGS.stopping, image_pending=ARGS.image_pending, iam=0)
    proxy.reset()
    proxy.realism = realism
    home = tmp / "packer-home"
    home.mkdir(exist_ok=True)
    env = isolated_env({**dev.moto.env(), "HOME": str(home), "TMPDIR": str(home), "CHECKPOINT_DISABLE": "1",
                        "PACKER_NO_COLOR": "1"})
    env.pop("AWS_ENDPOINT_URL", None)
    ec2 = dev.moto.client("ec2")
    base = sorted(ec2.describe_images(**BASE_AMI_FILTER)["Images"], key=lambda i: i["CreationDate"])[-1]["ImageId"]
    cmd = [packer_bin, "build", "-machine-readable", "-var", f"endpoint={proxy.url}", "-var", f"region={dev.region}",
           "-var", f"source_ami={base}", "-var", f"ami_name=packer-notice-{int(time.time())}", str(PACKER_TEMPLATE)]
    start = time.time()
    proc = run_child(cmd, env=env, cwd=tmp, timeout=900, what="Packer")
    end = time.time()
    if proc.returncode != 0:
        errors = [ln.split(",ui,error,", 1)[1] for ln in proc.stdout.splitlines() if ",ui,error," in ln]
        raise SystemExit(f"bench_notice.py: Packer failed: {' | '.join(errors[-3:]) or proc.stderr[-800:]}")
    return analyse(Run("Packer 1.6.6, 1 build", 1), proxy.calls_since(), realism, {}, dev, {}, start, end)


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{statistics.median(values):.1f} / {pct(values, 0.95):.1f}"


def report(runs: list[Run], boot_delay: float) -> str:
    lines = [
        f"Realism: stopping {ARGS.stopping:g} s, image pending {ARGS.image_pending:g} s, new ids invisible 1 s; "
        f"the bootstrap tag {boot_delay:g} s after running. Defaults: bakery poll {default_poll():g} s "
        "(no `BAKERY_POLL_INTERVAL`); Packer: no `aws_polling`. Seconds, median / p95 over the bakes' events.",
        "",
        "| run | event | first describe that could see it | stage finished (bakery) |",
        "|---|---|---|---|",
    ]
    names = {"bootstrap": "`bakery:bootstrap` tag set", "stop": "instance `stopped`", "image": "image `available`"}
    for r in runs:
        for kind, label in names.items():
            if not r.first_poll[kind] and not r.stage_end[kind]:
                continue
            lines.append(f"| {r.name} | {label} | {fmt(r.first_poll[kind])} | {fmt(r.stage_end[kind])} |")
    lines += ["", "Describe calls per minute over the run (most in any 3 s): the waits' polls, and all describes "
              "(with the look-ups: reuse, in-flight and concurrent-bake checks).", "",
              "| run | wall | DescribeInstances polls | DescribeImages polls | all DescribeInstances | all DescribeImages |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        cells = " | ".join(f"{rates[op][0]:.0f} ({rates[op][1]})" for rates in (r.poll_rates, r.rates) for op in DESCRIBES)
        lines.append(f"| {r.name} | {r.wall:.1f} s | {cells} |")
    pk = next((r for r in runs if r.name.startswith("Packer")), None)
    one = next((r for r in runs if r.roles == 1 and r.name.startswith("bakery")), None)
    if pk and one:
        ratios = []
        for kind in ("stop", "image"):
            if pk.first_poll[kind] and one.first_poll[kind]:
                p_med, b_med = statistics.median(pk.first_poll[kind]), statistics.median(one.first_poll[kind])
                ratios.append(f"{names[kind]}: Packer sees it {p_med:.1f} s after, the bakery {b_med:.1f} s "
                              f"({p_med / max(b_med, 0.05):.0f}x sooner)")
        lines += ["", "Median notice, one build against one bake: " + "; ".join(ratios) + "."]
    return "\n".join(lines)


def default_poll() -> float:
    from bakery_lib.waits import DEFAULT_INTERVAL  # read here so the report shows the product's value

    return DEFAULT_INTERVAL


def write_readme(text: str) -> None:
    body = README.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body and END in body:
        body = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _m: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n## Notice latency and describe rate (bench_notice.py)\n\n" + block + "\n"
    README.write_text(body, encoding="utf-8")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--roles", type=int, default=20, help="roles baked together in the second bakery run (20)")
    p.add_argument("--boot-delay", type=float, default=3.0, help="seconds from running to the bootstrap tag (3)")
    p.add_argument("--stopping", type=float, default=3.0, help="seconds an instance stays stopping (3)")
    p.add_argument("--image-pending", type=float, default=8.0, help="seconds an image stays pending (8)")
    p.add_argument("--no-packer", action="store_true", help="skip the Packer run")
    p.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    return p.parse_args(argv)


ARGS = argparse.Namespace(stopping=3.0, image_pending=8.0)


def main(argv: Sequence[str] | None = None) -> int:
    global ARGS
    ARGS = parse(argv)
    packer_bin = shutil.which("packer")
    if not ARGS.no_packer and packer_bin is None:
        print("bench_notice.py: packer not found on PATH (make system-deps), or use --no-packer", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="bakery-notice-"))
    saved = dict(os.environ)
    try:
        with ExitStack() as stack:
            guard = stack.enter_context(EgressGuard())
            os.environ.update(guard.env())
            dev = stack.enter_context(DevStack(tmp / "stack"))
            proxy = stack.enter_context(FaultProxy(dev.moto.url))
            runs = [bake(dev, tmp, proxy, 1, "a", ARGS.boot_delay)[0],
                    bake(dev, tmp, proxy, ARGS.roles, "b", ARGS.boot_delay)[0]]
            if not ARGS.no_packer:
                assert packer_bin is not None
                runs.append(packer(dev, tmp, proxy, packer_bin))
            if guard.attempts:
                print(f"bench_notice.py: something tried to leave 127.0.0.1: {guard.attempts[:5]}", file=sys.stderr)
                return 1
    except (KeyboardInterrupt, subprocess.SubprocessError) as exc:
        print(f"bench_notice.py: stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(runs, ARGS.boot_delay)
    print(text)
    if not ARGS.no_readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
