"""Read-only checks of what AWS would accept silently and a bake would pay for later.

Each check only asks (Describe/Get/List/Head calls) and raises ``BakeryError`` naming the catalogue,
the role and the key. Preflight makes the ones a bake needs before it launches anything (platform and
architecture of the base AMI, instance types offered in the region); ``bakery validate`` makes them all
(plus subnets, VPC, buckets, topic and KMS keys), for a catalogue pull request, creating nothing.

Why these: AWS launches a Linux role's user data on a Windows AMI without a word (EC2Launch ignores a
shell script; the bake then waits out ``bootstrap_timeout``), and RunInstances refuses an instance type
the region does not offer only after the security group and IAM role were made. ``DescribeImages``
says the platform in ``Platform`` (``windows`` for Windows AMIs, absent otherwise) and
``PlatformDetails`` (``Linux/UNIX``, ``Windows``, ``Windows with SQL Server ...``); the architecture in
``Architecture``. ``DescribeInstanceTypeOfferings`` (LocationType ``region``) lists what a region
offers; ``DescribeInstanceTypes`` gives ``ProcessorInfo.SupportedArchitectures``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import AwsError, BakeryError

if TYPE_CHECKING:
    from .stages.base import RoleContext


def image_platform(image: dict[str, Any]) -> str:
    """``windows`` or ``linux``, as AWS reports it for an image."""
    if (image.get("Platform") or "").lower() == "windows":
        return "windows"
    return "windows" if (image.get("PlatformDetails") or "").lower().startswith("windows") else "linux"


def check_platform(ctx: RoleContext, image: dict[str, Any]) -> None:
    role = ctx.role
    actual = image_platform(image)
    if actual != role.platform:
        raise BakeryError(
            f"catalogue {ctx.catalog.path}, role {role.name!r}, key 'platform': the role is {role.platform} but its "
            f"base AMI {image['ImageId']} ({image.get('Name') or 'no name'}) is a {actual} image "
            f"(DescribeImages Platform {image.get('Platform') or '-'}, PlatformDetails "
            f"{image.get('PlatformDetails') or '-'}); fix 'platform' or 'base_ami'"
        )


def role_instance_types(ctx: RoleContext) -> tuple[str, ...]:
    role = ctx.role
    return tuple(dict.fromkeys((role.instance_type, *role.instance_types)))


def _region_types(ctx: RoleContext) -> tuple[str, ...]:
    """Every instance type of every catalogue role in this role's region: one question for all of them."""
    types: dict[str, None] = {}
    for other in ctx.catalog.roles.values():
        if other.region == ctx.region:
            types.update(dict.fromkeys((other.instance_type, *other.instance_types)))
    types.update(dict.fromkeys(role_instance_types(ctx)))
    return tuple(sorted(types))


def _offered(ctx: RoleContext, types: tuple[str, ...]) -> dict[str, list[str]]:
    """Type -> supported architectures, for the types the region offers (others absent)."""
    offers = ctx.aws.paginate("ec2", ctx.region, "DescribeInstanceTypeOfferings", "InstanceTypeOfferings",
                              LocationType="region",
                              Filters=[{"Name": "instance-type", "Values": list(types)}])
    offered = sorted({o["InstanceType"] for o in offers})
    if not offered:
        return {}
    described = ctx.aws.paginate("ec2", ctx.region, "DescribeInstanceTypes", "InstanceTypes", InstanceTypes=offered)
    return {t["InstanceType"]: list((t.get("ProcessorInfo") or {}).get("SupportedArchitectures") or [])
            for t in described}


def check_instance_types(ctx: RoleContext, image: dict[str, Any] | None) -> None:
    """Every instance type of the role is offered in its region and runs the base AMI's architecture."""
    types = _region_types(ctx)
    offered = ctx.session.once(("instance-types", ctx.region, types), lambda: _offered(ctx, types))
    role = ctx.role
    missing = [t for t in role_instance_types(ctx) if t not in offered]

    def key_of(types: list[str]) -> str:
        return "instance_type" if role.instance_type in types else "instance_types"

    if missing:
        key = key_of(missing)
        raise BakeryError(
            f"catalogue {ctx.catalog.path}, role {role.name!r}, key {key!r}: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not offered in {ctx.region} (DescribeInstanceTypeOfferings); "
            "check the spelling (e.g. t3.small) or pick a type the region offers"
        )
    arch = (image or {}).get("Architecture")
    if not arch:
        return
    wrong = [t for t in role_instance_types(ctx) if offered[t] and arch not in offered[t]]
    if wrong:
        key = key_of(wrong)
        raise BakeryError(
            f"catalogue {ctx.catalog.path}, role {role.name!r}, key {key!r}: {', '.join(wrong)} cannot run the "
            f"{arch} base AMI {image.get('ImageId') if image else ''} (supported: "
            f"{', '.join(sorted({a for t in wrong for a in offered[t]}))})"
        )


# --- what only ``bakery validate`` asks (launch and publish would find these later) ---------------------


def _exists(ctx: RoleContext, what: str, key: str, call: Any) -> str | None:
    try:
        call()
    except AwsError as exc:
        return f"key {key!r}: {what}: {exc.code or exc}"
    except BakeryError as exc:
        return f"key {key!r}: {what}: {exc}"
    return None


def reachability_problems(ctx: RoleContext) -> list[str]:
    """What launch/bootstrap/publish need besides the image: subnets, VPC, bucket, topic, KMS keys."""
    role, aws, region = ctx.role, ctx.aws, ctx.region
    checks: list[tuple[str, str, Any]] = []
    subnets = tuple(dict.fromkeys(s for s in (role.subnet_id, *role.subnet_ids) if s))
    if subnets:
        checks.append((f"subnets {', '.join(subnets)} in {region}", "subnet_id",
                       lambda: _all_found(aws.call("ec2", region, "DescribeSubnets", SubnetIds=list(subnets))
                                          .get("Subnets", []), "SubnetId", subnets)))
    if role.vpc_id:
        checks.append((f"VPC {role.vpc_id} in {region}", "vpc_id",
                       lambda: aws.call("ec2", region, "DescribeVpcs", VpcIds=[role.vpc_id])))
    checks.append((f"bucket {role.runlist_bucket}", "runlist_bucket",
                   lambda: aws.call("s3", region, "HeadBucket", Bucket=role.runlist_bucket)))
    checks.append((f"topic {role.alert_topic_arn}", "alert_topic_arn",
                   lambda: aws.call("sns", _arn_region(role.alert_topic_arn, region), "GetTopicAttributes",
                                    TopicArn=role.alert_topic_arn)))
    for kms_region, key_id in _kms_keys(ctx):
        checks.append((f"KMS key {key_id} in {kms_region}", "kms_key_id",
                       functools.partial(aws.call, "kms", kms_region, "DescribeKey", KeyId=key_id)))
    problems = []
    for what, key, call in checks:
        memo = ("validate", what)
        problem = ctx.session.once(memo, functools.partial(_exists, ctx, what, key, call))
        if problem:
            problems.append(problem)
    return problems


def _all_found(items: list[dict[str, Any]], id_key: str, wanted: Iterable[str]) -> None:
    found = {i.get(id_key) for i in items}
    missing = [w for w in wanted if w not in found]
    if missing:
        raise BakeryError(f"not found: {', '.join(missing)}")


def _arn_region(arn: str, default: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else default


def _kms_keys(ctx: RoleContext) -> list[tuple[str, str]]:
    role = ctx.role
    keys = [(role.region, role.kms_key_id)] if role.kms_key_id else []
    keys += [(r, k) for r, k in role.region_kms_keys]
    return keys
