"""jenkins/Jenkinsfile and jenkins/release.Jenkinsfile EXECUTED by the declarative harness (tests/pipeline).

Each test runs a Jenkinsfile as Jenkins would (one Groovy JVM for the whole module) against the
devstack: real `sh`, the real bakery CLI, moto and goiardi, the instance runner playing EC2. What is
asserted is what a user sees in Jenkins: the build result, each stage's status, the JUnit results
published, the artifacts archived, the description, and the AMI in the AWS API.
"""

from __future__ import annotations

import json
import os
import re
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
from support.proxy import Hold

from bakery_lib import __version__
from bakery_lib.stages import ORDER
from bakery_lib.state import Workspace

BAKE_STAGES = list(ORDER)  # the bakery's stages, in order: one Jenkinsfile stage each
README = REPO / "jenkins" / "README.md"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineHarness]:
    h = PipelineHarness(tmp_path_factory.mktemp("harness")).start()
    yield h
    h.stop()


def readme_plugins() -> list[str]:
    """The plugin ids jenkins/README.md lists (the `| plugin | ...` table)."""
    table = README.read_text().split("<!-- plugins -->")[1]
    return re.findall(r"^\s*\| `([a-z0-9-]+)` \|", table, flags=re.MULTILINE)


class Agent:
    """A bake agent: its environment (devstack endpoints, no Chef key: that comes from the credential)."""

    def __init__(self, devstack: Any, tmp_path: Path, roles: dict[str, dict[str, Any]]):
        # The instance runner's sandbox has a chef-client on PATH (its stub): nothing to install.
        # The job's repository (the user's own) holds the catalogue; the job gives its path to --catalog.
        self.repo = tmp_path / "repo"
        self.catalog = devstack.write_catalog(self.repo / "bakery.yaml", roles=roles,
                                              chef={"distribution": "chef", "preinstalled": True})
        env = {k: v for k, v in devstack.env.items() if k not in ("CHEF_CLIENT_KEY", "BAKERY_CATALOG")}
        env.update(BAKERY_POLL_INTERVAL="0.2", HOME=str(tmp_path), PATH=os.environ["PATH"], LANG="C.UTF-8")
        self.env = agent_tools(tmp_path / "agent-tools", env)
        self.credentials = {"bakery-chef-client-key": {"type": "file", "path": devstack.env["CHEF_CLIENT_KEY"],
                                                       "fileName": "bakery.pem"}}


def bake(harness: PipelineHarness, agent: Agent, ws: Path, **kw: Any) -> Build:
    params = {"ROLE": "web", "AGENT_LABEL": "bakery", **kw.pop("parameters", {})}
    return harness.run(JENKINSFILE, ws, parameters=params, agent_env=agent.env, credentials=agent.credentials,
                       plugins=readme_plugins(), scm=agent.repo, **kw)


@pytest.mark.e2e
def test_role_baked_end_to_end_through_the_jenkinsfile(harness, devstack, instance_runner, tmp_path):
    agent = Agent(devstack, tmp_path, {"web": {"platform": "linux"}})
    build = bake(harness, agent, tmp_path / "ws", parameters={"RELEASE": "2026.11.1"})

    assert build.result == "SUCCESS", build.log
    assert [s for s in build.stages if s in BAKE_STAGES] == BAKE_STAGES
    assert all(status == "SUCCESS" for status in build.stages.values()), build.stages
    cases = {c["name"]: c for c in build.junit_cases}
    assert set(BAKE_STAGES) <= set(cases) and not any(c["failed"] for c in cases.values())
    assert "artifacts/amis.properties" in build.archived and "artifacts/web.json" in build.archived
    ami = re.search(r"AMI_WEB=(ami-[0-9a-f]+)", build.archived_text("artifacts/amis.properties")).group(1)
    assert build.description == f"2026.11.1: us-east-1: {ami}"
    assert build.data["buildVariables"]["BAKED_AMIS"].startswith("AMI_WEB=")
    assert build.data["displayName"] == "#1 web 2026.11.1"
    image = devstack.moto.client("ec2").describe_images(ImageIds=[ami])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert image["State"] == "available" and tags["bakery:release"] == "2026.11.1"
    # the Chef key was a temporary copy, gone after the build
    assert not list((tmp_path / "ws@tmp").glob("secretFiles/*/bakery.pem"))


