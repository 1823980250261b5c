"""Both Jenkinsfiles as teams set Jenkins up (issue 23), EXECUTED by the declarative harness.

No AWS here: the agent's bakery is a shell stand-in that records its calls (and, for `stage publish`,
writes the AMI lines a real publish writes), so what is asserted is Jenkins' side of things: which
builds run on which executors, what is published and archived, what is refused before anything runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.pipeline import (
    JENKINSFILE,
    RELEASE_JENKINSFILE,
    RELEASE_JOB_PARAMETERS,
    REPO,
    ROLE_JOB_PARAMETERS,
    Build,
    PipelineHarness,
    agent_tools,
)

README = REPO / "jenkins" / "README.md"
PLUGINS = ["workflow-job", "workflow-cps", "workflow-support", "workflow-basic-steps", "workflow-durable-task-step",
           "pipeline-model-definition", "git", "credentials", "credentials-binding", "plain-credentials", "junit",
           "timestamper", "cloudbees-folder", "folder-properties", "pipeline-build-step", "htmlpublisher"]
ONE_EXECUTOR = [{"name": "agent-1", "labels": ["bakery"], "executors": 1},
                {"name": "built-in", "labels": ["built-in"], "executors": 2}]
# The stand-in bakery: every call is logged; `stage publish` writes amis.properties as the real one does.
STUB = """#!/bin/sh
echo "bakery $* (ROLE=$ROLE)"
case "$1 $2" in
  "stage publish")
    mkdir -p artifacts reports
    echo "AMI_$(echo "$ROLE" | tr a-z- A-Z_)_US_EAST_1=ami-0123456789abcdef0" > artifacts/amis.properties
    echo '<testsuite name="bakery"><testcase name="publish"/></testsuite>' > reports/$ROLE-publish.xml ;;
  "stage preflight") [ -n "$FAIL_PREFLIGHT" ] && exit 1 ;;
  bake*) mkdir -p artifacts reports; echo '{"amis": {}}' > artifacts/amis.json ;;
esac
exit 0
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineHarness]:
    h = PipelineHarness(tmp_path_factory.mktemp("setups")).start()
    yield h
    h.stop()


def stub_agent(tmp_path: Path, script: str = STUB, **env: str) -> dict[str, str]:
    """An agent whose pinned bakery (BAKERY_HOME/VERSION/bin/bakery) runs ``script``."""
    return agent_tools(tmp_path / "tools", {"PATH": os.environ["PATH"], **env}, body=script)


def credentials(tmp_path: Path) -> dict[str, Any]:
    key = tmp_path / "chef.pem"
    key.write_text("PEM")
    return {"bakery-chef-client-key": {"type": "file", "path": str(key)}}


def release_build(harness: PipelineHarness, tmp_path: Path, *, parameters: dict[str, str],
                  roles: tuple[str, ...] = ("api", "worker"), **scenario: Any) -> Build:
    env = stub_agent(tmp_path)
    creds = credentials(tmp_path)
    downstream = {f"ami-bake-{role}": {"jenkinsfile": str(JENKINSFILE), "workspace": str(tmp_path / f"job-{role}"),
                                       "parameterDefinitions": {**ROLE_JOB_PARAMETERS, "ROLE": role},
                                       "agentEnv": env, "credentials": creds, "plugins": PLUGINS}
                  for role in roles}
    params = {"ROLES": " ".join(roles), "RELEASE": "2026.12.1", **parameters}
    return harness.run(RELEASE_JENKINSFILE, tmp_path / "release-ws", job="ami-bake-release",
                       parameter_definitions=RELEASE_JOB_PARAMETERS, parameters=params, agent_env=env,
                       credentials=creds, plugins=PLUGINS, downstream=downstream, **scenario)


# --- item 2: one executor ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["jobs", "bake"])
def test_release_job_finishes_on_a_bakery_agent_with_one_executor(harness, tmp_path, mode):
    """`MODE=jobs` held the agent's only executor for the whole run while each per-role build waited for
    one (pipeline-build-step waits; the top-level agent wraps the whole build): it never finished."""
    build = release_build(harness, tmp_path, parameters={"MODE": mode}, nodes=ONE_EXECUTOR)
    assert build.result == "SUCCESS", build.log
    assert "artifacts/amis.json" in build.archived
    if mode == "jobs":
        assert [t["result"]["result"] for t in build.data["triggered"]] == ["SUCCESS", "SUCCESS"]
        assert '"api": {\n            "us-east-1": "ami-0123456789abcdef0"' in build.archived_text("artifacts/amis.json")


