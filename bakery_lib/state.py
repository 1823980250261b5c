"""One typed bake record per role: ``WORKSPACE/.bakery/ROLE.json``.

Written atomically (``fsutil.atomic_write_json``: temp file, fsync, rename, fsync of the directory)
after every change, so a kill at any moment leaves either the old or the new record, never a torn one.
Every stage records what it created the moment the create call returns, before any wait, so that
``bakery cleanup`` in the same workspace can always remove it.

A per-role lock file (``.bakery/ROLE.lock``, flock) keeps two bakery processes from working on the
same role in the same workspace at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BakeryError, UsageError, WorkspaceWriteError
from .fsutil import atomic_write_json

SCHEMA_VERSION = 1
# Waiting for a role's lock: how often to try again, and to say so.
LOCK_POLL = 0.2
LOCK_NOTICE_EVERY = 30.0


@dataclass
class StageRecord:
    status: str = "pending"  # pending | running | succeeded | failed | skipped
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    message: str = ""
    attempts: int = 0


@dataclass
class BakeState:
    role: str
    bake_id: str
    release: str
    region: str
    platform: str
    schema_version: int = SCHEMA_VERSION
    created_at: float = field(default_factory=time.time)
    base_ami: str | None = None
    base_root_device: str | None = None  # kept from preflight: launch needs no second DescribeImages
    bake_key: str | None = None
    # preflight's listing of the role's AMIs in the build region, trimmed to what the SBOM's package diff
    # and publish's deprecation of superseded AMIs read (stages.preflight.recorded_role_amis); None: not
    # listed (a record opened otherwise), and those two list the AMIs themselves.
    role_amis: list[dict[str, Any]] | None = None
    chef_node: str | None = None
    security_group_id: str | None = None
    security_group_created: bool = False
    iam_role_name: str | None = None
    instance_profile_name: str | None = None
    instance_id: str | None = None
    instance_type: str | None = None  # the placement launch used (instance_types x subnet_ids fallback)
    subnet_id: str | None = None
    instance_terminated: bool = False
    image_id: str | None = None
    image_name: str | None = None
    image_state: str | None = None
    snapshot_ids: list[str] = field(default_factory=list)
    amis: dict[str, str] = field(default_factory=dict)  # region -> available AMI
    pending_copies: dict[str, str] = field(default_factory=dict)  # region -> copy not yet available
    fast_launch: dict[str, str] = field(default_factory=dict)  # region -> Windows Fast Launch state publish saw
    fast_snapshot_restore: dict[str, list[str]] = field(default_factory=dict)  # region -> zones publish enabled
    reused: bool = False
    chef_cleaned: bool = False
    # boot-test: the instance launched from the new AMI (recorded the moment RunInstances returns), the
    # Chef identity its first boot registers, and the result (passed | failed | disabled).
    test_instance_id: str | None = None
    test_instance_terminated: bool = False
    test_chef_node: str | None = None
    test_chef_cleaned: bool = False
    boot_test: str | None = None
    sbom_uri: str | None = None  # S3 URI of the bake's CycloneDX SBOM (bootstrap); tag bakery:sbom on the AMI
    closed: bool = False  # the bake ended (published, or cleaned up after a failure)
    outcome: str | None = None  # succeeded | failed | reused | cleaned
    stages: dict[str, StageRecord] = field(default_factory=dict)

    def stage(self, name: str) -> StageRecord:
        return self.stages.setdefault(name, StageRecord())

    def succeeded(self, name: str) -> bool:
        rec = self.stages.get(name)
        return bool(rec and rec.status in ("succeeded", "skipped"))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> BakeState:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UsageError(
                f"{path}: bake state schema version {version!r} is not {SCHEMA_VERSION}; "
                "it was written by another bakery version (finish or clean that bake with it)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["stages"] = {k: StageRecord(**v) for k, v in (data.get("stages") or {}).items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise UsageError(f"{path}: bake state is incomplete: {exc}") from None


# What ``new_bake_id`` makes: a UTC stamp and six hex digits.
BAKE_ID_RE = re.compile(r"^\d{14}-[0-9a-f]{6}$")


def new_bake_id(now: float | None = None) -> str:
    """Sortable, unique, lower-case and short: it goes into AMI names and Chef node names."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


class Workspace:
    """The files of one Jenkins workspace (or any directory): state, reports, artifacts."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    @property
    def state_dir(self) -> Path:
        return self.root / ".bakery"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def state_path(self, role: str) -> Path:
        return self.state_dir / f"{role}.json"

    def load(self, role: str) -> BakeState | None:
        path = self.state_path(role)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BakeryError(f"{path}: bake state is not valid JSON ({exc}); "
                              "move it away and run `bakery reap` to remove what that bake left") from None
        if not isinstance(data, dict):
            raise BakeryError(f"{path}: bake state is not a JSON object")
        return BakeState.from_json(data, path)

    def save(self, state: BakeState) -> None:
        atomic_write_json(self.state_path(state.role), state.to_json())

    def archive(self, state: BakeState) -> None:
        """Keep the record of a finished bake beside the new one (for `bakery status`)."""
        atomic_write_json(self.state_dir / "history" / f"{state.role}-{state.bake_id}.json", state.to_json())

    def roles_with_state(self) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        return sorted(p.stem for p in self.state_dir.glob("*.json"))

    @contextlib.contextmanager
    def lock(self, role: str, *, wait: float = 0.0, on_wait: Callable[[str], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
        """Hold the role's lock. ``wait`` > 0: wait up to that long for another process to release it
        (a message through ``on_wait`` at once and then every ``LOCK_NOTICE_EVERY`` s); else fail at once."""
        path = self.state_dir / f"{role}.lock"
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WorkspaceWriteError(path, exc) from None
        try:
            self._acquire(fd, role, path, wait, on_wait, sleep)
            yield
        finally:
            os.close(fd)

    def _acquire(self, fd: int, role: str, path: Path, wait: float, on_wait: Callable[[str], None] | None,
                 sleep: Callable[[float], None]) -> None:
        start = time.monotonic()
        next_notice = start
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - start
            if waited >= wait:
                late = f" and did not release it within {wait:g} s" if wait else ""
                raise UsageError(f"another bakery process is working on role {role!r} in {self.root} "
                                 f"(lock {path}){late}; wait for it to finish")
            if on_wait is not None and time.monotonic() >= next_notice:
                on_wait(f"waiting for another bakery process working on role {role!r} in {self.root} "
                        f"(lock {path}): {waited:.0f} s of at most {wait:g} s")
                next_notice = time.monotonic() + LOCK_NOTICE_EVERY
            sleep(min(LOCK_POLL, max(0.01, wait - waited)))
