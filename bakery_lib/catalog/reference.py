"""The catalogue described from its models: the JSON Schema (``bakery schema``, for editors) and the
reference page ``docs/reference/catalogue.md`` (checked against this rendering by the tests).

Types and descriptions come from the models; defaults from the specs a loaded catalogue holds, so
neither can say something the loader does not do.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pydantic import BaseModel

from .models import (
    AmiFilterIn,
    BootTestIn,
    CatalogIn,
    ChefIn,
    DefaultsIn,
    IngressIn,
    JenkinsIn,
    RoleIn,
    RoleKeys,
    RunListsIn,
)
from .specs import BootTestSettings, ChefSettings, IngressRule, JenkinsSettings, RoleSpec

SCHEMA_ID = "https://ami-bakery.invalid/schema/bakery.schema.json"
# Where each model's keys land once merged: the spec whose field defaults are the keys' defaults.
_SPEC_OF: dict[type[BaseModel], Any] = {RoleKeys: RoleSpec, DefaultsIn: RoleSpec, RoleIn: RoleSpec,
                                        ChefIn: ChefSettings, BootTestIn: BootTestSettings,
                                        JenkinsIn: JenkinsSettings, IngressIn: IngressRule}
# Defaults the merge or a model computes rather than a spec field holds.
_COMPUTED: dict[tuple[type, str], Any] = {
    (RoleKeys, "instance_type"): "t3.medium",
    (AmiFilterIn, "owners"): ["self"],
    (IngressIn, "protocol"): "tcp",
}
# Defaults that depend on other keys: said in the reference, not in the schema.
_SAID: dict[tuple[type, str], str] = {
    (ChefIn, "installer_url"): "the distribution's",
    (ChefIn, "windows_installer_url"): "the distribution's",
    (RunListsIn, "ami"): "`[recipe[roles::ROLE_ami]]`",
    (RunListsIn, "launch"): "`[recipe[roles::ROLE_launch]]`",
}
_SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Top level", CatalogIn, ""),
    ("Role keys (also under `defaults`)", RoleKeys, "roles.ROLE / defaults"),
    ("Role-only keys", RoleIn, "roles.ROLE"),
    ("`chef`", ChefIn, "defaults.chef / roles.ROLE.chef"),
    ("`boot_test`", BootTestIn, "defaults.boot_test / roles.ROLE.boot_test"),
    ("`run_lists`", RunListsIn, "roles.ROLE.run_lists"),
    ("`base_ami` as a filter", AmiFilterIn, "roles.ROLE.base_ami"),
    ("`ingress` rules", IngressIn, "roles.ROLE.ingress[]"),
    ("`jenkins`", JenkinsIn, "jenkins"),
]


def json_schema() -> dict[str, Any]:
    """The catalogue's JSON Schema (draft 2020-12), with the merged defaults filled in."""
    schema = CatalogIn.model_json_schema()
    for name, sub in [("CatalogIn", schema), *schema.get("$defs", {}).items()]:
        model = _model_named(name)
        for key, prop in sub.get("properties", {}).items():
            prop.pop("default", None)
            default = _default(model, key) if model is not None else None
            if default is not None:
                prop["default"] = {} if default == [] and prop.get("type") == "object" else default
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "AMI Bakery roles catalogue (bakery.yaml)", **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def _model_named(name: str) -> type[BaseModel] | None:
    models: list[type[BaseModel]] = [CatalogIn, *_SPEC_OF, RunListsIn, AmiFilterIn]
    for model in models:
        if model.__name__ == name:
            return model
    return None


def _default(model: type[BaseModel], key: str) -> Any:
    for owner in model.__mro__:
        if (owner, key) in _COMPUTED:
            return _COMPUTED[(owner, key)]
    spec = _SPEC_OF.get(model)
    if spec is None:
        return None
    fields = {f.name: f for f in dataclasses.fields(spec)}
    f = fields.get(key)
    if f is None or f.default is dataclasses.MISSING:
        return None
    value = f.default
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value):
        return None
    return value


def _type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return f"mapping ({_section_of(prop['$ref'].rsplit('/', 1)[-1])})"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop or "oneOf" in prop:
        options = prop.get("anyOf") or prop.get("oneOf") or []
        if any(o.get("description") == "minutes" for o in options):
            return "duration: minutes, or like `90s`, `45m`, `2h` (at most 48 h)"
        return " or ".join(_type_text(o, defs) for o in options)
    kind = prop.get("type")
    if kind == "array":
        limit = f", at most {prop['maxItems']}" if "maxItems" in prop else ""
        return f"list of {_type_text(prop.get('items', {}), defs)}{limit}"
    if kind == "integer":
        return f"integer {prop.get('minimum', '')}..{prop.get('maximum', '')}"
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        return "mapping"
    if kind == "string":
        if prop.get("format") == "ipv4-network":
            return "IPv4 network (CIDR, no host bits)"
        return f"string matching {_code(prop['pattern'])}" if "pattern" in prop else "string"
    return "any"


def _section_of(def_name: str) -> str:
    for title, model, _where in _SECTIONS:
        if model.__name__ == def_name or (def_name == "DefaultsIn" and model is RoleKeys):
            return "see " + title.replace("`", "")
    return def_name


def _show_default(model: type[BaseModel], key: str, prop: dict[str, Any]) -> str:
    if key in model.model_fields and model.model_fields[key].is_required():
        return "required"
    if (model, key) in _SAID:
        return _SAID[(model, key)]
    value = _default(model, key)
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool) and "anyOf" in prop:
        return f"{value // 3600}h" if value % 3600 == 0 else f"{value // 60}m"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == []:
        return "`{}`" if prop.get("type") == "object" else "`[]`"
    if value == "":
        return "empty"
    return _code(str(value))


def _code(text: str) -> str:
    """``text`` as a Markdown code span (a pattern may hold a backtick itself)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def reference_markdown() -> str:
    """The catalogue reference page, every key with its type, default and description."""
    lines = [
        "# Catalogue reference (`bakery.yaml`)",
        "",
        "<!-- Generated by docs/generate.py from `bakery_lib.catalog.reference_markdown()` (the catalogue's",
        "     models); do not edit by hand: run `.venv/bin/python docs/generate.py`. -->",
        "",
        "Every key a catalogue may hold. Unknown keys are refused (with a did-you-mean hint); a role's own",
        "value wins over `defaults`; `tags`, `chef` and `boot_test` merge per key. Durations are minutes",
        "(an integer) or a string like `90s`, `45m`, `2h`. `bakery schema` writes the same as JSON Schema.",
    ]
    for title, model, where in _SECTIONS:
        schema = model.model_json_schema()
        props, defs = schema.get("properties", {}), schema.get("$defs", {})
        own = [k for k in model.model_fields if model is not RoleIn or k not in RoleKeys.model_fields]
        if model is RoleIn:
            own = [k for k in own if k not in ("chef", "boot_test")] + ["chef", "boot_test"]
        lines += ["", f"## {title}", ""]
        if where:
            lines += [f"Under `{where}`.", ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for key in own:
            prop = props.get(key, {})
            desc = model.model_fields[key].description or ""
            cells = [_code(key), _type_text(prop, defs), _show_default(model, key, prop), desc]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
