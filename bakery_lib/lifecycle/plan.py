"""Reap's decision: from the survey to a frozen plan (what stays and why; which bakes are torn down).

Per bake and region, a bake stays when a workspace state of it is open, when one of its instances is
alive and not expired (``bakery:expires-at`` + ``older_than``), when it has an available AMI and a pending
one (a copy in progress), when another image uses one of its snapshots, or, once it has no instance,
when its leftovers are younger than ``older_than``. Every resource of a bake that stays gets a "kept"
line with the reason. An abandoned bake gets a record built from its tags (``BakeState``, no state file),
which the act hands to the stages' teardown loop.

Chef: names ``bake-ROLE-BAKEID`` (the bakery's own naming) go with their bake's teardown, or on their
own when nothing of the bake is left in AWS; a name a live instance is tagged with
(``bakery:chef-node``), or of a bake that stays, is kept. Chef unreachable: the plan says why Chef is
skipped (exit 1). Instances of purpose ``launch``, available AMIs (except one that failed its boot test,
or whose bake was stopped during it) and anything without the bakery's tags are never touched.
Deciding makes no call but Chef's two listings.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..aws import tags_of
from ..errors import BakeryError
from ..state import BakeState
from .durations import parse_time, span
from .heartbeat import DEAD_AFTER, HEARTBEAT_TAG, INTERVAL, KEPT
from .prune import UNFINISHED_IMAGE_STATES
from .report import ReapLine, ReapRun
from .survey import BakeHere, Survey

if TYPE_CHECKING:
    from ..chef import ChefClient

# ``bake-ROLE-BAKEID`` with the bake id of ``state.new_bake_id`` (UTC stamp + 6 hex digits). Only names of
# exactly this shape are the bakery's: a hand-made node called ``bake-server-01`` is never deleted.
CHEF_NODE_RE = re.compile(r"^bake-(?P<role>[a-z][a-z0-9_-]{0,62})-(?P<bake>(?P<stamp>\d{14})-[0-9a-f]{6})$")


@dataclass(frozen=True)
class Teardown:
    """One abandoned bake: the record its stages' cleanups read, and why it goes."""

    record: BakeState
    reason: str


@dataclass(frozen=True)
class ReapPlan:
    """What reap decided, before it touches anything: the act only carries it out (or shows it)."""

    kept: tuple[ReapLine, ...]
    teardowns: tuple[Teardown, ...]
    chef_skipped: str | None = None  # why the Chef part does not run
    chef_failed: bool = False  # it was wanted but cannot run: exit 1
    # The bakery images the teardowns leave in place (their tags may point at a torn-down bake's S3
    # records, which then stay: bakery_lib.records).
    staying: tuple[dict[str, Any], ...] = ()


@dataclass
class _Draft:
    """The plan while it is being decided."""

    run: ReapRun
    kept: list[ReapLine] = field(default_factory=list)
    chef_skipped: str | None = None
    chef_failed: bool = False

    def keep(self, kind: str, resource: str, region: str, reason: str) -> None:
        self.kept.append(ReapLine(kind, resource, region, "kept", reason))


def decide(run: ReapRun, survey: Survey, chef: ChefClient | None, chef_error: str | None,
           aws_complete: bool) -> ReapPlan:
    """The plan: every kept resource with its reason, and the bakes to tear down (Chef listed here)."""
    draft = _Draft(run)
    abandoned, kept_why = _decide_aws(draft, survey)
    names = _chef_names(draft, chef, chef_error, aws_complete)
    records = [(_record(here), _why_abandoned(run, here)) for here in abandoned]
    if names is not None:
        records += _decide_chef(draft, survey, names, abandoned, records, kept_why, run.regions)
    torn = {i["ImageId"] for here in abandoned for i in here.unfinished}
    return ReapPlan(tuple(draft.kept), tuple(Teardown(r, why) for r, why in records),
                    draft.chef_skipped, draft.chef_failed, tuple(i for i in survey.images if i["ImageId"] not in torn))


