"""Load and validate the roles catalogue (``bakery.yaml``) into typed role specs.

Every value a role can set may also be set under ``defaults``; a role's own value wins. Unknown keys
are errors, so a typo never falls back silently to a default. Every error names the file, the role
and the key; all the errors of a file are reported at once, before anything else happens (exit 2).

The keys are declared once, as pydantic models (``models``); ``bakery schema`` writes their JSON
Schema and ``reference_markdown()`` the catalogue reference (docs/reference/catalogue.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CatalogError
from .specs import (
    ACCOUNT_RE,
    AMI_ID_RE,
    BUCKET_RE,
    CHEF_INSTALLERS,
    INSTANCE_TYPE_RE,
    JOB_NAME_RE,
    MAX_USER_TAGS,
    POLICY_ARN_RE,
    REGION_RE,
    ROLE_NAME_RE,
    RUN_LIST_ITEM_RE,
    S3_URL_RE,
    SAFE_TEXT_RE,
    SG_ID_RE,
    SNS_ARN_RE,
    SSM_PARAMETER_RE,
    SUBNET_RE,
    URL_RE,
    VPC_RE,
    AmiFilter,
    BootTestSettings,
    Catalog,
    ChefSettings,
    IngressRule,
    JenkinsSettings,
    RoleSpec,
    check_role_name,
    prop_key,
)

if TYPE_CHECKING:
    from .models import DefaultsIn, JenkinsIn, RoleIn
    from .problems import Problems

DEFAULT_CATALOG = "bakery.yaml"

__all__ = [
    "ACCOUNT_RE", "AMI_ID_RE", "BUCKET_RE", "CHEF_INSTALLERS", "DEFAULT_CATALOG",
    "INSTANCE_TYPE_RE", "JOB_NAME_RE", "MAX_USER_TAGS", "POLICY_ARN_RE", "REGION_RE",
    "ROLE_NAME_RE", "RUN_LIST_ITEM_RE", "S3_URL_RE", "SAFE_TEXT_RE", "SG_ID_RE", "SNS_ARN_RE",
    "SSM_PARAMETER_RE", "SUBNET_RE", "URL_RE", "VPC_RE", "AmiFilter", "BootTestSettings", "Catalog",
    "ChefSettings", "IngressRule", "JenkinsSettings", "RoleSpec", "check_role_name", "json_schema",
    "load_catalog", "parse_catalog", "prop_key", "reference_markdown", "schema_text",
]


# PyYAML and pydantic (the models are built when first used) are imported by the functions that need
# them, not with this package: the specs and names here are also read by commands that load no
# catalogue (`bakery --help`, `status`, the reports), and a process pays for them only when it does.


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read, validate and merge the catalogue. Raises CatalogError (exit 2) on any problem."""
    # PyYAML only where a file is read (see above).
    from .yamlfile import read_yaml

    p = Path(path or DEFAULT_CATALOG)  # the CLI resolves --catalog / BAKERY_CATALOG (Settings)
    return parse_catalog(read_yaml(p), str(p))


def json_schema() -> dict[str, Any]:
    """The catalogue's JSON Schema (``bakery schema``)."""
    # pydantic only where the models are used (see above).
    from .reference import json_schema as schema

    return schema()


def schema_text() -> str:
    """``json_schema()`` as ``bakery schema`` writes it."""
    # pydantic only where the models are used (see above).
    from .reference import schema_text as text

    return text()


def reference_markdown() -> str:
    """The catalogue reference (docs/reference/catalogue.md), from the models."""
    # pydantic only where the models are used (see above).
    from .reference import reference_markdown as markdown

    return markdown()


