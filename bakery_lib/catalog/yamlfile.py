"""Read a catalogue file as YAML: libyaml's C parser where PyYAML has it, duplicate keys refused.

The C loader parses the 300-role catalogue of a job render several times faster than PyYAML's pure
Python one; both construct through the same duplicate-key check, so they give the same errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import CatalogError

# Deeper than any catalogue needs; refused before libyaml's C composer (which has no recursion limit
# of its own) or PyYAML's Python one (RecursionError) gets to it.
MAX_DEPTH = 100


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    """A second ``web:`` must not silently replace the first."""
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key is reported by the validation ("keys must be strings")
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


class StrictPyLoader(yaml.SafeLoader):
    """PyYAML's pure-Python SafeLoader, refusing duplicate keys."""


StrictPyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)

if getattr(yaml, "__with_libyaml__", False):
    class StrictCLoader(yaml.CSafeLoader):
        """libyaml's CSafeLoader, refusing duplicate keys."""

    StrictCLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
    StrictLoader: type = StrictCLoader
else:  # pragma: no cover - PyYAML built without libyaml
    StrictLoader = StrictPyLoader


def _too_deep(text: str) -> bool:
    """True when flow or block nesting may exceed MAX_DEPTH (a cheap bound, checked before parsing)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH and len(text) < 64 * MAX_DEPTH:
        return False
    depth = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "]}":
            depth = max(0, depth - 1)
    return False


def read_yaml(path: Path, loader: type | None = None) -> Any:
    """The file's data; CatalogError naming the file for anything unreadable or not YAML."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(shown, "file not found (give --catalog PATH or set BAKERY_CATALOG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(shown, f"cannot read: {exc}") from None
    return parse_yaml(text, shown, loader)


def parse_yaml(text: str, shown: str, loader: type | None = None) -> Any:
    if _too_deep(text):
        raise CatalogError(shown, "invalid YAML: nested too deeply")
    loader = loader or StrictLoader
    try:
        return _load(text, shown, loader)
    except CatalogError:
        if loader is StrictPyLoader:
            raise
        # libyaml words its syntax errors its own way: say what PyYAML says, whichever loader read it
        # (a file that fails is read twice; one that loads, once).
        return _load(text, shown, StrictPyLoader)


def _load(text: str, shown: str, loader: type) -> Any:
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (SafeLoader subclasses)
    except RecursionError:
        raise CatalogError(shown, "invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CatalogError(shown, f"invalid YAML{where}: {problem}") from None
