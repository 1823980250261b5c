"""The Jenkinsfiles: npm-groovy-lint@15 finds zero errors, and they keep the contract with the bakery.

npm-groovy-lint runs CodeNarc (Java) and a Groovy parse of each file. It is installed by `make test`
into .tools/ (``npm install --prefix .tools npm-groovy-lint@15``); when it is missing this test
fails, on purpose, rather than skip: an unlinted Jenkinsfile must not pass CI unnoticed.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from support.pipeline import TEST_JVM_OPTIONS

from bakery_lib.stages import ORDER

REPO = Path(__file__).resolve().parents[2]
LINTER = REPO / ".tools" / "node_modules" / ".bin" / "npm-groovy-lint"
JENKINSFILES = [REPO / "jenkins" / "Jenkinsfile", REPO / "jenkins" / "release.Jenkinsfile"]
STAGES = list(ORDER)  # the bakery's stages, in order: one Jenkinsfile stage each


def lint(*files: Path) -> tuple[int, dict]:
    """Lint files that share one directory: CodeNarc scans from their common base directory, so
    files spread over / and /tmp would make it walk the whole filesystem."""
    assert LINTER.exists(), (
        f"{LINTER} is missing: install it with `npm install --prefix .tools npm-groovy-lint@15` (make test does)"
    )
    assert len({f.parent for f in files}) == 1
    proc = subprocess.run(
        # Its own heap options, plus the test JVMs' GC and compiler.
        [str(LINTER), "--noserver", "--failon", "error", "--output", "json",
         "--javaoptions=" + ",".join(("-Xms256m", "-Xmx2048m", *TEST_JVM_OPTIONS)),
         *(f.name for f in files)],
        capture_output=True, text=True, cwd=files[0].parent, timeout=600,
    )
    start = proc.stdout.find("{")
    assert start >= 0, f"npm-groovy-lint printed no JSON:\n{proc.stdout}\n{proc.stderr}"
    return proc.returncode, json.loads(proc.stdout[start:])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_jenkinsfiles_have_no_lint_errors(tmp_path: Path) -> None:
    # Copies of the Jenkinsfiles beside a broken one: one JVM start for all, and the broken file
    # proves the linter does find errors.
    copies = []
    for path in JENKINSFILES:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    broken = tmp_path / "broken.Jenkinsfile"
    broken.write_text("pipeline {\n  stages {\n    stage('x') {\n      steps { sh 'true' \n  }\n}\n")
    code, report = lint(*copies, broken)
    files = {Path(name).name: found for name, found in report["files"].items()}
    for path in JENKINSFILES:
        assert path.name in files, f"{path.name} was not linted: {sorted(files)}"
        errors = [e for e in files[path.name].get("errors", []) if e["severity"] == "error"]
        assert errors == [], f"{path.name}: {errors}"
    assert any(e["severity"] == "error" for e in files[broken.name]["errors"])
    assert code == 1  # --failon error: the broken file fails the run, as it would fail `make test`


def test_per_role_jenkinsfile_runs_every_stage_in_order_one_line_each() -> None:
    text = JENKINSFILES[0].read_text()
    stages = re.findall(r"stage\('([a-z-]+)'\)\s*\{\s*steps \{ bakery '([^']*)' \}", text)
    assert [name for name, _ in stages] == STAGES
    for name, call in stages:
        expected = f'stage {name} --role "$ROLE"'
        if name == "preflight":
            expected += ' --release "$BAKE_RELEASE"'
        assert call == expected
    assert "String command = '\"$BAKERY_BIN\" --catalog \"$CATALOG\" ' + args" in text
    post = text[text.index("    post {"):]
    always = post[post.index("always {"):post.index("success {")]
    assert "finishBake()" in always
    finish = text[text.index("void finishBake()"):text.index("// \"AMI_WEB_US_EAST_1")]
    assert finish.index("bakery 'cleanup --role \"$ROLE\"'") < finish.index("junit testResults: 'reports/*.xml'")
    assert "archiveArtifacts artifacts: 'artifacts/**', fingerprint: true" in finish
    for needle in ("timeout(time:", "timestamps()", "withFolderProperties()", "'bakery-chef-client-key'",
                   "BAKERY_AWS_CREDENTIALS_ID", "artifacts/amis.properties", "currentBuild.description",
                   "checkPinnedBakery()"):
        assert needle in text, needle
    # Job properties belong to the job generate-jobs writes, never to the Jenkinsfile (see its header).
    code = re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))
    for forbidden in ("parameters {", "triggers {", "disableConcurrentBuilds", "buildDiscarder"):
        assert forbidden not in code


def test_release_jenkinsfile_offers_both_modes() -> None:
    text = JENKINSFILES[1].read_text()
    assert "build(job: \"${prefix}${role}\", wait: true, propagate: true" in text  # prefix = checked JOB_PREFIX
    assert "parallel(branches)" in text
    assert 'bakery("bake ${selection} --release \\"\\$BAKE_RELEASE\\" --jobs \\"\\$JOBS\\"")' in text
    assert "artifacts/amis.json" in text and "Which mode to use" in text


def test_both_jenkinsfiles_check_the_pinned_bakery_with_the_same_code() -> None:
    """release.Jenkinsfile keeps a copy of the pinned-bakery check (no shared library): the same code."""
    def block(text: str) -> str:
        return text[text.index("String pinCheckScript()"):text.index("    env.BAKERY_CHECKED_ON")]
    per_role, release = (path.read_text() for path in JENKINSFILES)
    assert block(per_role) == block(release)
    assert "pip install" not in per_role and "pip install" not in release