def test_an_unknown_label_is_reported_as_a_hang_not_a_failure(harness, tmp_path):
    """An unknown label queues for ever in Jenkins: the harness says so instead of failing the build."""
    build = harness.run(JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r", "AGENT_LABEL": "gpu"},
                        agent_env=stub_agent(tmp_path), credentials=credentials(tmp_path), plugins=PLUGINS)
    assert build.result == "HANG" and "There are no nodes with the label \u2018gpu\u2019" in build.data["hang"]


# --- item 4: nothing stale is published ---------------------------------------------------------------


def stale_workspace(ws: Path, role: str = "web") -> None:
    """What an earlier build left: a passing report and AMIs of another release."""
    (ws / "reports").mkdir(parents=True)
    (ws / "artifacts").mkdir()
    (ws / "reports" / f"{role}-publish.xml").write_text(
        '<testsuite name="bakery"><testcase name="publish"/></testsuite>')
    (ws / "artifacts" / "amis.properties").write_text("AMI_WEB_US_EAST_1=ami-00000000000000old\n")
    (ws / "artifacts" / "amis.json").write_text('{"release": "old"}\n')
    old = time.time() - 3600
    for path in (ws / "reports").iterdir():
        os.utime(path, (old, old))


def test_release_job_without_release_publishes_nothing_of_the_previous_release(harness, tmp_path):
    """The RELEASE check ran before `rm -rf reports artifacts`, and current junit parses old files."""
    stale_workspace(tmp_path / "release-ws")
    build = release_build(harness, tmp_path, parameters={"RELEASE": ""})
    assert build.result == "FAILURE" and "RELEASE is empty" in build.log
    assert build.junit == [] and build.archived == [], build.log


def test_restart_from_bake_publishes_only_what_this_build_made(harness, tmp_path):
    """Restart from stage `bake` skips `prepare` (where the workspace was reset): the original build's
    report and AMIs were published as this build's."""
    ws = tmp_path / "ws"
    stale_workspace(ws)
    env = stub_agent(tmp_path, FAIL_PREFLIGHT="1")
    build = harness.run(JENKINSFILE, ws, parameters={"ROLE": "web", "RELEASE": "r2"}, agent_env=env,
                        credentials=credentials(tmp_path), plugins=PLUGINS,
                        restart={"fromStage": "bake", "envOverrides": {"BAKE_RELEASE": "r2"}})
    assert build.result == "FAILURE", build.log
    assert build.stages["prepare"] == "SKIPPED" and build.stages["preflight"] == "FAILURE"
    assert 'skipped due to this build restarting at stage "bake"' in build.log
    assert build.junit_cases == [] and "artifacts/amis.properties" not in build.archived, build.log


def test_restart_is_offered_for_top_level_stages_only(harness, tmp_path):
    build = harness.run(JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r"},
                        agent_env=stub_agent(tmp_path), credentials=credentials(tmp_path), plugins=PLUGINS,
                        restart={"fromStage": "publish"})
    assert build.result == "FAILURE" and 'Stage "publish" cannot be restarted' in build.log


@pytest.mark.parametrize("mode", ["jobs", "bake"])
def test_release_job_started_by_a_build_step_bakes_the_release_without_its_whitespace(harness, tmp_path, mode):
    """A deploy pipeline's `build` step hands RELEASE over untrimmed (a `readFile('VERSION')` ends in a
    newline); the form's trim does not apply. The release check passed, but bake mode then gave the bakery
    `--release " 2026.12.1\n"` (refused: not a release name) and jobs mode wrote it into amis.json."""
    build = release_build(harness, tmp_path, parameters={"MODE": mode, "RELEASE": " 2026.12.1\n"},
                          untrimmed_parameters=True)
    assert build.result == "SUCCESS", build.log
    if mode == "jobs":
        assert '"release": "2026.12.1"' in build.archived_text("artifacts/amis.json")
        assert [t["parameters"]["RELEASE"] for t in build.data["triggered"]] == ["2026.12.1", "2026.12.1"]
    else:
        assert "bakery bake --role api --role worker --release 2026.12.1 --jobs 4 (ROLE=)" in build.log, build.log


