"""chef-cleanup: delete the bake's Chef node and client (``bake-ROLE-BAKEID``); absent is fine.

Reads ``chef_node``; writes ``chef_cleaned``. Calls the Chef API (DELETE /nodes/N, /clients/N).
"""

from __future__ import annotations

from .base import Context


def delete_identity(ctx: Context, name: str) -> str:
    chef = ctx.chef()
    # Client first: that revokes the key, so a chef-client still running on an instance that is being
    # terminated can no longer save (and so re-create) the node deleted next.
    client = chef.delete_client(name)
    node = chef.delete_node(name)
    return (f"node {name} {'deleted' if node else 'already absent'}, "
            f"client {name} {'deleted' if client else 'already absent'}")


def run(ctx: Context) -> str:
    state = ctx.require_state()
    if not state.chef_node:
        return "no Chef node recorded for this bake"
    message = delete_identity(ctx, state.chef_node)
    state.chef_cleaned = True
    ctx.save()
    return message
