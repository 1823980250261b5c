"""Decide what a sync must do: create, update, delete or leave alone each item. Nothing is changed here.

``read_remote`` makes only reads through the ``JenkinsManager``: one listing of the target folder
(walking up only when that folder is missing) and the config.xml of every existing item that
carries the bakery's marker. ``decide`` is pure: from the rendered items and what was read it
returns a ``Plan`` of frozen ``Action``s. The executor carries a plan out; ``--dry-run`` prints it.

Rules (the contract with operators):
- an item that does not exist is created, with the managed marker in its description;
- a managed item is updated only when its config differs from the rendered one once Jenkins' noise
  is normalized away (whitespace, attribute order, plugin versions, run-time actions);
- an existing item without the marker is never touched (an error, unless ``adopt``), so a job
  someone made by hand under the same name is not overwritten behind their back;
- only with ``delete_stale``, jobs in the target folder that carry our marker and our job prefix
  and whose role left the catalogue (or a release job that was renamed) are deleted. A job
  without the marker is never deleted.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class RemoteState:
    """Everything the planner knows about Jenkins."""

    target: str  # the folder the jobs belong in ("" = top level)
    target_exists: bool
    target_remote: Remote | None = None  # the target folder itself, when it exists and is not the top level
    existing_folders: frozenset[str] = frozenset()  # folder paths on the way to the target that exist
    blocker: tuple[str, str] | None = None  # (path, class) of a non-folder where a folder must be
    jobs: dict[str, Remote] = field(default_factory=dict)  # items directly in the target folder
    views: dict[str, Remote] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)  # Item.label -> current config.xml
    read_errors: dict[str, str] = field(default_factory=dict)  # Item.label -> why it could not be read


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
                workers: int = 4) -> RemoteState:
    """What Jenkins has, read with as few requests as the decision needs."""
    listing = manager.list_folder(target)
    if listing is None and not target:
        raise JenkinsError(
            f"no Jenkins API at {manager.shown_url} (api/json gave HTTP 404): --jenkins-url or JENKINS_URL must "
            "be the Jenkins root URL, with its context path if it has one (e.g. https://ci.example.com/jenkins/)",
            404,
        )
    existing: set[str] = set()
    blocker: tuple[str, str] | None = None
    target_remote: Remote | None = None
    if listing is not None and target and "jobs" not in listing:
        blocker = (target, str(listing.get("_class", "item")))
        listing = None
    elif listing is None and target:
        blocker, existing = _find_missing(manager, target)
    elif listing is not None and target:
        parts = target.split("/")
        existing = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        target_remote = Remote(parts[-1], str(listing.get("_class", FOLDER_CLASS)), listing.get("description"), True)

    jobs = {j["name"]: _remote(j) for j in (listing or {}).get("jobs", []) if "name" in j}
    views = {v["name"]: _remote(v) for v in (listing or {}).get("views", []) if "name" in v}

    # Fetch the config of every managed item that exists (and of unmanaged ones when adopting).
    to_read: list[Item] = []
    for item in items:
        if item.kind == "folder":
            if item.full_name == target and target_remote is not None and target_remote.marker is not None:
                to_read.append(item)
            continue
        if item.parent != target or listing is None:
            continue
        remote = (views if item.kind == "view" else jobs).get(item.name)
        if remote is not None and not remote.is_folder and (remote.marker is not None or adopt):
            to_read.append(item)

    configs: dict[str, str] = {}
    errors: dict[str, str] = {}

    def fetch(item: Item) -> tuple[Item, str]:
        if item.kind == "view":
            return item, manager.get_view_config(item.parent, item.name)
        return item, manager.get_config(item.full_name)

    if to_read:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="read") as pool:
            futures = [pool.submit(fetch, item) for item in to_read]
            for future, item in zip(futures, to_read, strict=True):
                try:
                    configs[item.label] = future.result()[1]
                except JenkinsError as exc:
                    errors[item.label] = f"could not read its current config: {exc}"
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
    )


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
        child = next((j for j in listing.get("jobs", []) if j.get("name") == parts[depth]), None)
        if child is not None and "jobs" not in child:
            return ("/".join(parts[: depth + 1]), str(child.get("_class", "item"))), existing
        return None, existing
    raise JenkinsError(f"Jenkins at {manager.shown_url} does not list its top level (api/json gave 404)")


# ---------------------------------------------------------------------------------------------
# Deciding


def decide(items: Sequence[Item], state: RemoteState, *, prefix: str, roles: Sequence[str],
           release_job: str | None = None, delete_stale: bool = False, adopt: bool = False) -> Plan:
    actions: list[Action] = []

    def blocked_reason(path: str) -> str | None:
        if state.blocker is None:
            return None
        where, cls = state.blocker
        if path == where or path.startswith(where + "/"):
            return f"cannot be created: {where!r} exists on Jenkins but is not a folder (it is a {cls})"
        return None

    for item in items:
        base = {"kind": item.kind, "parent": item.parent, "name": item.name, "desired": item.xml, "ignore": item.ignore}
        if item.kind == "folder":
            reason = blocked_reason(item.full_name)
            if reason:
                actions.append(Action("error", reason=reason, **base))
            elif item.full_name not in state.existing_folders:
                actions.append(Action("create", reason="folder does not exist", **base))
            elif item.full_name == state.target and state.target_remote is not None and state.target_remote.marker:
                actions.append(_compare(item, state, base))
            else:
                actions.append(Action("unchanged", reason="folder exists (left as it is)", **base))
            continue

        reason = blocked_reason(item.parent) if item.parent else None
        if reason:
            actions.append(Action("error", reason=reason, **base))
            continue
        if not state.target_exists:
            actions.append(Action("create", reason=f"folder {item.parent!r} is created first", **base))
            continue
        remote = (state.views if item.kind == "view" else state.jobs).get(item.name)
        if remote is None:
            actions.append(Action("create", reason="does not exist", **base))
        elif remote.is_folder:
            actions.append(Action("error", reason="a folder of that name exists on Jenkins", **base))
        elif remote.marker is None and not adopt:
            what = "view" if item.kind == "view" else "job"
            actions.append(Action(
                "error",
                reason=f"a {what} of that name exists on Jenkins but is not managed by the bakery (no marker in "
                "its description): rename or delete it, or give --adopt to take it over",
                **base,
            ))
        else:
            actions.append(_compare(item, state, base))

    stale_kept: list[str] = []
    if state.target_exists:
        desired_jobs = {i.name for i in items if i.kind == "job" and i.parent == state.target}
        role_set = set(roles)
        for name, remote in sorted(state.jobs.items()):
            if name in desired_jobs or remote.is_folder:
                continue
            marker = remote.marker
            if marker is None or marker.prefix != prefix:
                continue  # not ours (or another catalogue's): never deleted
            if marker.kind == "role" and marker.role and marker.role not in role_set and name == prefix + marker.role:
                why = f"managed job of role {marker.role!r}, which left the catalogue"
            elif marker.kind == "release" and name != release_job:
                why = "managed release job no longer in the catalogue"
            else:
                continue
            if delete_stale:
                actions.append(Action("delete", "job", state.target, name, reason=why))
            else:
                stale_kept.append(f"{state.target}/{name}" if state.target else name)
    return Plan(tuple(actions), tuple(stale_kept))


def _compare(item: Item, state: RemoteState, base: dict[str, Any]) -> Action:
    if item.label in state.read_errors:
        return Action("error", reason=state.read_errors[item.label], **base)
    current = state.configs.get(item.label)
    if current is None:  # listed but not read: cannot happen unless the listing changed under us
        return Action("error", reason="its config was not read", **base)
    if same_config(item.xml, current, item.ignore):
        return Action("unchanged", reason="same config", current=current, **base)
    return Action("update", reason="config differs from the catalogue's", current=current, **base)