def parse_catalog(data: Any, path: str = "<catalogue>") -> Catalog:
    # pydantic only where the models are used (see above).
    from pydantic import ValidationError

    # The models on it, and what merges them.
    from .merge import RoleProblem, check_defaults, given, merge_role
    from .models import CatalogIn, DefaultsIn
    from .problems import Problems

    if not isinstance(data, Mapping):
        raise CatalogError(path, "the catalogue must be a mapping with 'defaults', 'jenkins' and 'roles'")
    problems = Problems(path)
    roles_raw = data.get("roles")
    bad_names = _bad_role_names(roles_raw, path, problems)
    defaults: DefaultsIn | None
    jenkins: JenkinsIn | None
    try:
        top = CatalogIn.model_validate(data)
        defaults, jenkins, roles_in = top.defaults or DefaultsIn(), top.jenkins, top.roles
        failed: set[tuple[Any, ...]] = set()
    except ValidationError as exc:
        failed = problems.add_validation(exc)
        defaults, jenkins, roles_in = _valid_parts(data, failed)
    roles: dict[str, RoleSpec] = {}
    if defaults is not None:
        try:
            check_defaults(defaults)
        except RoleProblem as p:
            problems.add(p.message, key=p.key)
        for name, role in roles_in.items():
            if name in bad_names:
                continue
            try:
                roles[name] = merge_role(name, role, defaults)
            except RoleProblem as p:
                problems.add(p.message, role=name, key=p.key)
    if not problems.items:
        _no_artifact_collisions(roles, path)
    problems.raise_if_any()
    return Catalog(path=path, roles=roles, jenkins=JenkinsSettings(**given(jenkins)), raw=data)


def _bad_role_names(roles: Any, path: str, problems: Problems) -> set[str]:
    bad: set[str] = set()
    if isinstance(roles, Mapping):
        for name in roles:
            if isinstance(name, str):
                try:
                    check_role_name(name, path)
                except CatalogError as exc:
                    problems.add(str(exc).split(": ", 1)[1], role=exc.role)
                    bad.add(name)
    return bad


def _valid_parts(data: Mapping[str, Any], failed: set[tuple[Any, ...]]
                 ) -> tuple[DefaultsIn | None, JenkinsIn | None, dict[str, RoleIn]]:
    """After a failed validation: the parts that passed, so the merge still reports its own problems."""
    # pydantic only where the models are used (see above).
    from .models import DefaultsIn, RoleIn

    defaults = None if ("defaults",) in failed or () in failed else DefaultsIn.model_validate(data.get("defaults") or {})
    jenkins = None
    roles_raw = data.get("roles")
    roles: dict[str, RoleIn] = {}
    if ("roles",) not in failed and isinstance(roles_raw, Mapping):
        roles = {name: RoleIn.model_validate(raw if raw is not None else {}) for name, raw in roles_raw.items()
                 if ("roles", name) not in failed and isinstance(name, str)}
    return defaults, jenkins, roles


def _no_artifact_collisions(roles: Mapping[str, RoleSpec], path: str) -> None:
    """Refuse role names whose build artifacts would overwrite another's.

    ``artifacts/amis.json`` is the aggregate, so no role may be called ``amis``; ``amis.properties``
    upper-cases names with every non-alphanumeric as ``_``, so ``orders-api`` and ``orders_api`` (or a
    role ``web`` in region X and a role ``web-x`` ...) would write the same ``AMI_...`` key: the last wins."""
    if "amis" in roles:
        raise CatalogError(path, "role name 'amis' is reserved: artifacts/amis.json is the aggregate of "
                                 "every role's AMIs; rename the role", role="amis")
    keys: dict[str, str] = {}
    for name, role in sorted(roles.items()):
        own = [prop_key(name)] + [prop_key(name, region) for region in role.regions]
        for key in own:
            other = keys.get(key)
            if other is not None and other != name:
                raise CatalogError(path, f"roles {other!r} and {name!r} would both write {key}= in "
                                         "artifacts/amis.properties (names are upper-cased with every "
                                         "non-alphanumeric as '_'); rename one of them", role=name)
            keys[key] = name
