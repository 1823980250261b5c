"""JUnit reports (junit-xml) and the build artifacts Jenkins archives.

- ``reports/ROLE-STAGE.xml``: testsuite ``bakery.ROLE``, one testcase ``STAGE``, ``<failure>`` on failure.
- ``artifacts/ROLE.json``, ``artifacts/amis.json``, ``artifacts/amis.properties`` (see DESIGN.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from junit_xml import TestCase, TestSuite, to_xml_report_string

from .catalog import prop_key
from .fsutil import atomic_write_json, atomic_write_text
from .state import BakeState, Workspace


def write_junit(
    ws: Workspace,
    role: str,
    stage: str,
    duration: float,
    *,
    failure: str | None = None,
    output: str = "",
    skipped: str | None = None,
    failure_type: str | None = None,
) -> Path:
    case = TestCase(name=stage, classname=f"bakery.{role}", elapsed_sec=round(duration, 3), stdout=output or None)
    if failure is not None:
        case.add_failure_info(message=failure.splitlines()[0][:500] if failure else "failed", output=failure,
                              failure_type=failure_type)
    elif skipped is not None:
        case.add_skipped_info(message=skipped)
    suite = TestSuite(f"bakery.{role}", [case])
    path = ws.reports_dir / f"{role}-{stage}.xml"
    atomic_write_text(path, to_xml_report_string([suite], prettyprint=True, encoding="utf-8"))
    return path


def role_artifact(state: BakeState) -> dict[str, Any]:
    return {
        "role": state.role,
        "release": state.release,
        "bake_id": state.bake_id,
        "base_ami": state.base_ami,
        "region": state.region,
        "amis": dict(state.amis),
        "image_name": state.image_name,
        "bake_key": state.bake_key,
        "reused": state.reused,
        # passed | disabled (the role opts out: boot_test.enabled false, the AMI was never booted before use)
        "boot_test": state.boot_test,
        # Where the bake instance ran (launch's capacity fallback over instance_types x subnet_ids).
        "instance_type": state.instance_type,
        "subnet_id": state.subnet_id,
    }


def write_artifacts(ws: Workspace, state: BakeState) -> list[Path]:
    """Write this role's artifact and refresh the workspace-wide ``amis.json``/``amis.properties``."""
    ws.artifacts_dir.mkdir(parents=True, exist_ok=True)
    role_path = ws.artifacts_dir / f"{state.role}.json"
    atomic_write_json(role_path, role_artifact(state))
    return [role_path, *write_summary_artifacts(ws, primary_regions={state.role: state.region})]


def write_summary_artifacts(ws: Workspace, primary_regions: dict[str, str] | None = None) -> list[Path]:
    roles: dict[str, dict[str, Any]] = {}
    for path in sorted(ws.artifacts_dir.glob("*.json")):
        if path.name == "amis.json":
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "role" in data and "amis" in data:
            roles[data["role"]] = data
    releases = {d.get("release") for d in roles.values()}
    summary = {
        # The one release every role here was baked for; null when they differ (``releases`` tells
        # which role has which): a single name would be a lie for the other roles' AMIs.
        "release": releases.pop() if len(releases) == 1 else None,
        "releases": {r: d.get("release") for r, d in sorted(roles.items())},
        "amis": {r: d["amis"] for r, d in sorted(roles.items())},
    }
    amis_json = ws.artifacts_dir / "amis.json"
    atomic_write_json(amis_json, summary)
    lines: dict[str, str] = {}
    for role, data in sorted(roles.items()):
        amis = data["amis"]
        region = (primary_regions or {}).get(role) or data.get("region") or next(iter(amis), None)
        own = ([(prop_key(role), amis[region])] if region in amis else []) + [
            (prop_key(role, reg), ami) for reg, ami in sorted(amis.items())]
        for key, ami in own:
            # The catalogue refuses names that collide; artifacts left by an older catalogue may still:
            # the first keeps its key rather than the last silently winning (readProperties keeps the last).
            lines.setdefault(key, f"{key}={ami}")
    props = ws.artifacts_dir / "amis.properties"
    atomic_write_text(props, "".join(line + "\n" for line in lines.values()))
    return [amis_json, props]