@pytest.mark.e2e
def test_failing_stage_cleans_up_and_publishes_only_this_builds_reports(harness, devstack, instance_runner, tmp_path):
    agent = Agent(devstack, tmp_path, {"broken": {"platform": "linux", "run_lists": {"ami": ["recipe[roles::fail]"]}}})
    ws = tmp_path / "ws"
    (ws / "artifacts").mkdir(parents=True)
    (ws / "artifacts" / "amis.properties").write_text("AMI_BROKEN=ami-0000000000000000f\n")  # an earlier build's
    build = bake(harness, agent, ws, parameters={"ROLE": "broken", "RELEASE": "2026.11.2"})

    assert build.result == "FAILURE", build.log
    assert build.stages["bootstrap"] == "FAILURE", build.log
    assert build.stages["stop"] == "SKIPPED" and build.stages["publish"] == "SKIPPED"
    assert build.data["postRan"] == ["pipeline:always"]
    failed = [c for c in build.junit_cases if c["failed"]]
    assert [c["name"] for c in failed] == ["bootstrap"]
    assert "Chef role_ami run failed" in (failed[0]["message"] or "")
    assert "artifacts/amis.properties" not in build.archived  # the stale one was not archived again
    ec2 = devstack.moto.client("ec2")
    left = ec2.describe_instances(Filters=[{"Name": "tag:bakery:role", "Values": ["broken"]},
                                           {"Name": "tag:bakery:release", "Values": ["2026.11.2"]},
                                           {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}])
    assert not [i for r in left["Reservations"] for i in r["Instances"]], "post cleanup left the bake instance"
    assert build.description is None


def test_failure_before_install_archives_nothing_stale(harness, tmp_path):
    """Defect 3: the parameter check used to run before `rm -rf reports artifacts`."""
    ws = tmp_path / "ws"
    (ws / "artifacts").mkdir(parents=True)
    (ws / "reports").mkdir()
    (ws / "artifacts" / "amis.properties").write_text("AMI_WEB=ami-0000000000000000f\n")
    (ws / "reports" / "web-publish.xml").write_text('<testsuites><testsuite name="bakery.web"><testcase name="publish"/>'
                                                     "</testsuite></testsuites>")
    build = harness.run(JENKINSFILE, ws, parameters={"ROLE": "web"}, agent_env={"PATH": os.environ["PATH"]},
                        plugins=readme_plugins())
    assert build.result == "FAILURE"
    assert "RELEASE is empty and no deploy started this build" in build.log
    assert build.archived == [] and build.junit == []
    assert not (ws / "artifacts").exists()


def upstream(job: str, number: int, kind: str, *, release: str | None = None, started: int = 0,
             env_release: str | None = None) -> dict[str, Any]:
    return {"fullProjectName": job, "number": number, "kind": kind, "startTimeInMillis": started,
            "parameters": {"RELEASE": release} if release else {},
            "environment": {"JOB_NAME": job, "BUILD_NUMBER": str(number)},
            "envOverrides": {"RELEASE": env_release} if env_release else {}}


def release_of(harness: PipelineHarness, tmp_path: Path, **kw: Any) -> Build:
    """Runs only as far as the release decision: the agent has no bakery installed, so `prepare` stops
    right after RELEASE is decided (the pinned-bakery check, exit 2)."""
    ws = tmp_path / f"ws-{time.monotonic_ns()}"
    home = tmp_path / "no-bakery"
    return harness.run(JENKINSFILE, ws, agent_env={"PATH": "/usr/bin:/bin", "BAKERY_HOME": str(home)},
                       plugins=readme_plugins(), **kw)


def test_pipeline_deploy_without_release_fails_clearly_never_with_the_display_name(harness, tmp_path):
    """Defect 1: a Pipeline deploy's parameters are not in buildVariables; the bake used to take '#42'."""
    build = release_of(harness, tmp_path, parameters={"ROLE": "web"},
                       upstream_builds=[upstream("deploy-release", 42, "pipeline", release="2026.11.3")])
    assert build.result == "FAILURE"
    assert "does not say which release it deployed" in build.log and "deploy-release #42" in build.log
    assert "#42" not in build.data["displayName"]
    assert build.stages["prepare"] == "FAILURE" and build.stages["preflight"] == "SKIPPED"