# --- item 6: parameters anyone with Build permission sets ------------------------------------------------


@pytest.mark.parametrize("prefix", ["/prod/deploy-", "../other-", "ami bake-", "ami-bake-$(id)"])
def test_release_job_refuses_a_job_prefix_that_reaches_other_jobs(harness, tmp_path, prefix):
    build = release_build(harness, tmp_path, parameters={"JOB_PREFIX": prefix})
    assert build.result == "FAILURE" and "JOB_PREFIX" in build.log, build.log
    assert build.data["triggered"] == []


@pytest.mark.parametrize("label", ["built-in", "master", "Built-In", "bakery||built-in", "!bakery", "a b"])
@pytest.mark.parametrize("jenkinsfile", ["role", "release"])
def test_agent_label_cannot_send_a_bake_to_the_controller(harness, tmp_path, label, jenkinsfile):
    nodes = [{"name": "agent-1", "labels": ["bakery"], "executors": 2},
             {"name": "built-in", "labels": ["built-in", "master", "Built-In", "bakery||built-in", "!bakery", "a b"],
              "executors": 2}]
    if jenkinsfile == "release":
        build = release_build(harness, tmp_path, parameters={"AGENT_LABEL": label, "MODE": "bake"}, nodes=nodes)
    else:
        build = harness.run(JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r", "AGENT_LABEL": label},
                            agent_env=stub_agent(tmp_path), credentials=credentials(tmp_path), plugins=PLUGINS,
                            nodes=nodes)
    assert build.result == "FAILURE" and "AGENT_LABEL" in build.log, build.log
    assert "Running on built-in" not in build.log and "bakery " not in build.log


def test_built_in_node_allowed_when_the_catalogue_allows_it(harness, tmp_path):
    """jenkins.allow_built_in_node: generate-jobs then defines BUILT_IN_NODE_ALLOWED (its presence is what
    counts: a build's parameters cannot add a definition, SECURITY-170)."""
    definitions = {**ROLE_JOB_PARAMETERS, "BUILT_IN_NODE_ALLOWED": "true"}
    build = harness.run(JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r",
                                                                  "AGENT_LABEL": "built-in"},
                        parameter_definitions=definitions, agent_env=stub_agent(tmp_path),
                        credentials=credentials(tmp_path), plugins=PLUGINS)
    assert build.result == "SUCCESS", build.log
    assert "Running on built-in" in build.log
    smuggled = harness.run(JENKINSFILE, tmp_path / "ws2", parameters={"ROLE": "web", "RELEASE": "r",
                                                                      "AGENT_LABEL": "built-in",
                                                                      "BUILT_IN_NODE_ALLOWED": "true"},
                           agent_env=stub_agent(tmp_path), credentials=credentials(tmp_path), plugins=PLUGINS)
    assert smuggled.result == "FAILURE" and "Running on built-in" not in smuggled.log


# --- item 8: no checks on the bakery repository --------------------------------------------------------


def test_junit_posts_no_check_on_the_bakery_repository(harness, tmp_path):
    build = harness.run(JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r"},
                        agent_env=stub_agent(tmp_path), credentials=credentials(tmp_path), plugins=PLUGINS,
                        checks_publisher=True)
    assert build.result == "SUCCESS", build.log
    assert build.junit_cases and build.data["checks"] == []
    release = release_build(harness, tmp_path, parameters={"MODE": "jobs"}, checks_publisher=True)
    assert release.result == "SUCCESS" and release.data["checks"] == []
    assert all(t["result"]["checks"] == [] for t in release.data["triggered"])


# --- the second abort reaches `bakery cleanup` (item 5, Jenkins' side) -----------------------------------


