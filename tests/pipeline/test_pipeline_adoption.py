"""Adoption without forking (issue 22), EXECUTED by the declarative harness: the job checks out the user's
own repository (the catalogue in it, given to every bakery call as --catalog), runs the bakery installed
once on the agent in the version the job pins, checks that version first, and installs nothing.

No AWS here: the agent's bakery is a stand-in that records its calls (support.pipeline.install_bakery),
and its python3 refuses `-m venv`/`-m pip`, so a build that tried to install the bakery fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.pipeline import (
    JENKINSFILE,
    RELEASE_JENKINSFILE,
    RELEASE_JOB_PARAMETERS,
    Build,
    PipelineHarness,
    agent_tools,
    restart_of,
    user_repository,
)

from bakery_lib import __version__

PLUGINS = ["workflow-job", "workflow-cps", "workflow-support", "workflow-basic-steps", "workflow-durable-task-step",
           "pipeline-model-definition", "git", "credentials", "credentials-binding", "plain-credentials", "junit",
           "timestamper", "cloudbees-folder", "folder-properties", "pipeline-build-step", "htmlpublisher"]
# Every call is logged with the catalogue it was given; `stage publish` writes what a real publish writes.
STUB = """#!/bin/sh
echo "called: bakery $* (catalog=${BAKERY_STUB_CATALOG:-none} bin=$0)"
case "$1 $2" in
  "stage publish")
    mkdir -p artifacts reports
    echo "AMI_WEB_US_EAST_1=ami-0123456789abcdef0" > artifacts/amis.properties
    echo '<testsuite name="bakery"><testcase name="publish"/></testsuite>' > reports/web-publish.xml ;;
  "stage preflight") [ -n "$FAIL_PREFLIGHT" ] && exit 1 ;;
  bake*) mkdir -p artifacts reports; echo '{"amis": {}}' > artifacts/amis.json ;;
esac
exit 0
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineHarness]:
    h = PipelineHarness(tmp_path_factory.mktemp("adoption")).start()
    yield h
    h.stop()


def credentials(tmp_path: Path) -> dict[str, Any]:
    key = tmp_path / "chef.pem"
    key.write_text("PEM")
    return {"bakery-chef-client-key": {"type": "file", "path": str(key)}}


def role_build(harness: PipelineHarness, tmp_path: Path, env: dict[str, str], **kw: Any) -> Build:
    params = {"ROLE": "web", "RELEASE": "2026.12.1", **kw.pop("parameters", {})}
    return harness.run(JENKINSFILE, kw.pop("ws", tmp_path / "ws"), parameters=params, agent_env=env,
                       credentials=credentials(tmp_path), plugins=PLUGINS, **kw)


def bakery_calls(build: Build) -> list[str]:
    return [line for line in build.log.splitlines() if line.startswith("called: bakery ")]


def test_a_build_runs_the_pinned_bakery_of_the_agent_and_installs_nothing(harness, tmp_path):
    """The old `prepare` ran `python3 -m venv .bakery-venv && pip install .` on every build: on this agent
    (python3 refuses to install, as an agent without a package index would fail) the build failed."""
    env = agent_tools(tmp_path / "tools", {"PATH": os.environ["PATH"]}, body=STUB)
    build = role_build(harness, tmp_path, env)
    assert build.result == "SUCCESS", build.log
    pinned = f"{env['BAKERY_HOME']}/{__version__}/bin/bakery"
    calls = bakery_calls(build)
    assert calls and all(f"bin={pinned}-body" in c and "(catalog=bakery.yaml " in c for c in calls), calls
    assert "a build must not install anything" not in build.log and not (tmp_path / "ws" / ".bakery-venv").exists()


def test_the_catalogue_comes_from_the_users_repository(harness, tmp_path):
    """CATALOG (jenkins.catalog_path) names the catalogue in the checkout of the job's own repository."""
    repo = user_repository(tmp_path / "acme-ops", "roles: {}\n", path="ops/amis/bakery.yaml")
    env = agent_tools(tmp_path / "tools", {"PATH": os.environ["PATH"]}, body=STUB)
    build = role_build(harness, tmp_path, env, scm=repo, parameters={"CATALOG": "ops/amis/bakery.yaml"})
    assert build.result == "SUCCESS", build.log
    assert "Checkout SCM" in build.log and (tmp_path / "ws" / "ops" / "amis" / "bakery.yaml").exists()
    assert all("(catalog=ops/amis/bakery.yaml " in c for c in bakery_calls(build)), build.log

    missing = role_build(harness, tmp_path, env, ws=tmp_path / "ws2", scm=repo)  # default: bakery.yaml
    assert missing.result == "FAILURE" and missing.stages["prepare"] == "FAILURE"
    assert "CATALOG 'bakery.yaml': no such file in the checkout of this job's repository" in missing.log
    assert bakery_calls(missing) == []


