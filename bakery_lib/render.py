"""The one Jinja2 environment of the bakery: StrictUndefined, XML autoescape, sh/ps1 quoting filters.

Every value from the catalogue that reaches a shell script, a PowerShell script or job XML goes
through a filter here: ``sh`` (POSIX single quotes), ``ps`` (PowerShell single quotes), ``xml``
(autoescape, on by default for ``*.xml.j2``), ``json`` (compact JSON; pipe through ``sh``/``ps``
when it lands in a script).
"""

from __future__ import annotations

import functools
import json
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2


def templates_root() -> Path:
    """The packaged ``templates/`` (package ``bakery_templates``), else the source tree's."""
    try:
        root = Path(str(resources.files("bakery_templates")))
        if root.is_dir():
            return root
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "templates"


def sh_quote(value: Any) -> str:
    """Quote for POSIX sh: one word, nothing expanded.

    Always quoted, even when shlex would leave a word bare: ``ROLE=n-0`` bare reads to shellcheck
    like arithmetic (SC2100), and a quoted word can never be misread by shell or linter. A value with
    ``$``, a backquote or a backslash goes in double quotes with those (and ``"``) escaped: just as
    inert, and shellcheck does not take a literal ``'$(...)'`` or ``'x\\'`` for a mistake
    (SC2016/SC1003).
    """
    text = str(value)
    if any(c in text for c in "$`\\"):
        return '"' + "".join("\\" + c if c in '$`"\\' else c for c in text) + '"'
    quoted = shlex.quote(text)
    return quoted if quoted.startswith("'") else "'" + text + "'"


def ps_quote(value: Any) -> str:
    """Quote for PowerShell: a single-quoted verbatim string (only ' needs doubling)."""
    text = str(value)
    # PowerShell also treats the typographic single quotes as quote characters.
    for q in ("'", "\u2018", "\u2019", "\u201a", "\u201b"):
        text = text.replace(q, q + q)
    return "'" + text + "'"


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith((".xml.j2", ".html.j2", ".xml"))


@functools.lru_cache(maxsize=4)
def environment(root: str | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root or str(templates_root())),
        undefined=jinja2.StrictUndefined,
        autoescape=_autoescape,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sh"] = sh_quote
    env.filters["ps"] = ps_quote
    env.filters["json"] = to_json
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