def test_release_from_parameter_given_by_the_deploy_pipeline(harness, tmp_path):
    build = release_of(harness, tmp_path, parameters={"ROLE": "web", "RELEASE": "2026.11.3"},
                       upstream_builds=[upstream("deploy-release", 42, "pipeline")])
    assert build.data["displayName"] == "#1 web 2026.11.3"


def test_release_from_pipeline_deploy_that_sets_env_release(harness, tmp_path):
    build = release_of(harness, tmp_path, parameters={"ROLE": "web"},
                       upstream_builds=[upstream("deploy-release", 7, "pipeline", env_release="2026.11.4")])
    assert build.data["displayName"] == "#1 web 2026.11.4"


def test_merged_freestyle_deploys_bake_the_newest_and_say_what_they_supersede(harness, tmp_path):
    """Defect 2: the queue merged three deploys into one bake, which baked the oldest."""
    causes = [upstream("deploy-release", 10, "freestyle", release="2026.11.1", started=1000),
              upstream("deploy-release", 11, "freestyle", release="2026.11.2", started=2000),
              upstream("deploy-release", 12, "freestyle", release="2026.11.3", started=3000)]
    build = release_of(harness, tmp_path, parameters={"ROLE": "web"}, upstream_builds=causes)
    assert build.data["displayName"] == "#1 web 2026.11.3"
    assert build.description == ("2026.11.3 (supersedes 2026.11.2 (deploy-release #11), "
                                 "2026.11.1 (deploy-release #10))")


def test_replay_of_a_triggered_bake_says_what_to_do(harness, tmp_path):
    """Defect 5: Replay/Rebuild keep the parameters (RELEASE empty) but not the upstream cause."""
    build = release_of(harness, tmp_path, parameters={"ROLE": "web"}, upstream_builds=[])
    assert build.result == "FAILURE"
    assert "Replay, Rebuild or restart" in build.log and "RELEASE" in build.log
    replayed = release_of(harness, tmp_path, parameters={"ROLE": "web", "RELEASE": "2026.11.5"})
    assert replayed.data["displayName"] == "#1 web 2026.11.5"


def test_folder_settings_reach_the_bakery(harness, tmp_path):
    """Defect 6: BAKERY_AWS_CREDENTIALS_ID set on the folder used to be ignored."""
    ws = tmp_path / "ws"
    tools = tmp_path / "tools"
    # the agent's bakery just shows which AWS identity it would use
    env = agent_tools(tools, {"PATH": os.environ["PATH"]},
                      body='#!/bin/sh\necho "bakery $* as key=${AWS_ACCESS_KEY_ID:-none} chef=$(cat $CHEF_CLIENT_KEY)"\n')
    key = tmp_path / "chef.pem"
    key.write_text("PEM")
    build = harness.run(JENKINSFILE, ws, parameters={"ROLE": "web", "RELEASE": "r1"}, agent_env=env,
                        plugins=readme_plugins(), folder_properties={"BAKERY_AWS_CREDENTIALS_ID": "bake-keys"},
                        credentials={"bakery-chef-client-key": {"type": "file", "path": str(key)},
                                     "bake-keys": {"type": "aws", "accessKey": "AKIAFOLDER", "secretKey": "s"}})
    assert build.result == "SUCCESS", build.log
    assert "bakery stage preflight --role web --release r1 as key=AKIAFOLDER chef=PEM" in build.log


def test_plugins_listed_in_the_readme_are_exactly_enough(harness, tmp_path):
    """Defect 7: without timestamper `timestamps()` fails at compile time, before post."""
    plugins = readme_plugins()
    for needed in ("workflow-job", "workflow-cps", "pipeline-model-definition", "timestamper", "folder-properties",
                   "credentials-binding", "junit", "pipeline-build-step", "htmlpublisher", "aws-credentials"):
        assert needed in plugins
    build = harness.run(JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r"},
                        agent_env={"PATH": "/nowhere"}, plugins=[p for p in plugins if p != "timestamper"])
    assert build.result == "FAILURE" and 'Invalid option type "timestamps"' in build.log
    assert build.stages == {} and build.data["postRan"] == []