def heartbeat_stopped(run: ReapRun, inst: dict[str, Any]) -> str | None:
    """Why the process baking with this instance is gone: its heartbeat tag is older than a few beats
    (and than ``--older-than``). None: beating, kept (``--keep-on-failure``), or no heartbeat (old bakery)."""
    raw = tags_of(inst).get(HEARTBEAT_TAG, "")
    beat = parse_time(raw) if raw and raw != KEPT else None
    if beat is None or run.now - beat <= max(DEAD_AFTER, run.older_than):
        return None
    return (f"its heartbeat stopped {span(run.now - beat)} ago ({HEARTBEAT_TAG}={raw}; a live bake refreshes it every "
            f"{INTERVAL:.0f} s): the process baking it is gone")


def _instance_keep_reason(run: ReapRun, inst: dict[str, Any]) -> str | None:
    tags = tags_of(inst)
    bake_id, expires_raw = tags.get("bakery:bake-id", ""), tags.get("bakery:expires-at", "")
    if run.bake_id is not None:
        return None  # --bake-id: the operator says this bake is abandoned
    if tags.get("bakery:purpose") == "bake" and heartbeat_stopped(run, inst) is not None:
        return None  # dead before its expiry
    expires = parse_time(expires_raw)
    if expires is None:
        return f"no valid bakery:expires-at tag ({expires_raw!r}); remove it by hand if it is abandoned"
    if run.now - expires <= run.older_than:
        left = f"expires {expires_raw}" if expires > run.now else f"expired {span(run.now - expires)} ago, within --older-than"
        return f"bake {bake_id or '?'}: {left}"
    return None


def _running(run: ReapRun, survey: Survey) -> dict[str, str]:
    """Bake id -> why it is still running: one of its instances (any region) is alive and not expired."""
    running: dict[str, str] = {}
    for here in survey.bakes.values():
        for inst in here.instances:
            why = _instance_keep_reason(run, inst)
            if why is not None:
                running.setdefault(here.bake_id, f"its {tags_of(inst).get('bakery:purpose')} instance "
                                                  f"{inst['InstanceId']} is alive ({why})")
    return running


def _keep_reason(run: ReapRun, here: BakeHere, running: dict[str, str], finished: set[str]) -> str | None:
    """Why nothing of this bake goes in this region (None: abandoned, tear it down)."""
    bake_id = here.bake_id
    if bake_id in run.open_bakes and _dead(run, here) is None:
        return f"bake {bake_id} of role {run.open_bakes[bake_id].role} is open in the workspace"
    if bake_id in running:
        return f"bake {bake_id} is still running: {running[bake_id]}"
    pending = [i for i in here.unfinished if i.get("State") in UNFINISHED_IMAGE_STATES]
    if pending and bake_id in finished:
        return f"bake {bake_id} has an available AMI: its pending image {pending[0]['ImageId']} is a copy in progress"
    if here.held:
        return f"bake {bake_id}: {'; '.join(here.held)}"
    creating = [s["SnapshotId"] for s in here.orphans if s.get("State") == "pending"]
    if creating:
        return f"its snapshot {creating[0]} is still being created"
    if here.instances:
        return None  # its instances expired: that is the bake's deadline, whatever the age of the rest
    created = [parse_time(i.get("CreationDate")) for i in here.unfinished]
    created += [parse_time(s.get("StartTime")) for s in here.orphans]
    return run.young(max((c for c in created if c is not None), default=None))


def _report_kept(draft: _Draft, here: BakeHere, why: str) -> None:
    for inst in here.instances:
        draft.keep("instance", inst["InstanceId"], here.region, _instance_keep_reason(draft.run, inst) or why)
    for image in here.unfinished:
        draft.keep("image", image["ImageId"], here.region, f"{image.get('State')}: {why}")
    for snap in here.orphans:
        draft.keep("snapshot", snap["SnapshotId"], here.region, f"image gone but {why}")


