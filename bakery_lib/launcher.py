"""``create-instance ROLE``: the story's ``create_instance.py``.

- default: security groups + IAM role, then launch an instance from the base AMI whose user data
  installs Chef and runs the role's ``launch`` run list;
- ``--from-ami latest|AMI_ID``: launch from a baked AMI of the role (newest available, optionally of
  ``--release``); the image's first-boot mechanism registers it with Chef: this is how users scale fast;
- ``--bake --release REL``: the same as ``bakery bake --role ROLE --release REL``.
Prints the instance id on stdout.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Sequence

from .aws import Aws, Clock, tags_of
from .catalog import check_role_name, load_catalog
from .errors import BakeryError, UsageError
from .stages import iam_role, security_groups
from .stages.base import Context
from .stages.launch import launch_params, run_instance
from .stages.preflight import check_release, resolve_base_ami
from .state import BakeState, Workspace


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="create-instance", description="Launch an instance of a role, or bake its AMI.")
    p.add_argument("role")
    p.add_argument("--bake", action="store_true", help="bake the role's AMI instead (needs --release)")
    p.add_argument("--release", help="with --bake: the release to bake; with --from-ami latest: newest AMI of this release")
    p.add_argument("--from-ami", metavar="latest|AMI_ID", help="launch from a baked AMI of the role")
    p.add_argument("--workspace", metavar="DIR")
    p.add_argument("--catalog", metavar="PATH")
    p.add_argument("--chef-config", metavar="PATH")
    p.add_argument("--keep-on-failure", action="store_true", help="with --bake: keep a failed bake's instance")
    return p


def find_baked_ami(ctx: Context, which: str, release: str | None) -> dict:
    role = ctx.role
    if which == "latest":
        filters = [{"Name": "tag:bakery:role", "Values": [role.name]}, {"Name": "state", "Values": ["available"]},
                   {"Name": "tag:bakery:created-by", "Values": ["bakery"]}]
        if release:
            filters.append({"Name": "tag:bakery:release", "Values": [release]})
        images = ctx.aws.describe_images(role.region, Owners=["self"], Filters=filters)
        if not images:
            raise BakeryError(f"no available baked AMI of role {role.name!r}"
                              + (f" and release {release!r}" if release else "") + f" in {role.region}; "
                              f"bake one with `create-instance {role.name} --bake --release REL`")
        return max(images, key=lambda i: (i.get("CreationDate") or "", i["ImageId"]))
    if not which.startswith("ami-"):
        raise UsageError(f"--from-ami takes 'latest' or an AMI id, not {which!r}")
    images = ctx.aws.describe_images(role.region, [which])
    if not images or images[0].get("State") != "available":
        raise BakeryError(f"AMI {which} is not available in {role.region}")
    if tags_of(images[0]).get("bakery:role") != role.name:
        raise BakeryError(f"AMI {which} is not a baked image of role {role.name!r} (tag bakery:role is "
                          f"{tags_of(images[0]).get('bakery:role')!r})")
    return images[0]


def launch(args: argparse.Namespace, env: dict[str, str]) -> int:
    from .userdata import firstboot_trigger_userdata, launch_userdata

    catalog = load_catalog(args.catalog or env.get("BAKERY_CATALOG") or "bakery.yaml")
    role = catalog.role(args.role)
    ws = Workspace(args.workspace or os.getcwd())
    ctx = Context(ws=ws, catalog=catalog, role=role, aws=Aws(endpoint_url=env.get("AWS_ENDPOINT_URL") or None),
                  clock=Clock(), env=env, chef_config=args.chef_config, persist=False)
    launch_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    # The launch path keeps its record in memory only: the workspace's bake state is not touched.
    ctx.state = BakeState(role=role.name, bake_id=launch_id, release=args.release or "launch",
                          region=role.region, platform=role.platform)
    if args.from_ami:
        image = find_baked_ami(ctx, args.from_ami, args.release)
        image_id = image["ImageId"]
        user_data = firstboot_trigger_userdata(role)
        release = tags_of(image).get("bakery:release", "")
    else:
        image_id = resolve_base_ami(ctx)
        user_data = launch_userdata(role)
        release = ""
    ctx.log(security_groups.run(ctx))
    ctx.log(iam_role.run(ctx))
    tags = dict(role.tags)
    tags.update({"Name": f"{role.name}-{launch_id}", "bakery:role": role.name, "bakery:purpose": "launch",
                 "bakery:launch-id": launch_id, "bakery:source-ami": image_id})
    if release:
        tags["bakery:release"] = release
    instance = run_instance(ctx, launch_params(ctx, image_id, user_data, tags, f"launch-{launch_id}"))
    ctx.log(f"launched {instance['InstanceId']} from {image_id}")
    print(instance["InstanceId"])
    return 0


def main(argv: Sequence[str] | None, env: dict[str, str]) -> int:
    args = build_parser().parse_args(argv)
    check_role_name(args.role)
    if args.bake:
        if args.from_ami:
            raise UsageError("--bake and --from-ami cannot be combined")
        from .cli import bakery_main

        release = check_release(args.release)
        forwarded: list[str] = []
        for flag in ("workspace", "catalog", "chef_config"):
            value = getattr(args, flag)
            if value:
                forwarded += [f"--{flag.replace('_', '-')}", value]
        cmd = [*forwarded, "bake", "--role", args.role, "--release", release]
        if args.keep_on_failure:
            cmd.append("--keep-on-failure")
        return bakery_main(cmd)
    try:
        return launch(args, env)
    except BakeryError as exc:
        print(f"create-instance: {exc}", file=sys.stderr)
        return exc.exit_code
