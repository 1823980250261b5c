#!/usr/bin/env python3
"""What the AMI lifecycle features (deprecation, deregistration protection, the package inventory and its
SBOM) cost a release, per role of a 20-role release, call by call; and what prune costs.

Everything on 127.0.0.1: moto behind the devstack's AMI layer (``devstack.ami_layer``), and in front
of it the counting proxy of ``bench/proxy.py`` adding 20–50 ms to every call (as AWS's latency). For
``--roles`` roles, two releases, each role's steps in process as a bake runs them (one ``Aws`` for the
release, as in ``bakery bake``): preflight's listing of the role's AMIs (all roles at once: the bakes
of a release start together and share it), the bootstrap stage's SBOM step (``inventory.record_sbom``:
the inventory the instance uploaded, the SBOM, the package diff against the previous AMI), the AMI as
wait-image leaves it, publish (``amis.retire`` inside it: deprecation time and deregistration protection
of the new AMI, the at-once deprecation of the one it supersedes). What the instance and the image
stages do is played straight to moto, unproxied: those are not these features' calls. Then each role
is pruned with ``--keep 1`` in a dry run (references, the Recycle Bin look-up, the bake records the
deletions would take with them). Counted at the proxy, in the second release, per role and per API:

- the calls of items 2–6 of the issue (deprecation, protection, the SBOM step; retention is prune's,
  Fast Launch Windows-only and apart): the goal is at most 4 per role;
- their seconds per role: the SBOM step's wall time (its calls, building the CycloneDX document,
  writing the artifacts) plus the time of publish's lifecycle calls (moto's answer + the added latency);
- preflight's listing of the role's AMIs: the call its reuse look-up makes anyway (batched across the
  roles), which the SBOM step and publish read instead of listing again: shown, not added;
- prune's calls per role (DescribeImages, DescribeImageReferences, rbin ListRules, S3 ListObjectsV2);
- for ``--fast-roles`` Windows roles with ``fast_launch`` and ``fast_snapshot_restore`` (published apart):
  the calls of those two features per role (EnableFastLaunch, DescribeFastLaunchImages until
  ``enabled``, the DescribeImages for the snapshots, EnableFastSnapshotRestores), the wait included.

``python bench/bench_fleet.py [--roles 20] [--fast-roles 2] [--latency-ms 20-50]``; prints markdown
tables. Exit 0.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "tests", REPO / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from proxy import CountingProxy  # noqa: E402
from support.stages import (  # noqa: E402
    make_ctx,
    new_aws,
    open_bake,
    record_role_amis,
    register_baked_ami,
    upload_inventory,
)

from bakery_lib.inventory import record_sbom  # noqa: E402
from bakery_lib.lifecycle import prune  # noqa: E402
from bakery_lib.stages import publish  # noqa: E402
from devstack.ami_layer import LayeredMoto  # noqa: E402
from devstack.moto import seed_base_image  # noqa: E402

# Items 2-6's calls, as the proxy names them, and what each is for (in a plain Linux role's release).
SBOM_OPS = {"GetObject": "6: the inventory the instance uploaded; the previous AMI's SBOM (for the diff)",
            "PutObject": "6: the SBOM, next to the inventory",
            "DescribeImages": "6: the role's previous AMI (none: preflight's listing has it)"}
LIFECYCLE_OPS = {"EnableImageDeprecation": "2: the new AMI's deprecation time; the superseded AMI's, at once",
                 "EnableImageDeregistrationProtection": "3: the new AMI (latest points at it)",
                 "DescribeImages": "2: the AMIs the new one supersedes (none: preflight's listing has them)"}
FAST_OPS = {"EnableFastLaunch", "DescribeFastLaunchImages", "EnableFastSnapshotRestores"}
FAST = {"platform": "windows", "fast_launch": {"max_parallel_launches": 6}, "fast_snapshot_restore": ["us-east-1a"]}
RELEASES = ({"bash": "5.2.15-2", "nano": "7.2-1", "tzdata": "2024a"},
            {"bash": "5.2.15-3", "curl": "7.88.1", "tzdata": "2024a"})


class Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url


class Phase:
    """What the proxy counted in one phase of a release: calls and seconds (answer + latency) per API."""

    def __init__(self, proxy: CountingProxy, latency: float, seconds: float) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.time: collections.Counter[str] = collections.Counter()
        for (_, _, op), n in proxy.snapshot().items():
            self.calls[op] += n
        for (_, _, op), t in proxy.upstream_by_key().items():
            self.time[op] += t
        for op, n in self.calls.items():
            self.time[op] += n * latency
        self.seconds = seconds
        proxy.reset()


def _release(moto: LayeredMoto, proxy: CountingProxy, tmp: Path, roles: list[str], release: int,
             latency: float) -> dict[str, Phase]:
    """One release of every role: preflight's listing (all at once), the SBOM step, publish."""
    aws = new_aws(Endpoint(proxy.url))  # type: ignore[arg-type]
    s3, ec2 = moto.client("s3"), moto.client("ec2")
    ctxs = []
    for role in roles:
        ctx = make_ctx(moto, tmp / role / str(release), role=role)
        ctx.aws = aws
        open_bake(ctx, "ami-00000000")
        ctx.state.release = f"{release}.0"
        upload_inventory(s3, ctx, RELEASES[release - 1])  # the bake instance's upload: not counted
        ctxs.append(ctx)
    proxy.reset()
    phases = {}
    started = time.monotonic()
    with ThreadPoolExecutor(len(ctxs)) as pool:
        list(pool.map(record_role_amis, ctxs))
    phases["listing"] = Phase(proxy, latency, time.monotonic() - started)
    started = time.monotonic()
    for ctx in ctxs:
        message = record_sbom(ctx)
        assert message.startswith("SBOM s3://") and (release == 1 or " vs ami-" in message), message
    phases["sbom"] = Phase(proxy, latency, time.monotonic() - started)
    for ctx in ctxs:
        register_baked_ami(ec2, ctx)  # the image stages' AMI: not counted
    proxy.reset()
    started = time.monotonic()
    for ctx in ctxs:
        message = publish.run(ctx)
        assert release == 1 or "deprecated superseded" in message, message
    phases["publish"] = Phase(proxy, latency, time.monotonic() - started)
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", type=int, default=20)
    parser.add_argument("--fast-roles", type=int, default=2)
    parser.add_argument("--latency-ms", default="20-50")
    args = parser.parse_args(argv)
    low, high = (float(x) / 1000 for x in args.latency_ms.split("-"))
    latency = (low + high) / 2
    roles = [f"fleet{i:02d}" for i in range(args.roles)]
    with LayeredMoto() as moto, CountingProxy(moto.url, latency=(low, high)) as proxy, \
            tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp_dir:
        tmp = Path(tmp_dir)
        moto.client("s3").create_bucket(Bucket="acme-bakery")
        _release(moto, proxy, tmp, roles, 1, latency)
        second = _release(moto, proxy, tmp, roles, 2, latency)
        proxy.reset()
        started = time.monotonic()
        for role in roles:
            spec = make_ctx(moto, tmp / role, role=role).role
            prune(new_aws(Endpoint(proxy.url)), spec, 1, dry_run=True)  # type: ignore[arg-type]
        pruned = Phase(proxy, latency, time.monotonic() - started)
        fast_calls, fast_seconds = _fast_roles(moto, proxy, tmp, args.fast_roles)
    print(_tables(len(roles), second, pruned))
    if args.fast_roles:
        print(f"\n| Windows roles with fast_launch + fast_snapshot_restore | their calls per role (wait included) | "
              f"seconds per role in publish |\n|---|---|---|\n"
              f"| {args.fast_roles} | {fast_calls:.1f} | {fast_seconds:.2f} |")
    return 0


