"""Decide what a sync must do: create, update, delete or leave alone each item. Nothing is changed here.

``read_remote`` makes only reads through the ``JenkinsManager``: one listing of the target folder
(walking up only when that folder is missing) and the config.xml of every existing item that
carries the bakery's marker. ``decide`` is pure: from the rendered items and what was read it
returns a ``Plan`` of frozen ``Action``s. The executor carries a plan out; ``--dry-run`` prints it.

Rules (the contract with operators):
- an item that does not exist is created, with the managed marker in its description;
- a managed item is updated only when its config differs from the rendered one once Jenkins' noise
  is normalized away (whitespace, attribute order, plugin versions, run-time actions);
- item names are compared as Jenkins compares them, ignoring case;
- a role job is not created or updated while an ``upstream_jobs`` entry does not exist on Jenkins
  (a typo there would give a job that is never triggered);
- an existing item without the marker is never touched (an error, unless ``adopt``), so a job
  someone made by hand under the same name is not overwritten behind their back;
- only with ``delete_stale``, jobs in the target folder that carry our marker and our job prefix
  and whose role left the catalogue (or a release job that was renamed) are deleted. A job
  without the marker is never deleted.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .carry import carried_over, item_class
from .manager import JenkinsError, JenkinsManager
from .normalize import Marker, config_diff, parse_marker, same_config
from .render import Item

FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"
OPS = ("create", "update", "delete", "unchanged", "error")


@dataclass(frozen=True)
class Remote:
    """An item that exists on Jenkins, as the folder listing shows it."""

    name: str
    jenkins_class: str
    description: str | None
    is_folder: bool

    @property
    def marker(self) -> Marker | None:
        return parse_marker(self.description)


class Names(dict[str, Remote]):
    """Items of one folder by name, looked up as Jenkins does: case-insensitively (Jenkins keeps items
    in a map ordered by CaseInsensitiveComparator, so ``AMI-bake-web`` IS ``ami-bake-web``)."""

    def find(self, name: str) -> Remote | None:
        found = self.get(name)
        if found is not None:
            return found
        lowered = name.lower()
        return next((r for key, r in self.items() if key.lower() == lowered), None)


@dataclass(frozen=True)
class RemoteState:
    """Everything the planner knows about Jenkins."""

    target: str  # the folder the jobs belong in ("" = top level)
    target_exists: bool
    target_remote: Remote | None = None  # the target folder itself, when it exists and is not the top level
    existing_folders: frozenset[str] = frozenset()  # folder paths on the way to the target that exist
    blocker: tuple[str, str] | None = None  # (path, class) of a non-folder where a folder must be
    jobs: Names = field(default_factory=lambda: Names())  # items directly in the target folder
    views: Names = field(default_factory=lambda: Names())
    configs: dict[str, str] = field(default_factory=dict)  # Item.label -> current config.xml
    read_errors: dict[str, str] = field(default_factory=dict)  # Item.label -> why it could not be read
    missing_upstreams: tuple[str, ...] = ()  # catalogue upstream_jobs that do not exist on Jenkins


@dataclass(frozen=True)
class Action:
    """One decision. ``current`` is the config on Jenkins (updates), ``reason`` says why."""

    op: str  # create | update | delete | unchanged | error
    kind: str  # folder | job | view
    parent: str
    name: str
    desired: str | None = None
    current: str | None = None
    reason: str = ""
    ignore: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name

    @property
    def label(self) -> str:
        return f"view {self.full_name}" if self.kind == "view" else self.full_name

    def diff(self) -> str:
        if self.op != "update" or self.desired is None or self.current is None:
            return ""
        return config_diff(self.current, self.desired, self.full_name, self.ignore)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    stale_kept: tuple[str, ...] = ()  # managed jobs whose role left, kept for want of --delete-stale

    def count(self, op: str) -> int:
        return sum(1 for a in self.actions if a.op == op)

    @property
    def writes(self) -> int:
        return sum(1 for a in self.actions if a.op in ("create", "update", "delete"))


# ---------------------------------------------------------------------------------------------
# Reading


def read_remote(manager: JenkinsManager, items: Sequence[Item], *, target: str, adopt: bool = False,
                workers: int = 4, upstream_jobs: Sequence[str] = ()) -> RemoteState:
    """What Jenkins has, read with as few requests as the decision needs."""
    listing = manager.list_folder(target)
    if listing is None and not target:
        raise JenkinsError(
            f"no Jenkins API at {manager.shown_url} (api/json gave HTTP 404): --jenkins-url or JENKINS_URL must "
            "be the Jenkins root URL, with its context path if it has one (e.g. https://ci.example.com/jenkins/)",
            404,
        )
    blocker, existing, target_remote, listing = _locate_target(manager, target, listing)
    jobs = Names({j["name"]: _remote(j) for j in (listing or {}).get("jobs", []) if "name" in j})
    views = Names({v["name"]: _remote(v) for v in (listing or {}).get("views", []) if "name" in v})
    to_read = _items_to_read(items, target, listing is not None, target_remote, jobs, views, adopt)
    configs, errors = _read_configs(manager, to_read, workers)
    missing = _missing_upstreams(manager, upstream_jobs, target, jobs if listing is not None else None)
    return RemoteState(
        target=target,
        target_exists=listing is not None,
        target_remote=target_remote,
        existing_folders=frozenset(existing),
        blocker=blocker,
        jobs=jobs,
        views=views,
        configs=configs,
        read_errors=errors,
        missing_upstreams=missing,
    )


Listing = dict[str, Any] | None


def _locate_target(manager: JenkinsManager, target: str, listing: Listing
                   ) -> tuple[tuple[str, str] | None, set[str], Remote | None, Listing]:
    """(blocker, existing folders on the way, the target folder, its listing or None when it is not a folder)."""
    if not target:
        return None, set(), None, listing
    if listing is not None and "jobs" not in listing:
        return (target, str(listing.get("_class", "item"))), set(), None, None
    if listing is None:
        blocker, existing = _find_missing(manager, target)
        return blocker, existing, None, None
    parts = target.split("/")
    existing = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    remote = Remote(parts[-1], str(listing.get("_class", FOLDER_CLASS)), listing.get("description"), True)
    return None, existing, remote, listing


def _items_to_read(items: Sequence[Item], target: str, listed: bool, target_remote: Remote | None,
                   jobs: Names, views: Names, adopt: bool) -> list[Item]:
    """The config of every managed item that exists (and of unmanaged ones when adopting)."""
    to_read: list[Item] = []
    for item in items:
        if item.kind == "folder":
            if item.full_name == target and target_remote is not None and target_remote.marker is not None:
                to_read.append(item)
            continue
        if item.parent != target or not listed:
            continue
        remote = (views if item.kind == "view" else jobs).find(item.name)
        if remote is not None and not remote.is_folder and (remote.marker is not None or adopt):
            to_read.append(item)
    return to_read


def _read_configs(manager: JenkinsManager, to_read: list[Item], workers: int) -> tuple[dict[str, str], dict[str, str]]:
    configs: dict[str, str] = {}
    errors: dict[str, str] = {}

    def fetch(item: Item) -> str:
        if item.kind == "view":
            return manager.get_view_config(item.parent, item.name)
        return manager.get_config(item.full_name)

    if not to_read:
        return configs, errors
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="read") as pool:
        futures = [pool.submit(fetch, item) for item in to_read]
        for future, item in zip(futures, to_read, strict=True):
            try:
                configs[item.label] = future.result()
            except JenkinsError as exc:
                errors[item.label] = f"could not read its current config: {exc}"
    return configs, errors


class ItemLookup:
    """Items as core's ``Jenkins.getItem(pathName, context)`` finds them, which is how ReverseBuildTrigger
    (``Items.fromNameList``) resolves ``upstream_jobs`` from the bake job's folder:

    - a leading ``/``: ``getItemByFullName``, the name from the top level;
    - else token by token (empty tokens skipped) from the folder: ``.`` stays, ``..`` goes to the parent
      and gives up above the top level, a name is looked up (case-insensitively) in the folder reached
      so far and a missing one gives up; a name below a job finds nothing;
    - given up, or ended on the top level itself: the classic interpretation, the whole name as a full
      name from the top level (so ``deploy-release`` seen from folder ``amis`` is the top-level job when
      ``amis`` has none; ``../..`` above the top level finds nothing, ``..`` being no item name).

    One folder listing per folder walked, each read once.
    """

    def __init__(self, manager: JenkinsManager, known: dict[str, Names | None]):
        self.manager = manager
        self.listings = dict(known)

    def children(self, folder: str) -> Names | None:
        if folder not in self.listings:
            listing = self.manager.list_folder(folder)
            self.listings[folder] = None if listing is None or "jobs" not in listing else Names(
                {j["name"]: _remote(j) for j in listing.get("jobs", []) if "name" in j})
        return self.listings[folder]

    def find(self, name: str, folder: str) -> str | None:
        """The full name of the item ``name`` names from ``folder``, or None."""
        if name.startswith("/"):
            return self.by_full_name(name)
        path: list[str] | None = [p for p in folder.split("/") if p]
        for token in [t for t in name.split("/") if t]:
            path = self._step(path, token)
            if path is None:
                break
        if path is not None and path != [] and path[-1] != "":
            return "/".join(path)
        if path == [""]:  # below a job
            return None
        return self.by_full_name(name)

    def _step(self, path: list[str] | None, token: str) -> list[str] | None:
        """One token of the walk: the path reached, None when Jenkins gives up, [""] below a job."""
        assert path is not None
        if token == ".":
            return path
        if token == "..":
            return path[:-1] if path else None
        children = self.children("/".join(path))
        if children is None:
            return [""]  # the walk reached a job: Jenkins.getItem returns null at once
        found = children.find(token)
        return None if found is None else [*path, found.name]

    def by_full_name(self, name: str) -> str | None:
        """``Jenkins.getItemByFullName``: every token an item name, from the top level."""
        path: list[str] = []
        for token in [t for t in name.split("/") if t]:
            children = self.children("/".join(path))
            found = children.find(token) if children is not None else None
            if found is None:
                return None
            path.append(found.name)
        return "/".join(path) or None


def _missing_upstreams(manager: JenkinsManager, upstream_jobs: Sequence[str], target: str,
                       target_jobs: Names | None) -> tuple[str, ...]:
    """The catalogue's upstream jobs that Jenkins would not find (a typo there gives a bake job that is
    never triggered, with no error anywhere)."""
    # A target folder that does not exist yet is created empty before the bake jobs in it.
    lookup = ItemLookup(manager, {target: target_jobs if target_jobs is not None else Names()})
    return tuple(name.strip() for name in upstream_jobs if lookup.find(name.strip(), target) is None)


def _remote(obj: dict[str, Any]) -> Remote:
    return Remote(str(obj["name"]), str(obj.get("_class", "")), obj.get("description"), "jobs" in obj)


def _find_missing(manager: JenkinsManager, target: str) -> tuple[tuple[str, str] | None, set[str]]:
    """The target folder is missing: which of its ancestors exist, and is a non-folder in the way?"""
    parts = target.split("/")
    for depth in range(len(parts) - 1, -1, -1):
        path = "/".join(parts[:depth])
        listing = manager.list_folder(path)
        if listing is None:
            continue
        if "jobs" not in listing:  # an ancestor is a job, not a folder
            return (path, str(listing.get("_class", "item"))), {"/".join(parts[:i]) for i in range(1, depth)}
        existing = {"/".join(parts[:i]) for i in range(1, depth + 1)}
        child = next((j for j in listing.get("jobs", []) if str(j.get("name", "")).lower() == parts[depth].lower()), None)
        if child is not None and "jobs" not in child:
            return ("/".join(parts[: depth + 1]), str(child.get("_class", "item"))), existing
        return None, existing
    raise JenkinsError(f"Jenkins at {manager.shown_url} does not list its top level (api/json gave 404)")


# ---------------------------------------------------------------------------------------------
# Deciding


def decide(items: Sequence[Item], state: RemoteState, *, prefix: str, roles: Sequence[str],
           release_job: str | None = None, delete_stale: bool = False, adopt: bool = False) -> Plan:
    actions = [_decide_item(item, state, adopt) for item in items]
    stale_actions, stale_kept = _stale(items, state, prefix, roles, release_job, delete_stale)
    return Plan(tuple(actions + stale_actions), tuple(stale_kept))


def _action(op: str, item: Item, reason: str, current: str | None = None) -> Action:
    return Action(op, item.kind, item.parent, item.name, desired=item.xml, current=current, reason=reason,
                  ignore=item.ignore)


def _blocked_reason(state: RemoteState, path: str) -> str | None:
    if state.blocker is None:
        return None
    where, cls = state.blocker
    if path == where or path.startswith(where + "/"):
        return f"cannot be created: {where!r} exists on Jenkins but is not a folder (it is a {cls})"
    return None


def _decide_folder(item: Item, state: RemoteState) -> Action:
    reason = _blocked_reason(state, item.full_name)
    if reason:
        return _action("error", item, reason)
    if item.full_name not in state.existing_folders:
        return _action("create", item, "folder does not exist")
    if item.full_name == state.target and state.target_remote is not None and state.target_remote.marker:
        return _compare(item, state)
    return _action("unchanged", item, "folder exists (left as it is)")


def _decide_item(item: Item, state: RemoteState, adopt: bool) -> Action:
    if item.kind == "folder":
        return _decide_folder(item, state)
    reason = _blocked_reason(state, item.parent) if item.parent else None
    if reason:
        return _action("error", item, reason)
    if item.role is not None and state.missing_upstreams:
        names = ", ".join(repr(n) for n in state.missing_upstreams)
        where = f"folder {state.target!r}" if state.target else "the top level"
        return _action("error", item, (
            f"upstream job(s) {names} (catalogue jenkins.upstream_jobs) do not exist on Jenkins (Jenkins.getItem "
            f"looks a name up relative to {where}, then as a full name from the top level; /NAME is always "
            "from the top level): the bake would never be triggered"))
    if not state.target_exists:
        return _action("create", item, f"folder {item.parent!r} is created first")
    remote = (state.views if item.kind == "view" else state.jobs).find(item.name)
    if remote is None:
        return _action("create", item, "does not exist")
    what = "view" if item.kind == "view" else "job"
    if remote.name != item.name:
        return _action("error", item, (
            f"Jenkins has a {what} {remote.name!r}, which is the same name to Jenkins (item names ignore case): "
            "rename or delete it"))
    if remote.is_folder:
        return _action("error", item, "a folder of that name exists on Jenkins")
    if remote.marker is None and not adopt:
        return _action("error", item, (
            f"a {what} of that name exists on Jenkins but is not managed by the bakery (no marker in "
            "its description): rename or delete it, or give --adopt to take it over"))
    return _compare(item, state)


def _stale(items: Sequence[Item], state: RemoteState, prefix: str, roles: Sequence[str], release_job: str | None,
           delete_stale: bool) -> tuple[list[Action], list[str]]:
    """Managed jobs of our prefix whose role (or release job) left the catalogue."""
    if not state.target_exists:
        return [], []
    desired_jobs = {i.name.lower() for i in items if i.kind == "job" and i.parent == state.target}
    actions: list[Action] = []
    kept: list[str] = []
    for name, remote in sorted(state.jobs.items()):
        if name.lower() in desired_jobs or remote.is_folder:
            continue
        why = _stale_reason(name, remote, prefix, set(roles), release_job)
        if why is None:
            continue
        if delete_stale:
            actions.append(Action("delete", "job", state.target, name, reason=why))
        else:
            kept.append(f"{state.target}/{name}" if state.target else name)
    return actions, kept


def _stale_reason(name: str, remote: Remote, prefix: str, roles: set[str], release_job: str | None) -> str | None:
    marker = remote.marker
    if marker is None or marker.prefix != prefix:
        return None  # not ours (or another catalogue's): never deleted
    if marker.kind == "role" and marker.role and marker.role not in roles and name == prefix + marker.role:
        return f"managed job of role {marker.role!r}, which left the catalogue"
    if marker.kind == "release" and name != release_job:
        return "managed release job no longer in the catalogue"
    return None


def _compare(item: Item, state: RemoteState) -> Action:
    if item.label in state.read_errors:
        return _action("error", item, state.read_errors[item.label])
    current = state.configs.get(item.label)
    if current is None:  # listed but not read: cannot happen unless the listing changed under us
        return _action("error", item, "its config was not read")
    kind_now = item_class(current)
    if kind_now is not None and kind_now != item_class(item.xml):
        return _action("error", item, (
            f"it is a {kind_now} on Jenkins, and Jenkins cannot change an item's type by a config update: "
            "rename or delete it"), current)
    # What people configure that the bakery does not manage is carried over (carry.py): the
    # comparison and the update are of the managed parts only.
    wanted = carried_over(item.kind, item.xml, current)
    if same_config(wanted, current, item.ignore):
        return _action("unchanged", item, "same config", current)
    return replace(_action("update", item, "config differs from the catalogue's", current), desired=wanted)