@pytest.mark.parametrize("catalog", ["/etc/bakery.yaml", "../other/bakery.yaml", "ops/../../x.yaml", "a b.yaml"])
def test_a_catalog_outside_the_repository_is_refused(harness, tmp_path, catalog):
    env = agent_tools(tmp_path / "tools", {"PATH": os.environ["PATH"]}, body=STUB)
    build = role_build(harness, tmp_path, env, parameters={"CATALOG": catalog})
    assert build.result == "FAILURE" and f"CATALOG '{catalog}' is not a path in this job's repository" in build.log
    assert bakery_calls(build) == []


def test_another_version_on_the_agent_stops_the_build_naming_both(harness, tmp_path):
    """Only 0.0.9 is installed (under BAKERY_HOME, and as the bakery on PATH): the job pins __version__."""
    tools = tmp_path / "tools"
    env = agent_tools(tools, {"PATH": os.environ["PATH"]}, body=STUB, version="0.0.9")
    build = role_build(harness, tmp_path, env)
    assert build.result == "FAILURE" and build.stages["prepare"] == "FAILURE"
    assert build.stages["preflight"] == "SKIPPED" and bakery_calls(build) == []
    assert "script returned exit code 2" in build.log
    assert f"bakery {__version__} is not installed on this agent" in build.log
    assert f"(installed in {env['BAKERY_HOME']}: 0.0.9 )" in build.log

    # the bakery on PATH (an agent image) is checked the same way
    on_path = tmp_path / "image-bin"
    on_path.mkdir()
    (on_path / "bakery").symlink_to(Path(env["BAKERY_HOME"]) / "0.0.9" / "bin" / "bakery")
    image = {**env, "PATH": f"{on_path}:{env['PATH']}"}
    build = role_build(harness, tmp_path, image, ws=tmp_path / "ws2")
    assert build.result == "FAILURE" and "script returned exit code 2" in build.log
    assert (f"this job pins bakery {__version__} (jenkins.bakery_version) but the agent's {on_path}/bakery "
            "is bakery 0.0.9") in build.log
    assert bakery_calls(build) == []


def test_a_bad_bakery_version_parameter_is_refused(harness, tmp_path):
    env = agent_tools(tmp_path / "tools", {"PATH": os.environ["PATH"]}, body=STUB)
    build = role_build(harness, tmp_path, env, parameters={"BAKERY_VERSION": "../../bin"})
    assert build.result == "FAILURE" and "BAKERY_VERSION '../../bin' is not a bakery version" in build.log


def test_release_job_bake_mode_checks_out_the_repository_and_runs_the_pinned_bakery(harness, tmp_path):
    """`node` makes no checkout (only declarative's `agent` does): the release job's bake mode had no
    catalogue in its workspace, and pip-installed the bakery."""
    repo = user_repository(tmp_path / "acme-ops", "roles: {}\n")
    env = agent_tools(tmp_path / "tools", {"PATH": os.environ["PATH"]}, body=STUB)
    build = harness.run(RELEASE_JENKINSFILE, tmp_path / "release-ws", job="ami-bake-release",
                        parameter_definitions=RELEASE_JOB_PARAMETERS, agent_env=env, scm=repo,
                        parameters={"ROLES": "web api", "RELEASE": "2026.12.1", "MODE": "bake"},
                        credentials=credentials(tmp_path), plugins=PLUGINS)
    assert build.result == "SUCCESS", build.log
    assert bakery_calls(build)[0].startswith("called: bakery bake --role web --role api --release 2026.12.1 --jobs 4 "
                                             "(catalog=bakery.yaml "), build.log
    assert "artifacts/amis.json" in build.archived


def test_restart_from_bake_on_another_agent_checks_that_agents_bakery_and_hands_over_no_old_amis(harness, tmp_path):
    """A restart carries the original build's env.X assignments (workflow-cps EnvActionImpl.Copier):
    BAKED_AMIS of the original success reached a release job through the restarted build's
    buildVariables, and BAKERY_BIN named the original agent's bakery."""
    first_agent = agent_tools(tmp_path / "agent-1", {"PATH": os.environ["PATH"]}, body=STUB)
    original = role_build(harness, tmp_path, first_agent)
    assert original.result == "SUCCESS" and original.data["buildVariables"]["BAKED_AMIS"].startswith("AMI_WEB")

    second_agent = agent_tools(tmp_path / "agent-2", {"PATH": os.environ["PATH"], "FAIL_PREFLIGHT": "1"},
                               body=STUB)
    restarted = role_build(harness, tmp_path, second_agent, ws=tmp_path / "ws-agent-2", number=2,
                           restart=restart_of(original, "bake"))
    assert restarted.result == "FAILURE" and restarted.stages["preflight"] == "FAILURE", restarted.log
    assert restarted.stages["prepare"] == "SKIPPED"
    variables = restarted.data["buildVariables"]
    assert not variables.get("BAKED_AMIS"), variables
    assert variables["BAKE_RELEASE"] == "2026.12.1"  # carried over, not decided again
    assert variables["BAKERY_BIN"] == f"{second_agent['BAKERY_HOME']}/{__version__}/bin/bakery"
    assert all(f"bin={second_agent['BAKERY_HOME']}" in c for c in bakery_calls(restarted)), restarted.log
    # the artifacts the restart copied from the original are the original's; this build adds none
    assert restarted.archived == original.archived
