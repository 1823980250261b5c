"""Pytest side of the pipeline harness: one ``groovy harness.groovy --serve`` JVM per test module.

``PipelineHarness.run(jenkinsfile, workspace, ...)`` writes a scenario (parameters, agent environment,
credentials, upstream builds, downstream jobs, abort...), has the harness execute the Jenkinsfile and
returns the ``Build`` a user would see: result, stages with their status, console log, JUnit results,
archived artifacts, description. A Groovy programming error in the Jenkinsfile fails the calling test
(``Build.check``) unless the test says it expects one.

``agent_tools`` makes the agent's ``python3`` a stand-in for the `prepare` stage's
``python3 -m venv .bakery-venv && .bakery-venv/bin/pip install .``: the venv gets a ``bakery`` that
runs this checkout's bakery_lib with the test interpreter (no network, no install); any other
``python3`` call runs the test interpreter.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HARNESS = HERE / "harness.groovy"
JENKINSFILE = REPO / "jenkins" / "Jenkinsfile"
RELEASE_JENKINSFILE = REPO / "jenkins" / "release.Jenkinsfile"

# The parameters generate-jobs gives the role and release jobs (name -> default), as the harness needs them.
ROLE_JOB_PARAMETERS = {"ROLE": "", "RELEASE": "", "AGENT_LABEL": "bakery"}
RELEASE_JOB_PARAMETERS = {"RELEASE": "", "MODE": "jobs", "JOBS": "4", "ROLES": "", "JOB_PREFIX": "ami-bake-",
                          "AGENT_LABEL": "bakery"}


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
        self._proc = subprocess.Popen([groovy, str(HARNESS), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, cwd=self.tmp)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
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


def agent_tools(directory: Path, env: Mapping[str, str]) -> dict[str, str]:
    """An agent environment whose python3 sets up .bakery-venv without a network (see the module doc)."""
    directory.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    stand_in = directory / "python3"
    stand_in.write_text(
        "#!/bin/sh\n"
        "# Agent stand-in: `python3 -m venv DIR` makes DIR/bin/{pip,bakery}; anything else runs the test python.\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  mkdir -p "$3/bin"\n'
        "  printf '#!/bin/sh\\ncase \"$*\" in *install*) exit 0;; *) exit 2;; esac\\n' > \"$3/bin/pip\"\n"
        f"  printf '#!/bin/sh\\nexec {python} -m bakery_lib.cli \"$@\"\\n' > \"$3/bin/bakery\"\n"
        '  chmod +x "$3/bin/pip" "$3/bin/bakery"\n'
        "  exit 0\n"
        "fi\n"
        f'exec {python} "$@"\n'
    )
    stand_in.chmod(0o755)
    full = dict(env)
    full["PATH"] = f"{directory}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return full
