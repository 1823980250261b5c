"""From the validated keys to role specs: ``defaults`` merged under each role, and the checks that need
both (required keys, the Chef client choice, the fallback lists, the tag count).

A role's own value wins; ``tags``, ``chef`` and ``boot_test`` merge per key; ``instance_type`` /
``instance_types`` and ``subnet_id`` / ``subnet_ids`` are one choice per level (the role's replaces
the defaults' whole).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .models import BootTestIn, ChefIn, DefaultsIn, IngressIn, RoleIn, RoleKeys
from .problems import CHEF_MISSING, ROLE_MISSING
from .specs import (
    CHEF_INSTALLERS,
    MAX_USER_TAGS,
    AmiFilter,
    BootTestSettings,
    ChefSettings,
    FastLaunchSettings,
    IngressRule,
    RoleSpec,
)

ROLE_KEYS = frozenset(RoleKeys.model_fields)
REQUIRED = ("region", "runlist_bucket", "alert_topic_arn")
CHEF_REQUIRED = ("server_url", "validation_client_name", "validation_key_s3")


class RoleProblem(Exception):
    """One problem of a role's merged settings (``key``: dotted, None for the defaults' own)."""

    def __init__(self, key: str, message: str, *, in_defaults: bool = False):
        super().__init__(message)
        self.key, self.message, self.in_defaults = key, message, in_defaults


def given(model: Any) -> dict[str, Any]:
    """The keys a model was given, with their validated values."""
    return {k: getattr(model, k) for k in model.model_fields_set} if model is not None else {}


def merge_role(name: str, role: RoleIn, defaults: DefaultsIn) -> RoleSpec:
    """The role's spec, or RoleProblem for the first problem the merge finds."""
    own = {k: v for k, v in given(role).items() if k in ROLE_KEYS}
    base = {k: v for k, v in given(defaults).items() if k in ROLE_KEYS}
    values: dict[str, Any] = {"instance_type": "t3.medium", **base, **own}
    _fallback_lists(values, own, base)
    values["tags"] = _tags(base, own)
    for key in REQUIRED:
        if key not in values:
            raise RoleProblem(key, ROLE_MISSING)
    values["ingress"] = tuple(_rule(r) for r in values.get("ingress", ()))
    _check_sharing_keys(values)
    _check_restore_zones(values)
    base_ami = role.base_ami
    return RoleSpec(
        name=name,
        platform=role.platform,
        base_ami=AmiFilter(base_ami.name, tuple(base_ami.owners)) if not isinstance(base_ami, str) else base_ami,
        chef=_chef(role.chef, defaults.chef),
        boot_test=BootTestSettings(**{**given(defaults.boot_test), **given(role.boot_test)}),
        run_list_ami=_run_list(name, role, "ami"),
        run_list_launch=_run_list(name, role, "launch"),
        fast_launch=_fast_launch(role),
        **values,
    )


def _fast_launch(role: RoleIn) -> FastLaunchSettings | None:
    """Windows Fast Launch is for Windows AMIs only (EC2 API reference, EnableFastLaunch)."""
    if role.fast_launch is None:
        return None
    if role.platform != "windows":
        raise RoleProblem("fast_launch", "Windows Fast Launch is for Windows AMIs only (platform is "
                          f"{role.platform}); remove the key")
    given_keys = given(role.fast_launch)
    if given_keys.pop("enabled", True) is False:
        return None
    return FastLaunchSettings(**given_keys)


def _check_restore_zones(values: Mapping[str, Any]) -> None:
    """Each fast snapshot restore zone belongs to one of the role's regions, once."""
    zones = list(values.get("fast_snapshot_restore", ()))
    regions = [values["region"], *values.get("copy_to_regions", ())]
    for zone in zones:
        if zone[:-1] not in regions:
            raise RoleProblem("fast_snapshot_restore", f"{zone} is not in a region of the role "
                              f"({', '.join(dict.fromkeys(regions))})")
    if len(set(zones)) != len(zones):
        raise RoleProblem("fast_snapshot_restore", f"lists {sorted({z for z in zones if zones.count(z) > 1})} twice")


DEFAULT_EBS_KEYS = ("alias/aws/ebs",)


def _check_sharing_keys(values: Mapping[str, Any]) -> None:
    """Sharing needs a customer managed key in every region of the role: another account cannot
    launch an AMI whose snapshots are encrypted with the default ``aws/ebs`` key, whose policy cannot
    be changed (EC2 User Guide, "Share an AMI with specific AWS accounts": "You can't share an AMI that
    has volumes that are encrypted with an AWS managed key")."""
    if not (values.get("share_with_accounts") or values.get("share_with_organizations")):
        return
    key = values.get("kms_key_id")
    if not key or key in DEFAULT_EBS_KEYS:
        raise RoleProblem("kms_key_id", f"sharing the AMI needs a customer managed KMS key in {values['region']}: "
                          "AWS cannot share AMIs encrypted with the default aws/ebs key; set kms_key_id")
    regional = dict(values.get("region_kms_keys", ()))
    for region in values.get("copy_to_regions", ()):
        if region != values["region"] and regional.get(region, "alias/aws/ebs") in DEFAULT_EBS_KEYS:
            raise RoleProblem("region_kms_keys", f"sharing the AMI needs a customer managed KMS key in {region} "
                              f"(a copy region): set region_kms_keys: {{{region}: KEY}}")