def stub_bakery(tmp_path: Path, script: str) -> dict[str, str]:
    """An agent whose pinned bakery is ``script`` (sh), for what needs no AWS."""
    return agent_tools(tmp_path / "tools", {"PATH": os.environ["PATH"]}, body=script)


def test_timeout_stops_the_bake_but_never_cuts_post_short(harness, tmp_path):
    """Defect 4 (second half): `options { timeout }` of the pipeline wraps `post` too, so after the time
    is up `post` got only Jenkins' grace period (60 s, here 1 s) before being killed mid-cleanup."""
    env = stub_bakery(tmp_path, '#!/bin/sh\ncase "$1" in\n'
                                '  stage) sleep 60 ;;\n'
                                '  cleanup) sleep 2; mkdir -p reports\n'
                                '    echo \'<testsuite name="bakery.web"><testcase name="cleanup"/></testsuite>\' '
                                '> reports/web-cleanup.xml; echo "cleanup finished" ;;\n'
                                'esac\n')
    key = tmp_path / "chef.pem"
    key.write_text("PEM")
    build = harness.run(JENKINSFILE, tmp_path / "ws", parameters={"ROLE": "web", "RELEASE": "r"}, agent_env=env,
                        plugins=readme_plugins(), credentials={"bakery-chef-client-key": {"type": "file",
                                                                                           "path": str(key)}},
                        time_scales={"HOURS": 1 / 3600}, timeout_grace_seconds=1, stop_grace_seconds=1)
    assert build.result == "ABORTED", build.log
    assert build.stages["preflight"] == "ABORTED" and "Timeout has been exceeded" in build.log
    assert "cleanup finished" in build.log and "extreme prejudice" not in build.log
    assert [c["name"] for c in build.junit_cases] == ["cleanup"]  # published after the cleanup ended


def _openers(path: Path) -> int:
    """How many processes have ``path`` open (Linux /proc; other users' processes are not readable)."""
    n = 0
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            n += any(os.readlink(fd) == str(path) for fd in fds.iterdir())
        except OSError:
            continue
    return n


@pytest.mark.e2e
def test_abort_waits_for_the_bakery_to_finish_before_cleaning_and_publishing(harness, devstack, proxy,
                                                                             instance_runner, tmp_path):
    """Defect 4: Jenkins gives an aborted `sh` up after 20 s (here 1 s) without killing it, so `post` starts
    while the bakery still holds the role's lock. Here the bakery is inside an AWS call (held 4 s by the
    proxy until post's cleanup has the lock file open) when the abort comes: `post`'s cleanup must wait
    for it, then clean up, then publish."""
    agent = Agent(devstack, tmp_path, {"halted": {"platform": "linux"}})
    agent.env["AWS_ENDPOINT_URL"] = proxy.url
    ws = tmp_path / "ws"
    trigger = tmp_path / "abort-now"
    result: dict[str, Build] = {}
    runner = threading.Thread(target=lambda: result.setdefault("build", bake(
        harness, agent, ws, parameters={"ROLE": "halted", "RELEASE": "2026.11.6"}, abort={"whenFileExists": str(trigger)},
        stop_grace_seconds=1)))
    runner.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _stage_status(ws, "halted", "launch") != "succeeded":
        time.sleep(0.1)
    hold = Hold("DescribeInstances", forward_first=False, times=1)

    def release_once_post_waits() -> None:
        # The held call ends only once a second process (post's cleanup) has the role's lock file open:
        # post then certainly began while the bakery still held the lock, however loaded the machine.
        lock = (Workspace(ws).state_dir / "halted.lock").resolve()
        while _openers(lock) < 2 and runner.is_alive():
            time.sleep(0.05)
        hold.release.set()

    def abort_while_held() -> None:
        trigger.touch()
        threading.Thread(target=release_once_post_waits, daemon=True).start()

    hold.callback = abort_while_held
    proxy.add(hold)
    runner.join(300)
    build = result["build"]

    assert build.result == "ABORTED", build.log
    assert build.stages["publish"] == "SKIPPED"
    assert "After 1s process did not stop" in build.log, build.log  # post began while the bakery still ran
    post = build.log.split("always (post of pipeline)")[1]
    assert "halted cleanup:" in post and "ERROR" not in post, post  # cleanup waited for the lock, then ran
    assert build.data["orphans"] and not build.data["orphans"][0]["runningWhenBuildEnded"]
    assert "artifacts/amis.properties" not in build.archived
    ec2 = devstack.moto.client("ec2")
    left = ec2.describe_instances(Filters=[{"Name": "tag:bakery:release", "Values": ["2026.11.6"]},
                                           {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]}])
    assert not [i for r in left["Reservations"] for i in r["Instances"]]


