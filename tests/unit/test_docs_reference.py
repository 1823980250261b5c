"""The generated reference pages (docs/reference/) are what the code renders now, so they cannot drift.

``docs/generate.py --check`` is the check a person runs; these tests run the same functions in
``make test``: a parser changed without the regenerated page fails here, naming the page.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from bakery_lib import cli
from bakery_lib.cli import generate_jobs
from bakery_lib.stages import ORDER

REPO = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    """docs/generate.py as a module (docs/ is not a package: it is run as a script)."""
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


generate = load_generator()


def test_every_generated_page_is_what_the_code_renders() -> None:
    assert generate.stale_pages() == [], "regenerate with: .venv/bin/python docs/generate.py"


def test_the_cli_reference_is_always_rendered() -> None:
    # Only pages whose render function lives in another, not yet written module may be skipped.
    assert "reference/cli.md" in generate.available_pages()
    assert (REPO / "docs" / "reference" / "cli.md").read_text(encoding="utf-8") == generate.cli_reference()


def _options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        yield from (flag for flag in action.option_strings if flag.startswith("--") and flag != "--help")


def test_the_cli_reference_names_every_command_option_and_stage() -> None:
    page = (REPO / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    bakery = cli.build_parser()
    subparsers = next(a for a in bakery._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        section = page.split(f"### bakery {name}\n", 1)[1].split("\n### ", 1)[0]
        assert f"```\nbakery {name}" in section, name
        own = set(_options(sub)) - set(_options(bakery))
        for flag in own:
            assert f"`{flag}" in section, f"bakery {name}: {flag}"
    for stage in ORDER:
        assert f" {stage}," in page or f" {stage} |" in page, stage
    for parser, heading in ((cli.build_create_instance_parser(), "## create-instance\n"),
                            (generate_jobs.build_parser(), "## generate-jobs\n")):
        section = page.split(heading, 1)[1].split("\n## ", 1)[0]
        for flag in _options(parser):
            assert f"`{flag}" in section, f"{heading.strip()}: {flag}"


def test_usage_lines_show_required_exclusive_and_optional_arguments() -> None:
    page = generate.cli_reference()
    bake = "bakery bake (--role ROLE | --all) --release RELEASE [--jobs N] [--keep-on-failure] [--force]"
    assert bake in page
    assert "bakery cleanup (--role ROLE | --bake-id ID) [--lock-wait SECONDS]" in page
    assert "| `--role ROLE` | one of `--role`, `--all` |  | (may be given more than once) |" in page


def test_a_parser_change_makes_the_check_fail(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    real = cli.build_parser

    def with_a_new_option() -> argparse.ArgumentParser:
        parser = real()
        parser.add_argument("--colour", help="a new option nobody documented")
        return parser

    monkeypatch.setattr(cli, "build_parser", with_a_new_option)
    assert generate.stale_pages() == ["reference/cli.md"]
    assert generate.main(["--check"]) == 1
    assert "docs/reference/cli.md is not what the code renders" in capsys.readouterr().out


def test_write_then_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(generate, "DOCS", tmp_path)
    monkeypatch.setattr(generate, "documentation_files", list)  # the links are another test's subject
    assert generate.main(["--check"]) == 1  # no page at all
    assert generate.main([]) == 0
    assert "wrote docs/reference/cli.md" in capsys.readouterr().out
    assert (tmp_path / "reference" / "cli.md").read_text(encoding="utf-8") == generate.cli_reference()
    assert generate.main(["--check"]) == 0
    page = tmp_path / "reference" / "cli.md"
    page.write_text(page.read_text(encoding="utf-8").replace("--dry-run", "--dryrun"), encoding="utf-8")
    assert generate.main(["--check"]) == 1


def test_a_page_whose_renderer_does_not_exist_yet_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = dict(generate.PAGES)
    pages["reference/later.md"] = "bakery_lib.catalog:no_such_renderer_yet"
    pages["reference/elsewhere.md"] = "bakery_lib.no_such_module:render"
    monkeypatch.setattr(generate, "PAGES", pages)
    assert "reference/later.md" not in generate.available_pages()
    assert "reference/elsewhere.md" not in generate.available_pages()
    assert generate.stale_pages() == []
    # Once the function exists, its page is rendered and checked like the others.
    monkeypatch.setitem(pages, "reference/later.md", lambda: "# Later\n")
    assert "reference/later.md" in generate.stale_pages()
