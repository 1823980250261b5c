"""Pytest side of the pipeline harness: one ``groovy harness.groovy --serve`` JVM per test module.

``PipelineHarness.run(jenkinsfile, workspace, ...)`` writes a scenario (parameters, agent environment,
credentials, upstream builds, downstream jobs, abort...), has the harness execute the Jenkinsfile and
returns the ``Build`` a user would see: result, stages with their status, console log, JUnit results,
archived artifacts, description. A Groovy programming error in the Jenkinsfile fails the calling test
(``Build.check``) unless the test says it expects one.

``agent_tools`` gives the agent what jenkins/README.md tells an operator to install once: the pinned
bakery as ``BAKERY_HOME/VERSION/bin/bakery`` (here a wrapper running this checkout's bakery_lib with the
test interpreter), and a ``python3`` that refuses ``-m venv`` and ``-m pip`` (a build must install
nothing); ``install_bakery`` puts a stand-in script there instead. ``user_repository`` is the job's SCM
(the user's own repository: the catalogue at ``bakery.yaml``), checked out into the workspace by the
harness as declarative's `agent` does; ``restart_of`` is what "Restart from Stage" carries over.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakery_lib import __version__
from devstack._proc import end_by_eof

HERE = Path(__file__).resolve().parent
# The test JVMs (this harness, CodeNarc) are short-lived with small heaps: serial GC and the client
# compiler cost a third less CPU than the server defaults (G1's concurrent threads, C2), start as fast.
TEST_JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto")
REPO = HERE.parents[1]
HARNESS = HERE / "harness.groovy"
JENKINSFILE = REPO / "jenkins" / "Jenkinsfile"
RELEASE_JENKINSFILE = REPO / "jenkins" / "release.Jenkinsfile"

# The parameters generate-jobs gives the role and release jobs (name -> default), as the harness needs them.
ROLE_JOB_PARAMETERS = {"ROLE": "", "RELEASE": "", "AGENT_LABEL": "bakery", "BAKERY_VERSION": __version__,
                       "CATALOG": "bakery.yaml"}
RELEASE_JOB_PARAMETERS = {"RELEASE": "", "MODE": "jobs", "JOBS": "4", "ROLES": "", "JOB_PREFIX": "ami-bake-",
                          "AGENT_LABEL": "bakery", "BAKERY_VERSION": __version__, "CATALOG": "bakery.yaml"}
# A catalogue for builds whose bakery is a stand-in that reads none (the Jenkinsfiles check it exists).
PLACEHOLDER_CATALOG = "# the job's catalogue (tests whose bakery stand-in reads no catalogue)\n"


@dataclass
class Build:
    """What Jenkins shows of one build."""

    data: dict[str, Any]
    workspace: Path
    build_dir: Path
    expect_groovy_errors: bool = False

    @property
    def result(self) -> str:
        return str(self.data["result"])

    @property
    def log(self) -> str:
        return "\n".join(self.data.get("log") or [])

    @property
    def stages(self) -> dict[str, str]:
        return {s["name"]: s["status"] for s in self.data.get("stages") or []}

    @property
    def description(self) -> str | None:
        return self.data.get("description")

    @property
    def archived(self) -> list[str]:
        return list(self.data.get("archived") or [])

    @property
    def junit(self) -> list[dict[str, Any]]:
        return list(self.data.get("junit") or [])

    @property
    def junit_cases(self) -> list[dict[str, Any]]:
        return [case for run in self.junit for case in run["cases"]]

    def archived_text(self, relative: str) -> str:
        return (self.build_dir / "archive" / relative).read_text()

    def check(self) -> Build:
        errors = self.data.get("groovyErrors") or []
        if errors and not self.expect_groovy_errors:
            raise AssertionError("Groovy error in the Jenkinsfile:\n" + "\n".join(errors) + "\n--- log ---\n" + self.log)
        if self.result == "HARNESS_ERROR":
            raise AssertionError("the harness itself failed:\n" + self.log)
        return self


@dataclass
class PipelineHarness:
    """One Groovy JVM that runs scenarios on request."""

    tmp: Path
    _proc: subprocess.Popen[str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def start(self) -> PipelineHarness:
        groovy = shutil.which("groovy")
        if groovy is None:
            raise RuntimeError("groovy is not on PATH: apt-get install groovy default-jre-headless (make test does)")
        env = {**os.environ, "JAVA_OPTS": " ".join(filter(None, (os.environ.get("JAVA_OPTS", ""), *TEST_JVM_OPTIONS)))}
        self._proc = subprocess.Popen([groovy, str(HARNESS), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, cwd=self.tmp, env=env)
        return self

    def stop(self) -> None:
        end_by_eof(self._proc)
        self._proc = None

    def run(self, jenkinsfile: Path, workspace: Path, *, job: str = "ami-bake-web", number: int = 1,
            parameters: Mapping[str, Any] | None = None, parameter_definitions: Mapping[str, Any] | None = None,
            agent_env: Mapping[str, str] | None = None, expect_groovy_errors: bool = False,
            **scenario: Any) -> Build:
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        n = next(self._counter)
        build_dir = self.tmp / f"build-{n}"
        data = {
            "jenkinsfile": str(jenkinsfile), "workspace": str(workspace), "buildDir": str(build_dir),
            "job": job, "number": number, "parameters": dict(parameters or {}),
            "parameterDefinitions": dict(parameter_definitions if parameter_definitions is not None
                                         else ROLE_JOB_PARAMETERS),
            "agentEnv": dict(agent_env if agent_env is not None else os.environ),
            "resultFile": str(self.tmp / f"result-{n}.json"),
            "scm": str(scenario.pop("scm", None) or user_repository(self.tmp / "repository")),
            **{_camel(k): v for k, v in scenario.items()},
        }
        path = self.tmp / f"scenario-{n}.json"
        path.write_text(json.dumps(data))
        with self._lock:
            self._proc.stdin.write(f"{path}\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line.startswith("DONE"):
            raise RuntimeError(f"the pipeline harness stopped (exit {self._proc.poll()})")
        result = json.loads(Path(data["resultFile"]).read_text())
        return Build(result, workspace, build_dir, expect_groovy_errors).check()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def user_repository(directory: Path, catalog: str | None = None, path: str = "bakery.yaml") -> Path:
    """The job's SCM, the user's own repository: the catalogue at ``path`` (a placeholder when none is given)."""
    target = directory / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(catalog if catalog is not None else PLACEHOLDER_CATALOG)
    return directory


def restart_of(original: Build, stage: str) -> dict[str, Any]:
    """The scenario of "Restart from Stage" on ``original``: what the FlowCopiers carry (see harness.groovy)."""
    return {"fromStage": stage, "envOverrides": dict(original.data.get("buildVariables") or {}),
            "archiveFrom": str(original.build_dir / "archive"), "archived": original.archived}


def install_bakery(home: Path, body: str, version: str = __version__) -> Path:
    """``home/VERSION/bin/bakery``, answering ``--version`` as the bakery does and running ``body`` (sh)
    for anything else, with a leading ``--catalog PATH`` taken off (left in BAKERY_STUB_CATALOG)."""
    bindir = home / version / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "bakery-body").write_text(body)
    (bindir / "bakery-body").chmod(0o755)
    wrapper = bindir / "bakery"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "--version" ] && {{ echo "bakery {version}"; exit 0; }}\n'
        'if [ "$1" = "--catalog" ]; then BAKERY_STUB_CATALOG="$2"; export BAKERY_STUB_CATALOG; shift 2; fi\n'
        f'exec {bindir / "bakery-body"} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def agent_tools(directory: Path, env: Mapping[str, str], *, body: str | None = None,
                version: str = __version__) -> dict[str, str]:
    """An agent environment with the pinned bakery installed under BAKERY_HOME (see the module doc):
    this checkout's bakery, or a stand-in running ``body``."""
    directory.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    home = directory / "bakery-home"
    if body is None:
        bindir = home / version / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        (bindir / "bakery").write_text(f"#!/bin/sh\nexec {python} -m bakery_lib.cli \"$@\"\n")
        (bindir / "bakery").chmod(0o755)
    else:
        install_bakery(home, body, version)
    stand_in = directory / "python3"
    stand_in.write_text(
        "#!/bin/sh\n"
        "# Agent stand-in: a build installs nothing (no venv, no pip); anything else runs the test python.\n"
        'case "$1 $2" in "-m venv"|"-m pip") echo "python3 $*: a build must not install anything" >&2; exit 3;; esac\n'
        f'exec {python} "$@"\n'
    )
    stand_in.chmod(0o755)
    full = dict(env)
    full["PATH"] = f"{directory}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    full["BAKERY_HOME"] = str(home)
    return full
