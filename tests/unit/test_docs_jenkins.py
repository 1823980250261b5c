"""jenkins/README.md says, item by item, which test checks each behaviour the Jenkinsfiles rely on: every
test it names must exist, and every tests/ file it names, or the table would vouch for what nothing checks.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
JENKINS_README = REPO / "jenkins" / "README.md"


def defined_tests() -> set[str]:
    return {m.group(1) for path in (REPO / "tests").rglob("test_*.py")
            for m in re.finditer(r"^(?:async )?def (test_\w+)\(", path.read_text(), flags=re.MULTILINE)}


def test_every_test_the_jenkins_readme_names_exists() -> None:
    text = JENKINS_README.read_text()
    named = set(re.findall(r"`(test_\w+)`", text))
    assert len(named) >= 20  # the "how each behaviour is checked" table names them
    assert sorted(named - defined_tests()) == []
    paths = set(re.findall(r"`(tests/[\w/.]+\.py)`", text))
    assert paths and sorted(p for p in paths if not (REPO / p).is_file()) == []
