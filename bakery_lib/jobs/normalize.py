"""Compare job configs the way a person would: ignore what Jenkins changes when it re-saves a job.

Jenkins never hands back the bytes it was given: it re-serializes every saved config (XML 1.1
header, its own indentation, ``plugin="name@version"`` attributes on plugin classes, quotes escaped
differently) and a declarative Pipeline run stores tracker actions under ``<actions>``. Comparing
raw text would report every job as changed on every sync. ``normalized`` turns a config into a
canonical, indented form that keeps every setting and drops only that noise; equal normalized
forms mean "nothing to do", and a unified diff of two normalized forms shows a person what
changed. Also here: the managed marker that generate-jobs writes into every description.
"""

from __future__ import annotations

import difflib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

# Top-level elements Jenkins itself rewrites at run time (not configuration): never compared.
RUNTIME_ELEMENTS = ("actions",)
# Of a folder, its views are managed through the view API (and people add their own): not compared.
FOLDER_RUNTIME_ELEMENTS = ("actions", "folderViews")

MARKER_RE = re.compile(
    r"\[managed-by=ami-bakery kind=(?P<kind>role|release|folder|view) prefix=(?P<prefix>\S*)"
    r"(?: role=(?P<role>[a-z][a-z0-9_-]{0,62}))?\]"
)


@dataclass(frozen=True)
class Marker:
    """What the marker in a managed item's description says about it."""

    kind: str  # role | release | folder | view
    prefix: str  # the catalogue's job_prefix when it was generated
    role: str | None = None

    def text(self) -> str:
        role = f" role={self.role}" if self.role else ""
        return f"[managed-by=ami-bakery kind={self.kind} prefix={self.prefix}{role}]"


def parse_marker(description: str | None) -> Marker | None:
    """The marker in a description, or None for an item generate-jobs does not manage."""
    if not description:
        return None
    m = MARKER_RE.search(description)
    if m is None:
        return None
    return Marker(m.group("kind"), m.group("prefix"), m.group("role"))


def normalized(xml: str, ignore: tuple[str, ...] = RUNTIME_ELEMENTS) -> str:
    """Canonical indented form of a config. Raises ET.ParseError for text that is not XML."""
    root = ET.fromstring(xml)
    clean = _clean(root, top=True, ignore=ignore)
    ET.indent(clean, space="  ")
    return ET.tostring(clean, encoding="unicode") + "\n"


def _clean(el: ET.Element, *, top: bool = False, ignore: tuple[str, ...] = ()) -> ET.Element:
    # Attribute order is not significant in XML; plugin="name@version" only records which plugin
    # version last saved the element.
    attrs = {k: v for k, v in sorted(el.attrib.items()) if k != "plugin"}
    out = ET.Element(el.tag, attrs)
    text = _norm_text(el.text)
    children = [c for c in el if not (top and c.tag in ignore)]
    if text:
        out.text = text
    for child in children:
        out.append(_clean(child))
    return out


def _norm_text(text: str | None) -> str:
    # Forms in the web UI submit CRLF; indentation around elements is not content.
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()


def canonical(xml: str, ignore: tuple[str, ...] = RUNTIME_ELEMENTS) -> tuple:
    """The same normalization as ``normalized``, as nested tuples: cheap to build and compare."""
    root = ET.fromstring(xml)
    return _canon(root, [c for c in root if c.tag not in ignore])


def _canon(el: ET.Element, children: list[ET.Element] | None = None) -> tuple:
    attrs = tuple(sorted((k, v) for k, v in el.attrib.items() if k != "plugin"))
    kids = list(el) if children is None else children
    return (el.tag, attrs, _norm_text(el.text), tuple(_canon(c) for c in kids))


def same_config(desired: str, current: str, ignore: tuple[str, ...] = RUNTIME_ELEMENTS) -> bool:
    try:
        return canonical(desired, ignore) == canonical(current, ignore)
    except ET.ParseError:
        return False


def config_diff(current: str, desired: str, name: str, ignore: tuple[str, ...] = RUNTIME_ELEMENTS) -> str:
    """Unified diff from what Jenkins has to what generate-jobs would write, noise removed."""

    def lines(xml: str) -> list[str]:
        try:
            return normalized(xml, ignore).splitlines(keepends=True)
        except ET.ParseError:
            return xml.splitlines(keepends=True)  # not XML: show it as it is

    diff = difflib.unified_diff(
        lines(current), lines(desired), fromfile=f"jenkins/{name}/config.xml", tofile=f"generated/{name}/config.xml"
    )
    return "".join(diff)
