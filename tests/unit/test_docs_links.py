"""The front door cannot rot: README.md stays short and says what it must, and every relative link of
README.md and docs/**/*.md leads to an existing file and heading.

The link checker is ``docs/generate.py``'s (``--check`` runs it too); GitHub's heading anchors are what
a reader's browser follows, so ``slug`` is pinned to them here.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 150


def load_generator() -> ModuleType:
    """docs/generate.py as a module (docs/ is not a package: it is run as a script)."""
    spec = importlib.util.spec_from_file_location("docs_generate_links", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


generate = load_generator()


def test_every_relative_link_leads_to_a_file_and_heading() -> None:
    assert generate.broken_links() == []


def test_every_repository_path_named_in_the_docs_exists() -> None:
    assert generate.missing_paths() == []


def test_the_path_check_finds_a_moved_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "REPO", tmp_path)
    (tmp_path / "tests" / "support").mkdir(parents=True)
    (tmp_path / "tests" / "support" / "proxy.py").write_text("", encoding="utf-8")
    (tmp_path / "bakery_lib" / "stages").mkdir(parents=True)
    (tmp_path / "bakery_lib" / "stages" / "launch.py").write_text("", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "`tests/support/proxy.py`, `tests/support/`, `bakery_lib/stages/NAME.py`, `tests/*/proxy.py`",
        "`tests/faults/proxy.py` moved; `bakery_lib/stages/NAME.sh` matches nothing",
        "not paths here: `reports/ROLE-STAGE.xml`, `/var/lib/bakery`, `tests/<layer>/`, `pytest tests/x.py`",
        "```",
        "tests/in/a/fence.py `tests/in/a/fence.py`",
        "```",
    ]) + "\n", encoding="utf-8")
    assert generate.missing_paths([page]) == [
        "page.md:2: tests/faults/proxy.py: no such file in the repository",
        "page.md:2: bakery_lib/stages/NAME.sh: no such file in the repository",
    ]


def test_the_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    assert "make demo" in text and "make test" in text
    for page in ("docs/README.md", "docs/quick-start.md", "docs/verification.md"):
        assert f"]({page}" in text, page


def test_the_readme_says_what_is_executed_and_what_only_reviewed() -> None:
    text = README.read_text(encoding="utf-8")
    heading = "## What is checked by execution, and what only by review\n"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    assert "**Executed**" in section and "**Only reviewed**" in section
    assert "](docs/verification.md)" in section


def test_every_docs_page_is_reachable_from_the_index() -> None:
    index = DOCS / "README.md"
    linked = {(index.parent / link.target.partition("#")[0]).resolve()
              for link in generate.links(index) if link.target and not generate.SCHEME.match(link.target)}
    pages = {p.resolve() for p in DOCS.rglob("*.md")} - {index.resolve()}
    assert sorted(str(p.relative_to(DOCS)) for p in pages - linked) == []


def test_the_fault_table_lives_in_one_place() -> None:
    header = "| area | fault / input tried | what the bakery did | left behind after cleanup |"
    holders = [p.relative_to(REPO) for p in [README, *DOCS.rglob("*.md")]
               if header in p.read_text(encoding="utf-8")]
    assert holders == [Path("docs/faults.md")]
    assert not (REPO / "notes").exists()


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Latest figures (bench_bake.py)", "latest-figures-bench_bakepy"),
    ("What the boot test adds (bench_bake.py `--boot-test on` against `--boot-test off`)",
     "what-the-boot-test-adds-bench_bakepy---boot-test-on-against---boot-test-off"),
    ("The Windows bake (EC2Launch v2)", "the-windows-bake-ec2launch-v2"),
    ("Stages: what a bake does", "stages-what-a-bake-does"),
    ("bakery publish-runlist", "bakery-publish-runlist"),
    ("Findings (2026-11-25, bakery 0.1.0)", "findings-2026-11-25-bakery-010"),
])
def test_slug_is_githubs_anchor(heading: str, anchor: str) -> None:
    assert generate.slug(heading) == anchor


def test_anchors_of_repeated_headings_and_code_blocks() -> None:
    text = ("# Title\n## Setup\n```sh\n# not a heading\n```\n## Setup\n"
            "<a id=\"custom\"></a>\n## [Linked](x.md) `code`\n")
    assert generate.anchors(text) == {"title", "setup", "setup-1", "custom", "linked-code"}


def test_the_checker_finds_broken_links_and_ignores_code(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Real heading\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text("\n".join([
        "# Page",
        "[fine](other.md#real-heading) and [also fine](#page) and [web](https://example.com/x.md)",
        "[gone](missing.md)",
        "[no such heading](other.md#renamed-heading)",
        "`[in code](missing-too.md)`",
        "```",
        "[in a fence](missing-three.md)",
        "```",
        "[ref]: ../../outside.md",
    ]) + "\n", encoding="utf-8")
    problems = generate.broken_links([page])
    assert [re.sub(r":\d+:", ":N:", p) for p in problems] == [
        "docs/page.md:N: missing.md: no such file",
        "docs/page.md:N: other.md#renamed-heading: no heading with the anchor #renamed-heading in "
        "docs/other.md",
        "docs/page.md:N: ../../outside.md: outside the repository",
    ]
