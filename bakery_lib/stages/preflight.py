"""preflight: check everything a bake needs, then open the bake record. No side effect in AWS or Chef.

Reads: the catalogue, the workspace state (to refuse a second bake while one is in progress here).
Calls: Chef (one signed request; run list cookbooks/roles exist), EC2 DescribeImages (resolve the
base AMI; its platform and architecture must fit the role), DescribeInstanceTypeOfferings and
DescribeInstanceTypes (the role's instance types are offered in its region), EC2 DescribeInstances (refuse if another bake of the role is in flight anywhere), EC2
DescribeImages (the role's available AMIs: one with the same bake key is reused). In ``bakery bake`` the
roles share these calls: the base AMI is resolved once per process, and the two look-ups are batched
across roles.
The role's AMIs are listed once per bake, here: what the SBOM's package diff (the role's previous AMI
with an SBOM) and publish (the AMIs its new one supersedes) need of them is kept in the state
(``role_amis``), so neither lists them again (see :func:`recorded_role_amis`).
Writes: a new ``.bakery/ROLE.json`` with bake id, release, base AMI, bake key and ``role_amis``.
Cleanup: nothing to remove.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..amis.base_image import resolve_ssm_base
from ..amis.retire import Now, parse_aws_time, utcnow
from ..aws import tags_of
from ..catalog import AmiFilter, RoleSpec
from ..checks import check_instance_types, check_platform
from ..ec2.images import retag_image
from ..ec2.instances import bakes_in_flight
from ..errors import BakeryError, UsageError
from ..kms import check_sharing_keys
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
    ami = resolve_ssm_base(ctx, role.base_ami)  # an AMI id, or resolve:ssm:/PARAMETER read in the region
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


@dataclass(frozen=True)
class Inspection:
    """What preflight found, before it writes anything: the base image, the bake key, a reusable AMI,
    and the role's available AMIs in its region (the listing the reuse look-up made)."""

    base_image: dict[str, Any]
    bake_key: str
    reusable: dict[str, Any] | None
    role_images: list[dict[str, Any]]


def refuse_open_bake(ctx: Context, release: str | None) -> str | None:
    """A message if this workspace's bake of the role is already open for this release; raises if for another."""
    existing = ctx.state
    if existing is None or existing.closed:
        return None
    if existing.succeeded("preflight") and (release is None or release == existing.release):
        return f"already done: bake {existing.bake_id} of release {existing.release} is open"
    raise BakeryError(
        f"bake {existing.bake_id} of role {ctx.role.name!r} (release {existing.release}) is still in progress "
        f"in {ctx.ws.root}; finish it, or run `bakery cleanup --role {ctx.role.name}` there to abandon it "
        f"(from elsewhere: `bakery --workspace {ctx.ws.root} cleanup --role {ctx.role.name}`)"
    )


def inspect(ctx: Context) -> Inspection:
    """Every check of preflight, read-only: Chef run list, base AMI (platform, architecture), instance
    types offered, no other bake in flight, and an AMI to reuse. ``bake --dry-run`` stops here."""
    versions = _check_run_list(ctx)
    base_image = resolve_base_image(ctx)
    check_platform(ctx, base_image)
    check_instance_types(ctx, base_image)
    _refuse_in_flight(ctx)
    check_sharing_keys(ctx)  # the accounts an AMI is shared with can use its keys (see bakery_lib.kms)
    key = bake_key(ctx.role, base_image["ImageId"], versions)
    images = role_images(ctx)
    return Inspection(base_image, key, None if ctx.force else find_reusable(ctx, key, images), images)


def run(ctx: Context, release: str | None) -> str:
    role = ctx.role
    existing = ctx.state
    done = refuse_open_bake(ctx, release)
    if done:
        return done
    release = check_release(release)
    found = inspect(ctx)
    base_ami = found.base_image["ImageId"]

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
        bake_key=found.bake_key,
        chef_node=node_name(role.name, bake_id),
        base_root_device=found.base_image.get("RootDeviceName"),
        role_amis=recorded_role_amis(found.role_images, bake_id),
    )
    state = ctx.state
    reused = found.reusable
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


def role_images(ctx: Context) -> list[dict[str, Any]]:
    """The role's available AMIs in its region, asked afresh (batched with the other roles asking)."""
    batcher = ctx.aws.amis_by_role
    try:
        found: list[dict[str, Any]] = batcher.get(ctx.region, ctx.role.name, max_age=0, clock=ctx.clock) or []
    finally:
        batcher.forget(ctx.region, ctx.role.name)
    return [i for i in found if tags_of(i).get("bakery:role") == ctx.role.name and i.get("State") == "available"]


def reusable_among(images: list[dict[str, Any]], key: str, *, boot_tested: bool) -> dict[str, Any] | None:
    """The newest AMI baked from exactly the inputs of ``key`` that wait-image finished (IMDSv2 required
    on it) and that passed its boot test -- or, for a role without boot tests, also an untested one."""
    tested = ("passed",) if boot_tested else ("passed", "disabled")
    found = [i for i in images if tags_of(i).get("bakery:bake-key") == key
             and tags_of(i).get("bakery:imds-support") == "v2.0" and tags_of(i).get("bakery:boot-test") in tested]
    return max(found, key=lambda i: (i.get("CreationDate") or "", i["ImageId"]), default=None)


def find_reusable(ctx: Context, key: str, images: list[dict[str, Any]] | None = None) -> dict | None:
    """An available AMI of this role baked from exactly the same inputs, if there is one (and boot-tested)."""
    return reusable_among(role_images(ctx) if images is None else images, key,
                          boot_tested=ctx.role.boot_test.enabled)


# What the SBOM step and publish read of a recorded AMI (``BakeState.role_amis``).
RECORDED_TAGS = ("bakery:role", "bakery:created-by", "bakery:bake-id", "bakery:release", "bakery:sbom")


def recorded_role_amis(images: list[dict[str, Any]], bake_id: str, now: Now = utcnow) -> list[dict[str, Any]]:
    """The part of the role's AMI listing that later stages need, in DescribeImages' shape: each AMI not
    deprecated yet (publish deprecates those its new AMI supersedes; one deprecated now is deprecated
    then too) and the newest AMI with an SBOM (the package diff's previous AMI), with the tags they read."""
    at = now()
    sbom = [i for i in images if tags_of(i).get("bakery:sbom") and tags_of(i).get("bakery:bake-id") != bake_id]
    newest_sbom = max(sbom, key=lambda i: str(i.get("CreationDate") or ""), default=None)
    out = []
    for image in images:
        deprecation = parse_aws_time(image.get("DeprecationTime"))
        if image is not newest_sbom and deprecation is not None and deprecation <= at:
            continue
        entry = {k: image[k] for k in ("ImageId", "State", "CreationDate", "DeprecationTime") if image.get(k)}
        entry["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags_of(image).items()) if k in RECORDED_TAGS]
        out.append(entry)
    return sorted(out, key=lambda i: (str(i.get("CreationDate") or ""), i["ImageId"]))