def test_a_second_abort_sends_sigterm_to_the_cleanup_in_post(harness, tmp_path):
    """Jenkins stops the step running when the second abort comes, in `post` too, by the build's process
    cookie: `bakery cleanup` gets SIGTERM like the stage did."""
    events = tmp_path / "events"
    events.mkdir()
    script = f"""#!/bin/sh
case "$1" in
  stage) touch {events}/stage-running; sleep 60 & wait ;;
  cleanup) trap 'echo "cleanup got SIGTERM"; exit 143' TERM; touch {events}/cleanup-running; sleep 60 & wait ;;
esac
"""
    first, second = tmp_path / "abort-1", tmp_path / "abort-2"
    result: dict[str, Build] = {}
    runner = threading.Thread(target=lambda: result.setdefault("build", harness.run(
        JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r"}, agent_env=stub_agent(tmp_path, script),
        credentials=credentials(tmp_path), plugins=PLUGINS, stop_grace_seconds=5,
        abort={"whenFileExists": str(first), "secondWhenFileExists": str(second)})))
    runner.start()
    for event, trigger in (("stage-running", first), ("cleanup-running", second)):
        while runner.is_alive() and not (events / event).exists():
            time.sleep(0.05)
        trigger.touch()
    runner.join(120)
    build = result["build"]
    assert build.result == "ABORTED", build.log
    assert "cleanup got SIGTERM" in build.log.split("always (post of pipeline)")[1]


# --- the script-security sandbox --------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "signature"), [
    ("new File('/etc/passwd').text", "new java.io.File java.lang.String"),
    ("System.getenv('HOME')", "staticMethod java.lang.System getenv"),
    ("'id'.execute().text", "execute"),
    ("Thread.currentThread().name", "staticMethod java.lang.Thread currentThread"),
    ("currentBuild.rawBuild.toString()", "getRawBuild"),
    ("params.getClass().name", "getClass"),
])
def test_the_sandbox_refuses_what_script_security_refuses_when_it_is_reached(harness, tmp_path, code, signature):
    script = tmp_path / "Jenkinsfile"
    script.write_text("pipeline {\n  agent any\n  stages {\n    stage('x') {\n      steps {\n        echo 'before'\n"
                      f"        echo(({code}).toString())\n        echo 'after'\n      }}\n    }}\n  }}\n}}\n")
    build = harness.run(script, tmp_path / "ws", agent_env={}, expect_groovy_errors=True,
                        upstream_builds=[{"fullProjectName": "d", "number": 1, "kind": "pipeline"}])
    assert build.result == "FAILURE", build.log
    refused = [line for line in build.log.splitlines() if "Scripts not permitted to use" in line]
    assert refused and signature in refused[0], build.log
    assert "before" in build.log and "after" not in build.log  # refused when reached, as at run time


def test_the_jenkinsfiles_use_only_what_the_sandbox_allows(harness, tmp_path):
    """JsonOutput.prettyPrint(String) and toJson(Map) are on script-security's generic whitelist."""
    build = release_build(harness, tmp_path, parameters={"MODE": "jobs"})
    assert build.result == "SUCCESS" and not build.data["groovyErrors"], build.log


# --- CPS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "translated"), [
    ("[3, 1, 2].sort { a, b -> a <=> b }", False),  # a comparator: ClosureComparator, not CPS-translated
    ("[3, 1, 2].toSorted { a, b -> b <=> a }", False),
    ("[1, 2, 1].unique { a, b -> a <=> b }", False),
    ("[3, 1, 2].sort { i -> -i }", True),  # a key: CpsDefaultGroovyMethods translates it
    ("[3, 1, 2].findAll { i -> i > 1 }", True),
])
def test_comparator_closures_are_not_cps_translated(harness, tmp_path, code, translated):
    script = tmp_path / "Jenkinsfile"
    script.write_text("pipeline {\n  agent any\n  stages {\n    stage('x') {\n      steps {\n"
                      f"        echo(({code}).toString())\n      }}\n    }}\n  }}\n}}\n")
    build = harness.run(script, tmp_path / "ws", agent_env={}, expect_groovy_errors=not translated)
    assert (build.result == "SUCCESS") is translated, build.log
    if not translated:
        assert "wound up catching org.jenkinsci.plugins.workflow.cps.CpsClosure2.call" in build.log
