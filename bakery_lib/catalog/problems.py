"""Every problem of a catalogue, collected, each naming the file, the role and the key.

pydantic reports all the field errors of a file in one pass; the merge adds the ones that need the
defaults and the role together. One ``CatalogError`` carries them all: its first line is the first
problem (what scripts and people read first), one line per further problem.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import CatalogError
from .models import MISSING_HINTS, UNION_TAGS, CatalogIn

# Past this many, the rest is counted, not listed (a file of 300 roles with one typo in the defaults
# copied everywhere says so in a screenful).
MAX_SHOWN = 50
CHEF_MISSING = "missing (set it under defaults.chef or on the role)"
ROLE_MISSING = "missing (set it under defaults or on the role)"


class Problems:
    def __init__(self, path: str):
        self.path = path
        self.items: list[tuple[str | None, str | None, str]] = []

    def add(self, message: str, *, role: str | None = None, key: str | None = None) -> None:
        self.items.append((role, key, message))

    def add_error(self, exc: CatalogError) -> None:
        self.add(str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc), role=exc.role, key=exc.key)

    def add_validation(self, exc: ValidationError) -> set[tuple[Any, ...]]:
        """Record pydantic's errors; returns the parts that failed: ('defaults',), ('roles', NAME), ..."""
        failed: set[tuple[Any, ...]] = set()
        for err in exc.errors(include_url=False, include_input=False):
            loc = _user_loc(err["loc"])
            failed.add(loc[:2] if loc[:1] == ("roles",) else loc[:1])
            ctx = err.get("ctx") or {}
            if err["type"] == "catalog" and ctx.get("key") is not None:
                loc = (*loc, ctx["key"])
            self._add_at(loc, _message(err, loc))
        return failed

    def _add_at(self, loc: tuple[Any, ...], message: str) -> None:
        parts = [str(p) for p in loc]
        a_role_key = len(parts) == 2 and message == "keys must be strings"  # roles: {123: ...}
        if parts[:1] == ["roles"] and len(parts) >= 2 and not a_role_key:
            self.add(message, role=parts[1], key=".".join(parts[2:]) or None)
        else:
            self.add(message, key=".".join(parts) or None)

    def raise_if_any(self) -> None:
        """Raise one CatalogError for all the problems, on one line (a build log's line, a script's
        ``2>`` capture): the first problem in full, then "; " and each further one without the file."""
        if not self.items:
            return
        shown = self._first_per_key()
        errors = [CatalogError(self.path, m, role=r, key=k) for r, k, m in shown]
        text = str(errors[0])
        for err in errors[1:MAX_SHOWN]:
            text += "; " + str(err)[len(f"catalogue {self.path}, "):]
        if len(errors) > MAX_SHOWN:
            text += f"; and {len(errors) - MAX_SHOWN} more problems"
        error = CatalogError(self.path, shown[0][2], role=shown[0][0], key=shown[0][1])
        error.args = (text,)
        error.problems = errors  # type: ignore[attr-defined]
        raise error

    def _first_per_key(self) -> list[tuple[str | None, str | None, str]]:
        """One problem per role and list: nine bad items of one list are one problem to fix."""
        seen: set[tuple[str | None, str]] = set()
        out = []
        for role, key, message in self.items:
            parts = (key or "").split(".")
            cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts))
            top = (role, ".".join(parts[:cut]))
            if top not in seen:
                seen.add(top)
                out.append((role, key, message))
        return out


def _user_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The location as the user wrote it: without the union tags pydantic adds after ``base_ami``."""
    out: list[Any] = []
    for part in loc:
        if out and out[-1] == "base_ami" and part in UNION_TAGS:
            continue
        out.append(part)
    return tuple(out)


def _message(err: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "catalog":
        return str((err.get("ctx") or {}).get("message", err["msg"]))
    if kind == "missing":
        name = str(loc[-1])
        return MISSING_HINTS.get(name) or (CHEF_MISSING if "chef" in loc[:-1] else ROLE_MISSING)
    if kind == "extra_forbidden":
        hint = closest(str(loc[-1]), allowed_keys(loc[:-1]))
        return "unknown key" + (f" (did you mean {hint!r}?)" if hint else "")
    return str(err["msg"])


def closest(word: str, choices: set[str]) -> str | None:
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.7)
    return found[0] if found else None


def allowed_keys(loc: tuple[Any, ...]) -> set[str]:
    """The keys the model at ``loc`` (a user location) accepts."""
    t: Any = CatalogIn
    for part in loc:
        t = _model_of(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = t.model_fields.get(str(part))
            if field is None:
                return set()
            t = field.annotation
        else:  # a dict (key) or a tuple (index): step into its values
            args = [a for a in typing.get_args(_strip(t)) if a is not Ellipsis]
            t = args[-1] if args else Any
    t = _model_of(t)
    return set(t.model_fields) if isinstance(t, type) and issubclass(t, BaseModel) else set()


def _strip(t: Any) -> Any:
    while typing.get_origin(t) is typing.Annotated:
        t = typing.get_args(t)[0]
    return t


def _model_of(t: Any) -> Any:
    """``t`` itself, or the model inside an Annotated/Union (``base_ami``'s filter form)."""
    t = _strip(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        for arg in typing.get_args(t):
            inner = _strip(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return t