def _decide_aws(draft: _Draft, survey: Survey) -> tuple[list[BakeHere], dict[str, str]]:
    """The bakes (per region) to tear down, and why the others stay (bake id -> reason)."""
    run = draft.run
    running = _running(run, survey)
    abandoned: list[BakeHere] = []
    kept_why: dict[str, str] = {}
    for key in sorted(survey.bakes):
        here = survey.bakes[key]
        if not here.candidate or not run.mine(here.bake_id):
            continue
        why = _keep_reason(run, here, running, survey.finished)
        if why is None:
            abandoned.append(here)
        else:
            _report_kept(draft, here, why)
            kept_why.setdefault(here.bake_id, why)
    for line in survey.unnamed:
        if run.bake_id is None:
            draft.kept.append(line)
    return abandoned, kept_why


def _dead(run: ReapRun, here: BakeHere) -> str | None:
    inst = here.bake_instance()
    return heartbeat_stopped(run, inst) if inst is not None and run.bake_id is None else None


def _why_abandoned(run: ReapRun, here: BakeHere) -> str:
    named = "named by --bake-id; " if run.bake_id is not None else ""
    inst = here.bake_instance() or (here.instances[0] if here.instances else None)
    dead = _dead(run, here)
    if inst is not None and dead is not None:
        return f"bake {here.bake_id}: {dead} (it would expire {tags_of(inst).get('bakery:expires-at', '?')}), " \
               f"{inst['State']['Name']}"
    if inst is not None:
        expires_raw = tags_of(inst).get("bakery:expires-at", "")
        expires = parse_time(expires_raw)
        age = (f"expired {span(run.now - expires)} ago ({expires_raw})" if expires is not None and not named
               else "named by --bake-id")
        return f"bake {here.bake_id} {age}, {inst['State']['Name']}"
    if here.unfinished:
        image = here.unfinished[0]
        created = parse_time(image.get("CreationDate"))
        when = f"{span(run.now - created)} ago" if created is not None else "at an unknown time"
        return f"{named}{image.get('State')} image of bake {here.bake_id} ({image.get('Name')}), created {when}"
    return f"{named}of bake {here.bake_id}, its image is gone"


def _record(here: BakeHere, chef_node: str | None = None) -> BakeState:
    """The record of a bake that lives in no workspace, built from its tags: what its stages' cleanups read."""
    tags = here.tags()
    inst = here.bake_instance()
    image = here.unfinished[0] if here.unfinished else None
    windows = any(r.get("Platform") == "windows" for r in (*here.instances, *here.unfinished))
    return BakeState(role=tags.get("bakery:role") or "?", bake_id=here.bake_id, release=tags.get("bakery:release", ""),
                     region=here.region, platform="windows" if windows else "linux", chef_node=chef_node,
                     instance_id=inst["InstanceId"] if inst else None,
                     image_id=image["ImageId"] if image else None, image_state=image.get("State") if image else None,
                     snapshot_ids=sorted(s["SnapshotId"] for s in here.orphans),
                     amis={here.region: here.available[0]} if here.available else {})


def _chef_names(draft: _Draft, chef: ChefClient | None, chef_error: str | None,
                aws_complete: bool) -> dict[str, set[str]] | None:
    """Bakery-looking Chef names -> kinds present (chef-client, chef-node); None when Chef is skipped."""
    report = draft
    if chef is None:
        report.chef_skipped = chef_error or "not asked to (--no-chef)"
        report.chef_failed = chef_error is not None
        return None
    if not aws_complete:
        report.chef_skipped = ("the live bake instances could not be listed in every region, so no Chef node "
                               "can be proven orphaned")
        report.chef_failed = True
        return None
    try:
        nodes, clients = set(chef.list_nodes()), set(chef.list_clients())
    except BakeryError as exc:
        report.chef_skipped, report.chef_failed = str(exc), True
        return None
    return {n: {k for k, present in (("chef-client", n in clients), ("chef-node", n in nodes)) if present}
            for n in sorted(nodes | clients) if n.startswith("bake-")}