def _rule(rule: IngressIn) -> IngressRule:
    from_port, to_port = rule.ports()
    return IngressRule(rule.protocol, from_port, to_port, rule.cidr, rule.source_group, rule.description or "")


def _tags(base: Mapping[str, Any], own: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Tags merge (as chef does): a role adds to or overrides defaults.tags, it never drops cost tags."""
    tags = tuple({**dict(base.get("tags", ())), **dict(own.get("tags", ()))}.items())
    if len(tags) > MAX_USER_TAGS:
        raise RoleProblem("tags", f"{len(tags)} tags with defaults.tags; at most {MAX_USER_TAGS} (AWS allows 50 "
                                  f"per resource and the bakery sets {50 - MAX_USER_TAGS})")
    return tags


def check_defaults(defaults: DefaultsIn) -> None:
    """The defaults' own one-or-the-other keys (reported once, not per role)."""
    base = given(defaults)
    for single, plural in (("instance_type", "instance_types"), ("subnet_id", "subnet_ids")):
        if single in base and plural in base:
            raise RoleProblem(f"defaults.{plural}", f"give either {single} or {plural}, not both", in_defaults=True)


def _fallback_lists(values: dict[str, Any], own: Mapping[str, Any], base: Mapping[str, Any]) -> None:
    """One or the other per level; the role's choice replaces the defaults' whole; the singular is the
    list's first item."""
    for single, plural in (("instance_type", "instance_types"), ("subnet_id", "subnet_ids")):
        if single in own and plural in own:
            raise RoleProblem(plural, f"give either {single} or {plural}, not both")
        source = own if (single in own or plural in own) else base
        if plural in source:
            items = values[plural]
            if not items:
                raise RoleProblem(plural, "must not be empty (leave the key out for the default)")
            if len(set(items)) != len(items):
                raise RoleProblem(plural, f"lists {sorted({i for i in items if items.count(i) > 1})} twice")
            values[single] = items[0]
        else:
            values[plural] = (values[single],) if values.get(single) else ()


def _chef(role_chef: ChefIn | None, default_chef: ChefIn | None) -> ChefSettings:
    """The role's ``chef`` keys over ``defaults.chef``; installer URLs default per distribution; licensed
    Chef needs a license key source, Cinc none. A role that chooses Cinc over licensed Chef in the
    defaults does not inherit the defaults' license key source (it could not unset it)."""
    own = given(role_chef)
    chef = {**given(default_chef), **own}
    for key in CHEF_REQUIRED:
        if key not in chef:
            raise RoleProblem(f"chef.{key}", CHEF_MISSING)
    dist = chef.setdefault("distribution", "cinc")
    if dist == "cinc" and "distribution" in own:
        for key in ("license_key_s3", "license_key_ssm"):
            if key not in own:
                chef.pop(key, None)
    chef.setdefault("installer_url", CHEF_INSTALLERS[dist][0])
    chef.setdefault("windows_installer_url", CHEF_INSTALLERS[dist][1])
    sources = [k for k in ("license_key_s3", "license_key_ssm") if chef.get(k)]
    if len(sources) > 1:
        raise RoleProblem("chef.license_key_ssm", "give one of license_key_s3 or license_key_ssm, not both")
    if dist == "cinc" and sources:
        raise RoleProblem(f"chef.{sources[0]}", "Cinc needs no license key: remove it, or set distribution: chef")
    if dist == "chef" and not sources and not chef.get("preinstalled"):
        raise RoleProblem(
            "chef.license_key_s3",
            "missing: Chef's downloads (and Chef 19's client) need a license key; give license_key_s3 or "
            "license_key_ssm (fetched by the instance with its role), set preinstalled: true, or use "
            "distribution: cinc (free, no license)")
    return ChefSettings(**chef)


def _run_list(name: str, role: RoleIn, kind: str) -> tuple[str, ...]:
    """The ami and launch run lists (defaults: ``recipe[roles::ROLE_ami]`` / ``_launch``); never empty."""
    lists = given(role.run_lists)
    if kind not in lists:
        return (f"recipe[roles::{name}_{kind}]",)
    if not lists[kind]:
        raise RoleProblem(f"run_lists.{kind}", "a run list must not be empty")
    return tuple(lists[kind])


__all__ = ["BootTestIn", "RoleProblem", "check_defaults", "merge_role"]
