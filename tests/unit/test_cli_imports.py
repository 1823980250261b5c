"""What a command's process loads: only what that command uses.

A Jenkins build runs one ``bakery`` process per stage, and ``generate-jobs --output-dir`` is measured
against Jenkins Job Builder (bench/bench_jobs.py): start-up is paid on every call. Each case runs the
console entry point in a fresh interpreter and reads ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from devstack.samples import offline_catalog_data

ROOT = Path(__file__).resolve().parents[2]

# What no command needs before it talks to AWS, Chef or Jenkins.
SERVICE_CLIENTS = ("boto3", "botocore", "chef", "jenkins", "requests")
STAGE_MODULES = tuple(f"bakery_lib.stages.{m}" for m in (
    "preflight", "security_groups", "iam_role", "launch", "bootstrap", "stop", "image", "wait_image",
    "terminate", "chef_cleanup", "boot_test", "publish"))

_PROBE = textwrap.dedent("""\
    import contextlib, io, json, sys
    import bakery_lib.cli as cli
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            code = getattr(cli, sys.argv[1])(sys.argv[2:])
        except SystemExit as exc:
            code = exc.code
    print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
""")


def loaded_by(entry: str, *args: str, cwd: Path) -> tuple[int, str, set[str]]:
    """(exit code, standard output, modules loaded) of ``entry(args)`` in a new interpreter."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, entry, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return result["code"], result["out"], set(result["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` (packages: their submodules count) ``modules`` holds."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump(offline_catalog_data(["web", "worker"])), encoding="utf-8")
    return path


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["stage", "--help"]])
def test_bakery_help_and_version_load_no_client_no_stage_no_model(args: list[str], tmp_path: Path) -> None:
    code, out, modules = loaded_by("bakery_main", *args, cwd=tmp_path)
    assert code == 0
    assert "bakery" in out
    assert loaded(modules, SERVICE_CLIENTS + STAGE_MODULES + ("pydantic", "jinja2", "yaml")) == []


def test_bakery_status_reads_the_workspace_without_boto3_or_the_models(catalogue: Path, tmp_path: Path) -> None:
    code, out, modules = loaded_by("bakery_main", "--catalog", str(catalogue), "status", cwd=tmp_path)
    assert (code, out) == (0, f"no bakes in {tmp_path}\n")
    assert loaded(modules, SERVICE_CLIENTS + STAGE_MODULES + ("pydantic", "jinja2")) == []


def test_generate_jobs_output_dir_renders_without_boto3_python_jenkins_or_the_stages(
        catalogue: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "jobs"
    code, out, modules = loaded_by("generate_jobs_main", "--catalog", str(catalogue), "--output-dir", str(out_dir),
                                   cwd=tmp_path)
    assert code == 0
    assert f"wrote 2 config.xml files under {out_dir}" in out
    assert sorted(p.parent.name for p in out_dir.rglob("config.xml")) == ["ami-bake-web", "ami-bake-worker"]
    assert loaded(modules, SERVICE_CLIENTS + STAGE_MODULES + ("bakery_lib.aws", "junit_xml")) == []


def new_modules(probe: str, tmp_path: Path) -> set[str]:
    """The modules ``probe`` (Python code, run after ``from bakery_lib import stages``) loads."""
    code = ("import json, sys; from bakery_lib import stages; before = set(sys.modules)\n" + probe +
            "\nprint(json.dumps(sorted(set(sys.modules) - before)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_a_stage_module_is_imported_when_its_stage_is_asked_for(tmp_path: Path) -> None:
    assert loaded(new_modules("stages.MODULES['terminate']", tmp_path), STAGE_MODULES) == [
        "bakery_lib.stages.terminate"]


def test_a_teardown_loads_every_stage_but_renders_nothing(tmp_path: Path) -> None:
    # `bakery cleanup` and the publish stage use the user-data module's names, not its templates.
    new = new_modules("for name in stages.ORDER: stages.MODULES[name]", tmp_path)
    assert loaded(new, STAGE_MODULES) == sorted(STAGE_MODULES)
    assert loaded(new, ("jinja2", "chef", "jenkins", "requests")) == []


def test_the_chef_client_loads_pychef_without_setuptools_pkg_resources(tmp_path: Path) -> None:
    # pychef imports pkg_resources for parse_version alone; the real one scans every installed package.
    new = new_modules("from bakery_lib import chef\nimport chef.api\n"
                      "assert chef.api.pkg_resources.parse_version('11.1.7') > chef.api.pkg_resources.parse_version('0.10')"
                      " > chef.api.pkg_resources.parse_version('0.9')", tmp_path)
    assert loaded(new, ("chef",)) == ["chef"]
    assert loaded(new, ("pkg_resources", "setuptools")) == []