def _chef_keep_reason(run: ReapRun, name: str, live: set[str], kept_why: dict[str, str],
                      ending: Container[str]) -> str | None:
    m = CHEF_NODE_RE.match(name)
    if m is None:
        return "not a bakery bake name (bake-ROLE-YYYYMMDDHHMMSS-xxxxxx)"
    if name in live:
        return "a live instance is tagged with it"
    if m.group("bake") in ending:
        return None  # its bake is torn down in this run: the identity goes with it, whatever its age
    if m.group("bake") in kept_why:
        return f"kept with the rest of its bake: {kept_why[m.group('bake')]}"
    try:
        made = datetime.strptime(m.group("stamp"), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        made = None
    young = run.young(made)
    return young.replace("created", "bake started") if young else None


def _decide_chef(draft: _Draft, survey: Survey, names: dict[str, set[str]], abandoned: list[BakeHere],
                 records: list[tuple[BakeState, str]], kept_why: dict[str, str],
                 regions: Sequence[str]) -> list[tuple[BakeState, str]]:
    """Give each abandoned bake its Chef identity; the identities of bakes with nothing left in AWS
    become records of their own. Returns those new records."""
    run = draft.run
    ending, live, other_stages = _chef_in_use(run, survey, abandoned)
    by_bake = _identities_of_instances(records, ending, names, live)
    taken = {r.chef_node for r in by_bake.values()}
    chef_only: list[tuple[BakeState, str]] = []
    for name, kinds in names.items():
        m = CHEF_NODE_RE.match(name)
        if name in taken or name in other_stages or (m is not None and not run.mine(m.group("bake"))):
            continue
        why = _chef_keep_reason(run, name, live, kept_why, by_bake)
        if why is not None:
            for kind in sorted(kinds):
                draft.keep(kind, name, "", why)
            continue
        bake = m.group("bake") if m else ""
        if bake in by_bake and by_bake[bake].chef_node is None:
            by_bake[bake].chef_node = name
            continue
        chef_only.append((_identity_record(survey, bake, name, m, regions[0]),
                          "no live instance is tagged bakery:chef-node with it"))
    return chef_only


def _chef_in_use(run: ReapRun, survey: Survey,
                 abandoned: list[BakeHere]) -> tuple[dict[str, dict[str, str]], set[str], set[str]]:
    """The tags of the instances this run ends (by id); the node names still in use (a live instance
    this run keeps is tagged with it, or a bake open in the workspace has it); and the names of the
    ended bakes' other instances (a boot test's), which go with that stage's cleanup."""
    ending = {i["InstanceId"]: tags_of(i) for here in abandoned for i in here.instances}
    live = {node for iid, node in survey.chef_tagged if iid not in ending and node}
    live |= {s.chef_node for s in run.open_bakes.values() if s.chef_node}
    other_stages = {t.get("bakery:chef-node", "") for t in ending.values() if t.get("bakery:purpose") != "bake"}
    return ending, live, other_stages


def _identities_of_instances(records: list[tuple[BakeState, str]], ending: dict[str, dict[str, str]],
                             names: Container[str], live: Container[str]) -> dict[str, BakeState]:
    """Bake id -> its first record, which takes the Chef identity its bake instance is tagged with."""
    by_bake = {r.bake_id: r for r, _ in reversed(records)}
    for record, _ in records:
        tagged = ending.get(record.instance_id or "", {}).get("bakery:chef-node", "")
        if tagged in names and tagged not in live and by_bake[record.bake_id].chef_node is None:
            by_bake[record.bake_id].chef_node = tagged
    return by_bake


def _identity_record(survey: Survey, bake: str, name: str, m: re.Match[str] | None, region: str) -> BakeState:
    """Nothing of the bake is left in AWS: a record of its Chef identity alone (in a region where the
    bake has at most good AMIs, which its image cleanup keeps)."""
    here = survey.bakes.get((bake, region)) or BakeHere(bake, region)
    state = _record(BakeHere(bake, region, available=here.available), name)
    state.role = m.group("role") if m else "?"
    return state