def _stage_status(ws: Path, role: str, stage: str) -> str | None:
    try:
        return json.loads((ws / ".bakery" / f"{role}.json").read_text())["stages"][stage]["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def test_groovy_error_in_a_helper_fails_the_test(harness, tmp_path):
    broken = tmp_path / "Jenkinsfile"
    broken.write_text(JENKINSFILE.read_text().replace("currentBuild.upstreamBuilds\n    if (!upstream)",
                                                      "currentBuild.upstreamBuild\n    if (!upstream)"))
    assert broken.read_text() != JENKINSFILE.read_text()
    with pytest.raises(AssertionError, match="Groovy error in the Jenkinsfile"):
        harness.run(broken, tmp_path / "ws", parameters={"ROLE": "web"}, agent_env={"PATH": "/usr/bin:/bin"},
                    plugins=readme_plugins(), upstream_builds=[upstream("deploy-release", 1, "pipeline")])


def test_raw_build_is_refused_by_the_sandbox(harness, tmp_path):
    script = tmp_path / "Jenkinsfile"
    script.write_text("pipeline { agent any\n stages { stage('x') { steps { echo currentBuild.upstreamBuilds[0]"
                      ".rawBuild.toString() } } } }\n")
    build = harness.run(script, tmp_path / "ws", agent_env={}, expect_groovy_errors=True,
                        upstream_builds=[upstream("deploy", 1, "pipeline")])
    assert build.result == "FAILURE" and "Scripts not permitted to use method" in build.log


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["bake", "jobs"])
def test_release_job(harness, devstack, instance_runner, tmp_path, mode):
    roles = [f"{mode}-api", f"{mode}-worker"]  # own roles per mode: an equal bake would reuse the other's AMI
    agent = Agent(devstack, tmp_path, {role: {"platform": "linux"} for role in roles})
    downstream = {f"ami-bake-{role}": {"jenkinsfile": str(JENKINSFILE), "workspace": str(tmp_path / f"job-{role}"),
                                       "parameterDefinitions": {**ROLE_JOB_PARAMETERS, "ROLE": role},
                                       "agentEnv": agent.env, "credentials": agent.credentials,
                                       "plugins": readme_plugins()}
                  for role in roles}
    build = harness.run(RELEASE_JENKINSFILE, tmp_path / "release-ws", job="ami-bake-release",
                        parameter_definitions=RELEASE_JOB_PARAMETERS,
                        parameters={"RELEASE": f"2026.12.{mode}", "MODE": mode, "ROLES": " ".join(roles), "JOBS": "2"},
                        agent_env=agent.env, credentials=agent.credentials, plugins=readme_plugins(),
                        downstream=downstream, scm=agent.repo)
    downstream_logs = "\n".join("\n".join(t.get("result", {}).get("log", [])) for t in build.data["triggered"])
    assert build.result == "SUCCESS", build.log + "\n--- downstream ---\n" + downstream_logs
    assert "artifacts/amis.json" in build.archived
    amis = json.loads(build.archived_text("artifacts/amis.json"))
    assert amis["release"] == f"2026.12.{mode}" and set(amis["amis"]) == set(roles)
    for role in roles:
        ami = amis["amis"][role]["us-east-1"]
        image = devstack.moto.client("ec2").describe_images(ImageIds=[ami])["Images"][0]
        assert {t["Key"]: t["Value"] for t in image["Tags"]}["bakery:release"] == f"2026.12.{mode}"
    if mode == "jobs":
        assert [t["parameters"] for t in build.data["triggered"]] == [
            {"ROLE": role, "RELEASE": "2026.12.jobs"} for role in roles]
        assert all(t["result"]["result"] == "SUCCESS" for t in build.data["triggered"])
    else:
        assert build.data["html"] and build.data["html"][0]["name"] == "Bake summary"


