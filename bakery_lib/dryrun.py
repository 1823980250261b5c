"""``bakery bake --dry-run`` and ``bakery validate``: what a bake would do, asking AWS and Chef only.

Nothing is created, changed or written (not even in the workspace): every AWS call is a
Describe/Get/List/Head call, the Chef server is only read. Per role the answer is one line:

- ``reuse``   an available, boot-tested AMI has the same bake key: nothing would be launched;
- ``bake``    and why (no AMI of the role yet, the base AMI moved, or another input changed);
- ``refused`` and why (what preflight would refuse: platform, instance type, base AMI, Chef run list,
  another bake in flight, an open bake in this workspace), with what to do about it.

``validate`` adds what launch and publish would find only later (subnets, VPC, bucket, topic, KMS keys).
Exit codes as elsewhere: 0 every role could bake or reuse, 1 a role would be refused, 2 bad catalogue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .aws import Aws, tags_of
from .catalog import Catalog
from .checks import reachability_problems
from .clock import Clock
from .errors import BakeryError
from .settings import Settings
from .stages import preflight
from .stages.base import Context, Session
from .state import Workspace


@dataclass(frozen=True)
class RolePlan:
    role: str
    action: str  # reuse | bake | refused | ok (validate)
    detail: str
    exit_code: int = 0


def _why_bake(ctx: Context, found: preflight.Inspection) -> str:
    role = ctx.role
    images = found.role_images  # the role's available AMIs, as preflight's reuse look-up listed them
    base = found.base_image["ImageId"]
    if ctx.force:
        return f"--force: rebake from {base}"
    if not images:
        return f"no AMI of role {role.name} yet; would bake from {base}"
    newest = max(images, key=lambda i: (i.get("CreationDate") or "", i["ImageId"]))
    tags = tags_of(newest)
    if tags.get("bakery:bake-key") == found.bake_key:
        return (f"{newest['ImageId']} has the same bake key but boot-test {tags.get('bakery:boot-test') or 'not run'}; "
                f"would bake from {base}")
    if tags.get("bakery:base-ami") not in (None, base):
        return f"the base AMI changed ({tags['bakery:base-ami']} -> {base}) since {newest['ImageId']}"
    return (f"an input changed since {newest['ImageId']} (catalogue settings, run-list cookbook versions or "
            f"the bakery version); would bake from {base}")


def plan_role(ctx: Context, release: str, *, validate: bool = False) -> RolePlan:
    """One role's plan; never raises for an expected refusal."""
    name = ctx.role.name
    ctx.state = ctx.ws.load(name)
    try:
        open_bake = None if validate else preflight.refuse_open_bake(ctx, release)
        if open_bake:
            return RolePlan(name, "refused", f"{open_bake}; the next `bakery bake` continues it")
        found = preflight.inspect(ctx)
        problems = reachability_problems(ctx) if validate else []
    except BakeryError as exc:
        return RolePlan(name, "refused", str(exc), exc.exit_code or 1)
    if problems:
        return RolePlan(name, "refused", f"catalogue {ctx.catalog.path}, role {name!r}: " + "; ".join(problems), 1)
    reused = found.reusable
    if reused is not None:
        plan = RolePlan(name, "reuse", f"reuse {reused['ImageId']} ({reused.get('Name')}): same bake key")
    else:
        plan = RolePlan(name, "bake", _why_bake(ctx, found))
    if validate:
        return RolePlan(name, "ok", f"checks passed; a bake would {plan.action}: {plan.detail}")
    return plan


def plan_many(ws: Workspace, catalog: Catalog, roles: list[str], release: str, aws: Aws, *, jobs: int = 4,
              force: bool = False, validate: bool = False, settings: Settings | None = None,
              log: Callable[[str], None] | None = None) -> list[RolePlan]:
    """``plan_role`` for each role, ``jobs`` at a time, sharing the run's look-ups (as ``bake_many`` does)."""
    session = Session()
    cancel = threading.Event()

    def one(role_name: str) -> RolePlan:
        kwargs: dict[str, Any] = {"log_fn": log} if log is not None else {}
        ctx = Context(ws=ws, catalog=catalog, role=catalog.role(role_name), aws=aws,
                      clock=Clock(cancel, rounds=aws.rounds), settings=settings or Settings(), session=session,
                      force=force, **kwargs)
        return plan_role(ctx, release, validate=validate)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(roles))), thread_name_prefix="plan") as pool:
        return list(pool.map(one, roles))


def plan_lines(plans: list[RolePlan]) -> list[str]:
    """One line per role, refusals first (they are what a reader must act on)."""
    width = max((len(p.role) for p in plans), default=4)
    ordered = sorted(plans, key=lambda p: (p.action != "refused", p.role))
    lines = [f"{p.role:<{width}}  {p.action:<7}  {p.detail}" for p in ordered]
    counts = {a: sum(1 for p in plans if p.action == a) for a in ("bake", "reuse", "ok", "refused")}
    lines.append(", ".join(f"{n} {a}" for a, n in counts.items() if n) + f" (of {len(plans)} role(s))")
    return lines
