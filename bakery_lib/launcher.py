"""``create-instance ROLE``: launch an instance of a role (the story's ``create_instance.py``, non-bake path).

- default: converge the role's security group and IAM role, then launch an instance from the base AMI
  whose user data installs Chef and runs the role's ``launch`` run list;
- ``from_ami`` ``latest``/an AMI id: launch from a baked AMI of the role (newest available, optionally
  of ``release``); the image's first-boot mechanism registers it with Chef: this is how users scale fast.

No bake state is involved: this calls the same state-free building blocks as the bake stages
(``security_groups.converge``, ``iam_role.converge``, ``ec2.instances.launch_params``/``run_instance``).
``create-instance --bake`` is the bake runner itself (see ``bakery_lib.cli``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .aws import tags_of
from .ec2.instances import launch_params, run_instance
from .errors import BakeryError, UsageError
from .stages import iam_role, security_groups
from .stages.base import RoleContext
from .stages.preflight import resolve_base_image
from .userdata import firstboot_trigger_userdata, launch_userdata


def find_baked_ami(ctx: RoleContext, which: str, release: str | None) -> dict[str, Any]:
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


def launch_instance(ctx: RoleContext, *, from_ami: str | None = None, release: str | None = None) -> dict[str, Any]:
    """Converge SG + IAM and launch one instance of the role; returns the RunInstances instance."""
    role = ctx.role
    launch_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    if from_ami:
        image = find_baked_ami(ctx, from_ami, release)
        user_data = firstboot_trigger_userdata(role)
        release = tags_of(image).get("bakery:release", "")
    else:
        image = resolve_base_image(ctx)
        user_data = launch_userdata(role)
        release = ""
    image_id = image["ImageId"]
    group_id, message = security_groups.converge(ctx)
    ctx.log(message)
    profile, message = iam_role.converge(ctx)
    ctx.log(message)
    tags = dict(role.tags)
    tags.update({"Name": f"{role.name}-{launch_id}", "bakery:role": role.name, "bakery:purpose": "launch",
                 "bakery:launch-id": launch_id, "bakery:source-ami": image_id})
    if release:
        tags["bakery:release"] = release
    params = launch_params(ctx, image_id, user_data, tags, f"launch-{launch_id}", security_group_id=group_id,
                           instance_profile=profile, root_device=image.get("RootDeviceName"))
    instance = run_instance(ctx, params)
    ctx.log(f"launched {instance['InstanceId']} from {image_id}")
    return instance
