"""security-groups: create the role's security group, or converge an existing one to the catalogue.

Plan, then act: ``plan()`` makes only describe calls and returns frozen instructions (create, add
rule, revoke rule); ``run()`` carries them out. Default: no ingress at all; egress stays open so the
instance can reach S3, the Chef server and the package mirrors.
Writes ``security_group_id`` to the state the moment the group exists.
Calls: DescribeVpcs, DescribeSubnets, DescribeSecurityGroups, CreateSecurityGroup,
AuthorizeSecurityGroupIngress, RevokeSecurityGroupIngress.
Cleanup: none; the group belongs to the role, not to one bake, and the next bake reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..aws import tags_of
from ..catalog import IngressRule
from ..errors import BakeryError
from ..waits import while_propagating
from .base import Context, RoleContext, no_cleanup, resource_name

cleanup = no_cleanup  # see the module docstring


@dataclass(frozen=True)
class Permission:
    protocol: str
    from_port: int
    to_port: int
    cidr: str | None
    source_group: str | None
    description: str = ""

    def key(self) -> tuple:
        return (self.protocol, self.from_port, self.to_port, self.cidr, self.source_group)

    def to_api(self) -> dict[str, Any]:
        perm: dict[str, Any] = {"IpProtocol": self.protocol}
        if self.protocol != "-1":
            perm.update(FromPort=self.from_port, ToPort=self.to_port)
        if self.cidr:
            rng: dict[str, str] = {"CidrIp": self.cidr}
            if self.description:
                rng["Description"] = self.description
            perm["IpRanges"] = [rng]
        else:
            pair: dict[str, str] = {"GroupId": self.source_group or ""}
            if self.description:
                pair["Description"] = self.description
            perm["UserIdGroupPairs"] = [pair]
        return perm


@dataclass(frozen=True)
class Plan:
    group_name: str
    vpc_id: str | None
    group_id: str | None
    create: bool
    add: tuple[Permission, ...]
    revoke: tuple[Permission, ...]


def desired(rules: tuple[IngressRule, ...]) -> list[Permission]:
    return [Permission(r.protocol, r.from_port, r.to_port, r.cidr, r.source_group, r.description) for r in rules]


def current(group: dict[str, Any]) -> list[Permission]:
    out = []
    for p in group.get("IpPermissions", []):
        proto = p.get("IpProtocol", "-1")
        lo, hi = p.get("FromPort", -1), p.get("ToPort", -1)
        for r in p.get("IpRanges", []):
            out.append(Permission(proto, lo, hi, r["CidrIp"], None, r.get("Description", "")))
        for r in p.get("Ipv6Ranges", []):
            out.append(Permission(proto, lo, hi, r["CidrIpv6"], None, r.get("Description", "")))
        for r in p.get("UserIdGroupPairs", []):
            out.append(Permission(proto, lo, hi, None, r["GroupId"], r.get("Description", "")))
    return out


def vpc_for(ctx: RoleContext) -> str | None:
    role = ctx.role
    if role.vpc_id:
        return role.vpc_id
    if role.subnet_id:
        subnets = ctx.ec2("DescribeSubnets", SubnetIds=[role.subnet_id])["Subnets"]
        return subnets[0]["VpcId"]
    # Once per run and region, however many roles converge their groups at the same moment.
    vpcs = ctx.session.once(("default-vpc", role.region), lambda: ctx.ec2(
        "DescribeVpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"])
    if not vpcs:
        raise BakeryError(
            f"role {ctx.role.name!r}: region {role.region} has no default VPC; set vpc_id or subnet_id in the catalogue"
        )
    return vpcs[0]["VpcId"]


def plan(ctx: RoleContext) -> Plan:
    name = resource_name(ctx.role.name, 255)
    vpc_id = vpc_for(ctx)
    filters = [{"Name": "group-name", "Values": [name]}]
    if vpc_id:
        filters.append({"Name": "vpc-id", "Values": [vpc_id]})
    groups = ctx.ec2("DescribeSecurityGroups", Filters=filters)["SecurityGroups"]
    want = desired(ctx.role.ingress)
    if not groups:
        return Plan(name, vpc_id, None, True, tuple(want), ())
    group = groups[0]
    tags = tags_of(group)
    if tags.get("bakery:managed") != "true":
        raise BakeryError(
            f"security group {group['GroupId']} ({name}) exists but is not managed by the bakery "
            "(no tag bakery:managed=true); rename it or tag it to let the bakery converge it"
        )
    have = current(group)
    have_keys = {p.key() for p in have}
    want_keys = {p.key() for p in want}
    return Plan(
        name,
        vpc_id,
        group["GroupId"],
        False,
        tuple(p for p in want if p.key() not in have_keys),
        tuple(p for p in have if p.key() not in want_keys),
    )


def converge(ctx: RoleContext, on_created: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Create the role's group or converge it to the catalogue (state-free: create-instance calls it too).

    ``on_created(group_id)`` runs the moment a new group exists, before its rules are set, so a bake
    records it at once. Returns (group id, message)."""
    p = plan(ctx)
    group_id = p.group_id
    if p.create:
        params: dict[str, Any] = {
            "GroupName": p.group_name,
            "Description": f"AMI Bakery role {ctx.role.name}",
            "TagSpecifications": [{
                "ResourceType": "security-group",
                "Tags": [{"Key": "Name", "Value": p.group_name}, {"Key": "bakery:managed", "Value": "true"},
                         {"Key": "bakery:role", "Value": ctx.role.name}],
            }],
        }
        if p.vpc_id:
            params["VpcId"] = p.vpc_id
        group_id = ctx.ec2("CreateSecurityGroup", **params)["GroupId"]
        if on_created is not None:
            on_created(group_id)
    assert group_id is not None  # found by the plan, or created just now
    if p.revoke:
        ctx.ec2("RevokeSecurityGroupIngress", GroupId=group_id, IpPermissions=[x.to_api() for x in p.revoke])
    if p.add:
        # A group created moments ago can answer InvalidGroup.NotFound until it has propagated (EC2 API
        # eventual consistency): retried for a while, not taken for an error.
        while_propagating(lambda: ctx.ec2("AuthorizeSecurityGroupIngress", GroupId=group_id,
                                          IpPermissions=[x.to_api() for x in p.add]),
                          what=f"adding rules to {group_id}", clock=ctx.clock, log=ctx.log)
    verb = "created" if p.create else "converged"
    # The one line about the group (its result): a progress line saying "created" as well would repeat it.
    return group_id, f"{verb} {group_id} ({p.group_name}): {len(p.add)} rule(s) added, {len(p.revoke)} revoked"


def run(ctx: Context) -> str:
    state = ctx.require_state()

    def record(group_id: str) -> None:
        state.security_group_id = group_id
        state.security_group_created = True
        ctx.save()

    group_id, message = converge(ctx, record)
    state.security_group_id = group_id
    ctx.save()
    return message
