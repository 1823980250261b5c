"""preflight: check everything a bake needs, then open the bake record. No side effect in AWS or Chef.

Reads: the catalogue, the workspace state (to refuse a second bake while one is in progress here).
Calls: Chef (one signed request; run list cookbooks/roles exist), EC2 DescribeImages (resolve the
base AMI), EC2 DescribeInstances (refuse if another bake of the role is in flight anywhere), EC2
DescribeImages (an available AMI with the same bake key). In ``bakery bake`` the roles share these
calls: the base AMI is resolved once per process, and the two look-ups are batched across roles.
Writes: a new ``.bakery/ROLE.json`` with bake id, release, base AMI and bake key.
Cleanup: nothing to remove.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..aws import tags_of
from ..catalog import AmiFilter, RoleSpec
from ..ec2.images import retag_image
from ..ec2.instances import bakes_in_flight
from ..errors import BakeryError, UsageError
from ..state import BakeState, new_bake_id
from ..userdata import bake_userdata, node_name
from .base import Context, RoleContext, no_cleanup

if TYPE_CHECKING:
    from ..chef import ChefClient

cleanup = no_cleanup  # see the module docstring

RELEASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def check_release(release: str | None) -> str:
    if not release:
        raise UsageError("preflight needs --release REL (the release being baked)")
    if not RELEASE_RE.match(release):
        raise UsageError(
            f"invalid release {release!r}: use letters, digits and . _ + - (at most 64 characters); "
            "it goes into AMI names and tags"
        )
    return release


def resolve_base_ami(ctx: RoleContext) -> str:
    return resolve_base_image(ctx)["ImageId"]


def resolve_base_image(ctx: RoleContext) -> dict[str, Any]:
    """The base AMI: the given id (must be available), or the newest available match of the filter."""
    role = ctx.role
    if isinstance(role.base_ami, AmiFilter):
        owners, pattern = list(role.base_ami.owners), role.base_ami.name
        # Once per run: the roles of one release bake from the same image.
        images = ctx.session.once(("base-ami", role.region, tuple(owners), pattern), lambda: ctx.aws.describe_images(
            role.region, Owners=owners,
            Filters=[{"Name": "name", "Values": [pattern]}, {"Name": "state", "Values": ["available"]}],
        ))
        if not images:
            raise BakeryError(
                f"catalogue {ctx.catalog.path}, role {role.name!r}, key 'base_ami': no available image named "
                f"{role.base_ami.name!r} owned by {', '.join(role.base_ami.owners)} in {role.region}"
            )
        return max(images, key=lambda i: (i.get("CreationDate") or "", i["ImageId"]))
    ami = role.base_ami
    images = ctx.session.once(("base-ami", role.region, ami), lambda: ctx.aws.describe_images(role.region, [ami]))
    if not images or images[0].get("State") != "available":
        state = images[0].get("State") if images else "not found"
        raise BakeryError(
            f"catalogue {ctx.catalog.path}, role {role.name!r}, key 'base_ami': {role.base_ami} is {state} "
            f"in {role.region}"
        )
    return images[0]


def bake_key(role: RoleSpec, base_ami: str, cookbook_versions: dict[str, list[str]] | None) -> str:
    """A hash of every bake input: same key, same image (issue: skip unchanged roles)."""
    # The user data is rendered with a fixed bake id/release so that only real changes move the key.
    userdata = bake_userdata(role, bake_id="0" * 21, release="0")
    doc = {
        "base_ami": base_ami,
        "settings": role.shaping_settings(),
        "userdata": hashlib.sha256(userdata.encode()).hexdigest(),
        "bakery": __version__,
        "cookbooks": cookbook_versions or {},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _cookbook(item: str) -> str:
    m = re.match(r"^recipe\[([^:\]@]+)", item)
    return m.group(1) if m else ""


def cookbooks_of(run_list: tuple[str, ...]) -> list[str]:
    names = []
    for item in run_list:
        name = _cookbook(item)
        if name and name not in names:
            names.append(name)
    return names


# Many roles baked in one process share one Chef identity and mostly the same cookbooks: the run's
# session checks the identity once and reads each cookbook once a minute, not once per role (and not
# once per role that asks at the same moment: the first asks, the others wait for its answer).
COOKBOOK_TTL = 60.0


def check_chef(ctx: Context, chef: ChefClient) -> None:
    ctx.session.once(("chef-auth", chef.server_url, chef.client_name), chef.check_auth)


def cookbook_versions(ctx: Context, chef: ChefClient, name: str) -> list[str]:
    return ctx.session.once(("cookbook", chef.server_url, name), lambda: chef.cookbook_versions(name),
                            ttl=COOKBOOK_TTL)


def _check_run_list(ctx: Context) -> dict[str, list[str]]:
    """The versions of every cookbook of the ami run list; fails naming what the Chef server lacks."""
    role = ctx.role
    chef = ctx.chef()
    check_chef(ctx, chef)
    versions = {cb: cookbook_versions(ctx, chef, cb) for cb in cookbooks_of(role.run_list_ami)}
    missing = chef.missing_run_list_items(role.run_list_ami, lambda cb: cookbook_versions(ctx, chef, cb))
    if missing:
        raise BakeryError(
            f"role {role.name!r}: the ami run list names {', '.join(missing)}, which the Chef server "
            f"{chef.server_url} does not have (upload the cookbook/role first)"
        )
    return versions


def _refuse_in_flight(ctx: Context) -> None:
    in_flight = bakes_in_flight(ctx)
    if not in_flight:
        return
    inst = in_flight[0]
    tags = tags_of(inst)
    bake_id = tags.get("bakery:bake-id", "?")
    raise BakeryError(
        f"another bake of role {ctx.role.name!r} is in flight: instance {inst['InstanceId']} "
        f"(bake {bake_id}, release {tags.get('bakery:release', '?')}, {inst['State']['Name']}, expires "
        f"{tags.get('bakery:expires-at', '?')}); wait for it, or, if it is abandoned, remove it and what it made "
        f"from any workspace with `bakery cleanup --bake-id {bake_id}`"
    )


def run(ctx: Context, release: str | None) -> str:
    role = ctx.role
    existing = ctx.state
    if existing is not None and not existing.closed:
        if existing.succeeded("preflight") and (release is None or release == existing.release):
            return f"already done: bake {existing.bake_id} of release {existing.release} is open"
        raise BakeryError(
            f"bake {existing.bake_id} of role {role.name!r} (release {existing.release}) is still in progress "
            f"in {ctx.ws.root}; finish it, or run `bakery cleanup --role {role.name}` to abandon it"
        )
    release = check_release(release)

    versions = _check_run_list(ctx)

    base_image = resolve_base_image(ctx)
    base_ami = base_image["ImageId"]
    _refuse_in_flight(ctx)

    if existing is not None:
        ctx.ws.archive(existing)
    bake_id = new_bake_id()
    ctx.state = BakeState(
        role=role.name,
        bake_id=bake_id,
        release=release,
        region=role.region,
        platform=role.platform,
        base_ami=base_ami,
        bake_key=bake_key(role, base_ami, versions),
        chef_node=node_name(role.name, bake_id),
        base_root_device=base_image.get("RootDeviceName"),
    )
    state = ctx.state
    reused = None if ctx.force else find_reusable(ctx, state.bake_key or "")
    if reused is not None:
        state.reused = True
        state.image_id = reused["ImageId"]
        state.image_name = reused.get("Name")
        state.image_state = "available"
        state.amis = {role.region: reused["ImageId"]}
        state.boot_test = tags_of(reused).get("bakery:boot-test")  # passed (or disabled) by the bake that made it
        ctx.save()  # run_stage marks the stages a reused AMI makes unnecessary
        # Today's catalogue tags on the reused AMI (tags are not in the bake key); its copies: publish.
        retagged = retag_image(ctx, role.region, reused)
        return (f"bake {bake_id} of release {release}: reusing {reused['ImageId']} ({reused.get('Name')}), "
                f"an available AMI with the same bake key; nothing will be launched (--force rebakes)"
                + (f"; {retagged}" if retagged else ""))
    ctx.save()
    return f"bake {bake_id} of release {release} from {base_ami} opened"


def find_reusable(ctx: Context, key: str) -> dict | None:
    """An available AMI of this role baked from exactly the same inputs, if there is one (and boot-tested)."""
    batcher = ctx.aws.amis_by_bake_key
    try:
        found = batcher.get(ctx.region, key, max_age=0, clock=ctx.clock) or []
    finally:
        batcher.forget(ctx.region, key)
    # Only an AMI that passed its boot test, unless the role opts out of boot tests (then also an untested one).
    tested = ("passed", "disabled") if not ctx.role.boot_test.enabled else ("passed",)
    images = [i for i in found if tags_of(i).get("bakery:role") == ctx.role.name
              and tags_of(i).get("bakery:boot-test") in tested]
    if not images:
        return None
    return max(images, key=lambda i: (i.get("CreationDate") or "", i["ImageId"]))
