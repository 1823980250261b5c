"""What every stage gets: the context (workspace, catalogue, role, AWS, Chef, clock, log, state)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..aws import Aws, Clock
from ..catalog import Catalog, RoleSpec
from ..errors import UsageError
from ..state import BakeState, Workspace

if TYPE_CHECKING:
    from ..chef import ChefClient


def default_log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    # One write per line: parallel bakes must not interleave halves of lines in a Jenkins console.
    sys.stderr.write(f"[{stamp}] {message}\n")
    sys.stderr.flush()


@dataclass
class Context:
    ws: Workspace
    catalog: Catalog
    role: RoleSpec
    aws: Aws
    clock: Clock = field(default_factory=Clock)
    log_fn: Callable[[str], None] = default_log
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    chef_config: str | None = None
    poll_interval: float = 15.0
    state: BakeState | None = None
    force: bool = False
    persist: bool = True  # False for create-instance: its record lives in memory only
    _chef: ChefClient | None = None

    def log(self, message: str) -> None:
        self.log_fn(f"{self.role.name}: {message}")

    @property
    def region(self) -> str:
        return self.role.region

    def ec2(self, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call("ec2", self.region, operation, **params)

    def iam(self, operation: str, **params: Any) -> dict[str, Any]:
        return self.aws.call("iam", self.region, operation, **params)

    def chef(self) -> ChefClient:
        if self._chef is None:
            from ..chef import ChefClient

            self._chef = ChefClient.from_env(self.env, self.chef_config)
        return self._chef

    def require_state(self) -> BakeState:
        if self.state is None:
            raise UsageError(
                f"no bake of role {self.role.name!r} in workspace {self.ws.root}: "
                f"run `bakery stage preflight --role {self.role.name} --release REL` first"
            )
        return self.state

    def save(self) -> None:
        if self.state is not None and self.persist:
            self.ws.save(self.state)

    def sleep(self, seconds: float | None = None) -> None:
        self.clock.sleep(self.poll_interval if seconds is None else seconds)


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def resource_name(role: str, limit: int = 64) -> str:
    """``bakery-ROLE``, shortened with a stable hash when a name limit (IAM: 64) would be exceeded."""
    import hashlib

    name = f"bakery-{role}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(role.encode()).hexdigest()[:8]
    return f"bakery-{role[: limit - len('bakery-') - 9]}-{digest}"