def _tables(n: int, second: dict[str, Phase], pruned: Phase) -> str:
    sbom, pub, listing = second["sbom"], second["publish"], second["listing"]
    rows: list[tuple[str, str, float, float]] = []  # (api, what for, calls, seconds)
    for phase, ops in ((sbom, SBOM_OPS), (pub, LIFECYCLE_OPS)):
        for op, why in ops.items():
            service = "s3" if op.endswith("Object") else "ec2"
            rows.append((f"{service}.{op}", why, phase.calls[op], phase.time[op]))
    calls = sum(r[2] for r in rows)
    lifecycle_seconds = sum(pub.time[op] for op in LIFECYCLE_OPS)
    seconds = sbom.seconds + lifecycle_seconds
    out = ["| API call | item: what for | calls per role | ms per call (answer + latency) |", "|---|---|---:|---:|"]
    for api, why, k, t in rows:
        out.append(f"| {api} | {why} | {k / n:.1f} | {1000 * t / k:.0f} |" if k else f"| {api} | {why} | 0 | |")
    out.append(f"| **total** | | **{calls / n:.1f}** (goal ≤ 4) | |")
    others = ", ".join(f"{op} {k / n:.1f}" for op, k in sorted(pub.calls.items()) if op not in LIFECYCLE_OPS)
    out += ["", "| roles | items 2–6: calls per role | seconds per role (SBOM step + publish's lifecycle calls) | "
                "preflight's listing of the role's AMIs (its reuse look-up; not extra) | publish's other calls per role | "
                "prune (dry run) calls per role | prune seconds per role |",
            "|---|---:|---|---|---|---:|---:|",
            f"| {n} | {calls / n:.1f} | {seconds / n:.2f} ({sbom.seconds / n:.2f} + {lifecycle_seconds / n:.2f}) | "
            f"{listing.calls['DescribeImages']} DescribeImages for the {n} roles | {others} | "
            f"{sum(pruned.calls.values()) / n:.1f} ({_ops(pruned.calls, n)}) | {pruned.seconds / n:.2f} |"]
    return "\n".join(out)


def _ops(calls: collections.Counter[str], n: int) -> str:
    return ", ".join(f"{op} {k / n:.2g}" for op, k in sorted(calls.items()))


def _fast_roles(moto: LayeredMoto, proxy: CountingProxy, tmp: Path, count: int) -> tuple[float, float]:
    """Fast Launch and fast snapshot restore calls per role, and publish's seconds per role, for ``count``
    Windows roles (one release each: the features' calls do not depend on a previous one)."""
    if not count:
        return 0.0, 0.0
    roles = [f"win{i:02d}" for i in range(count)]
    images: dict[str, Any] = {r: seed_base_image(moto.client("ec2"), f"bakery-{r}-1", platform="windows", tags={
        "bakery:role": r, "bakery:created-by": "bakery", "bakery:bake-id": "20260101000001-abcdef"}) for r in roles}
    proxy.reset()
    started = time.monotonic()
    for role in roles:
        ctx = make_ctx(Endpoint(proxy.url), tmp / images[role], FAST, role=role)
        open_bake(ctx, "ami-00000000")
        ctx.state.image_id = images[role]
        ctx.state.amis = {"us-east-1": images[role]}
        ctx.save()
        publish.run(ctx)
    seconds = time.monotonic() - started
    counts = proxy.snapshot()
    # The DescribeImages for the snapshots is one of a plain publish's too: only the features' own here.
    calls = sum(n for (_, _, op), n in counts.items() if op in FAST_OPS) + len(roles)
    return calls / len(roles), seconds / len(roles)


if __name__ == "__main__":
    sys.exit(main())
