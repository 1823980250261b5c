"""chef-cleanup: delete the bake's Chef node and client (``bake-ROLE-BAKEID``); absent is fine.

Reads ``chef_node``; writes ``chef_cleaned``. Calls the Chef API (DELETE /clients/N, then /nodes/N).
Cleanup: none of its own (``launch``'s cleanup removes the identity its instance registered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..resources import delete_chef_identity
from .base import Context, no_cleanup

if TYPE_CHECKING:
    from ..chef import ChefClient

cleanup = no_cleanup


class _HasChef(Protocol):
    def chef(self) -> ChefClient: ...


def delete_identity(ctx: _HasChef, name: str) -> str:
    return delete_chef_identity(ctx.chef(), name)


def run(ctx: Context) -> str:
    state = ctx.require_state()
    if not state.chef_node:
        return "no Chef node recorded for this bake"
    message = delete_identity(ctx, state.chef_node)
    state.chef_cleaned = True
    ctx.save()
    return message
