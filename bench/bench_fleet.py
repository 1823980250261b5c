#!/usr/bin/env python3
"""What AWS's AMI features cost publish and prune: extra calls and seconds per role in a 20-role release.

Everything on 127.0.0.1: moto behind the devstack's AMI layer (``devstack.ami_layer``), and in front
of it the counting proxy of ``bench/proxy.py`` adding 20–50 ms to every call (as AWS's latency). For
``--roles`` roles, two releases are published in process (``bakery_lib.amis.retire`` inside the
publish stage: deprecation time and deregistration protection of the new AMI, the at-once deprecation
of the one it supersedes), then each role is pruned with ``--keep 1`` in a dry run (references, the
Recycle Bin rule look-up). Counted at the proxy, per role:

- the extra calls of the second release's publish (EnableImageDeprecation,
  EnableImageDeregistrationProtection, the role's DescribeImages, the superseded AMI's deprecation);
  the goal is at most 4 per role;
- the seconds publish spent in them (the proxy's latency included), per role;
- prune's calls per role (DescribeImages, DescribeImageReferences, rbin ListRules);
- for ``--fast-roles`` Windows roles with ``fast_launch`` and ``fast_snapshot_restore`` (published apart):
  the calls of those two features per role (EnableFastLaunch, DescribeFastLaunchImages until
  ``enabled``, the DescribeImages for the snapshots, EnableFastSnapshotRestores), the wait included.

``python bench/bench_fleet.py [--roles 20] [--fast-roles 2] [--latency-ms 20-50]``; prints a markdown
table. Exit 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "tests", REPO / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from proxy import CountingProxy  # noqa: E402
from support.stages import make_ctx, new_aws, open_bake  # noqa: E402

from bakery_lib.lifecycle import prune  # noqa: E402
from bakery_lib.stages import publish  # noqa: E402
from devstack.ami_layer import LayeredMoto  # noqa: E402
from devstack.moto import seed_base_image  # noqa: E402

FLEET_OPS = {"EnableImageDeprecation", "EnableImageDeregistrationProtection", "DescribeImages"}
FAST_OPS = {"EnableFastLaunch", "DescribeFastLaunchImages", "EnableFastSnapshotRestores"}
FAST = {"platform": "windows", "fast_launch": {"max_parallel_launches": 6}, "fast_snapshot_restore": ["us-east-1a"]}


def _publish(url: str, tmp: Path, role: str, image_id: str, overrides: dict | None = None) -> None:
    class Endpoint:
        pass
    endpoint = Endpoint()
    endpoint.url = url  # type: ignore[attr-defined]
    ctx = make_ctx(endpoint, tmp / image_id, overrides or {}, role=role)
    open_bake(ctx, "ami-00000000")
    ctx.state.image_id = image_id
    ctx.state.amis = {"us-east-1": image_id}
    ctx.save()
    publish.run(ctx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roles", type=int, default=20)
    parser.add_argument("--fast-roles", type=int, default=2)
    parser.add_argument("--latency-ms", default="20-50")
    args = parser.parse_args(argv)
    low, high = (float(x) / 1000 for x in args.latency_ms.split("-"))
    roles = [f"fleet{i:02d}" for i in range(args.roles)]
    with LayeredMoto() as moto, CountingProxy(moto.url, latency=(low, high)) as proxy, \
            tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp_dir:
        tmp = Path(tmp_dir)
        ec2 = moto.client("ec2")
        moto.client("s3").create_bucket(Bucket="acme-bakery")
        amis = {r: [seed_base_image(ec2, f"bakery-{r}-{n}", tags={
            "bakery:role": r, "bakery:created-by": "bakery", "bakery:bake-id": f"2026010100000{n}-abcdef"})
            for n in (1, 2)] for r in roles}
        for role in roles:
            _publish(proxy.url, tmp, role, amis[role][0])
        proxy.reset()
        started = time.monotonic()
        for role in roles:
            _publish(proxy.url, tmp, role, amis[role][1])
        publish_seconds = time.monotonic() - started
        counts = proxy.snapshot()
        fleet = sum(n for (_, _, op), n in counts.items() if op in FLEET_OPS)
        # Their cost: moto's (and the layer's) answer time plus the latency the proxy added to each.
        fleet_seconds = (sum(t for (_, _, op), t in proxy.upstream_by_key().items() if op in FLEET_OPS)
                         + fleet * (low + high) / 2)
        total = sum(counts.values())
        proxy.reset()
        started = time.monotonic()

        class Endpoint:
            url = proxy.url
        for role in roles:
            spec = make_ctx(moto, tmp / role, role=role).role
            prune(new_aws(Endpoint()), spec, 1, dry_run=True)  # type: ignore[arg-type]
        prune_seconds = time.monotonic() - started
        prune_calls = sum(proxy.snapshot().values())
        fast_calls, fast_seconds = _fast_roles(moto, proxy, tmp, args.fast_roles)
    per_role = fleet / len(roles)
    print(f"| roles | extra publish calls per role (goal ≤ 4) | publish calls per role | "
          f"seconds per role in publish (the extra calls) | prune calls per role | prune seconds per role |\n"
          f"|---|---|---|---|---|---|\n"
          f"| {len(roles)} | {per_role:.1f} | {total / len(roles):.1f} | "
          f"{publish_seconds / len(roles):.2f} ({fleet_seconds / len(roles):.2f}) | "
          f"{prune_calls / len(roles):.1f} | {prune_seconds / len(roles):.2f} |")
    if args.fast_roles:
        print(f"\n| Windows roles with fast_launch + fast_snapshot_restore | their calls per role (wait included) | "
              f"seconds per role in publish |\n|---|---|---|\n"
              f"| {args.fast_roles} | {fast_calls:.1f} | {fast_seconds:.2f} |")
    return 0


def _fast_roles(moto: LayeredMoto, proxy: CountingProxy, tmp: Path, count: int) -> tuple[float, float]:
    """Fast Launch and fast snapshot restore calls per role, and publish's seconds per role, for ``count``
    Windows roles (one release each: the features' calls do not depend on a previous one)."""
    if not count:
        return 0.0, 0.0
    roles = [f"win{i:02d}" for i in range(count)]
    images = {r: seed_base_image(moto.client("ec2"), f"bakery-{r}-1", platform="windows", tags={
        "bakery:role": r, "bakery:created-by": "bakery", "bakery:bake-id": "20260101000001-abcdef"}) for r in roles}
    proxy.reset()
    started = time.monotonic()
    for role in roles:
        _publish(proxy.url, tmp, role, images[role], FAST)
    seconds = time.monotonic() - started
    counts = proxy.snapshot()
    # The DescribeImages for the snapshots is one of a plain publish's too: only the features' own here.
    calls = sum(n for (_, _, op), n in counts.items() if op in FAST_OPS) + len(roles)
    return calls / len(roles), seconds / len(roles)


if __name__ == "__main__":
    sys.exit(main())