# --- the Jenkins double's build model feeding the Jenkinsfile -----------------------------------------

FREESTYLE_DEPLOY = """<?xml version='1.1' encoding='UTF-8'?>
<project><description>deploy</description><properties><hudson.model.ParametersDefinitionProperty>
<parameterDefinitions><hudson.model.StringParameterDefinition><name>RELEASE</name><defaultValue></defaultValue>
</hudson.model.StringParameterDefinition></parameterDefinitions></hudson.model.ParametersDefinitionProperty>
</properties><builders/><publishers/></project>"""


@pytest.fixture()
def double(tmp_path: Path) -> Iterator[Any]:
    import yaml

    from bakery_lib.catalog import load_catalog
    from bakery_lib.jobs.render import render_items
    from devstack.jenkins_double import JenkinsDouble
    from devstack.samples import offline_catalog_data

    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(offline_catalog_data(["web"])))
    jenkins = JenkinsDouble()
    jenkins.put_item("deploy-release", FREESTYLE_DEPLOY)
    for item in render_items(load_catalog(path)):
        jenkins.put_item(item.full_name, item.xml)
    yield jenkins


def deploy(double: Any, release: str) -> None:
    double.schedule("deploy-release", {"RELEASE": release})
    double.finish(double.start_next("deploy-release"))
    time.sleep(0.01)  # distinct start times


def test_queue_merges_triggered_deploys_and_the_jenkinsfile_bakes_the_newest(harness, double, tmp_path):
    """Defect 2 end to end: ReverseBuildTrigger queues without parameters, the queue merges the waiting
    bakes, and the one build left bakes the newest release, naming the ones it supersedes."""
    deploy(double, "2026.11.1")
    first = double.start_next("ami-bake-web")  # bakes 2026.11.1 ...
    deploy(double, "2026.11.2")  # ... while these two deploys' bakes wait in the queue
    deploy(double, "2026.11.3")
    assert len(double.queue) == 1 and len(double.queue[0].causes) == 2
    assert double.queue[0].parameters == {"ROLE": "web", "RELEASE": "", "AGENT_LABEL": "bakery",
                                          "BAKERY_VERSION": __version__, "CATALOG": "bakery.yaml"}
    double.finish(first)
    merged = double.start_next("ami-bake-web")
    build = release_of(harness, tmp_path, parameters=merged.parameters,
                       upstream_builds=double.upstream_builds(merged))
    assert build.data["displayName"] == "#1 web 2026.11.3"
    assert build.description == "2026.11.3 (supersedes 2026.11.2 (deploy-release #2))"

    # the recommended way: the deploy passes RELEASE, and different releases are never merged
    double.schedule("ami-bake-web", {"RELEASE": "2026.11.4"})
    double.schedule("ami-bake-web", {"RELEASE": "2026.11.5"})
    double.schedule("ami-bake-web", {"RELEASE": "2026.11.5"})  # the same release twice: one bake
    assert [i.parameters["RELEASE"] for i in double.queue] == ["2026.11.4", "2026.11.5"]


def test_replay_of_a_triggered_bake_through_the_double(harness, double, tmp_path):
    """Defect 5: Replay keeps the parameters (RELEASE empty) but not the upstream cause."""
    deploy(double, "2026.11.7")
    triggered = double.start_next("ami-bake-web")
    double.finish(triggered)
    double.replay(triggered)
    replayed = double.start_next("ami-bake-web")
    assert double.upstream_builds(replayed) == []
    build = release_of(harness, tmp_path, parameters=replayed.parameters,
                       upstream_builds=double.upstream_builds(replayed))
    assert build.result == "FAILURE" and "A Replay, Rebuild or restart" in build.log
