"""The validated catalogue, kept for the next process of the same workspace.

A Jenkins build runs one ``bakery`` process per stage, each with the same catalogue file. Validating
it builds the pydantic models first (about 0.2 CPU-s a process, more than anything the stage itself
does); the result depends on nothing but the file's text, its path as given and the bakery's code. So a
process that validated the file leaves the result in the workspace's ``.bakery/`` (next to the bake
records, which hold the same trust: they decide what a cleanup deletes), and a later one whose file,
path and bakery are the same loads it instead of validating again.

- The key is a SHA-256 of the bakery's version, the stamps (size, modification time) of this package's
  modules, the path and the file's bytes: any change to the file, a rename, an upgraded or edited bakery
  validates afresh.
- Only a catalogue that passed is kept: every error comes from a validation of the file as it is now.
- Written only into a ``.bakery/`` that exists already (a bake's records are there): a command that
  writes nothing (``validate``, a bad catalogue) still writes nothing, and a file that cannot be read
  or written is only a validation more.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from pathlib import Path

from .. import __version__
from ..errors import WorkspaceWriteError
from ..fsutil import atomic_write_bytes
from .specs import Catalog

CACHE_NAME = "catalog.pickle"


def load_catalog_cached(path: Path, state_dir: Path) -> Catalog:
    """``load_catalog(path)``, through the cache in ``state_dir`` (see the module docstring)."""
    # The package imports this module's caller, not this module: no cycle at import time
    from . import load_catalog, parse_catalog

    shown = str(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return load_catalog(path)  # says what is wrong with the file
    key = _key(shown, raw)
    cache = state_dir / CACHE_NAME
    hit = _read(cache, key)
    if hit is not None:
        return hit
    # PyYAML (and, in parse_catalog, the models) only on a miss: what a hit saves
    from .yamlfile import parse_yaml

    catalog = parse_catalog(parse_yaml(text, shown), shown)
    if state_dir.is_dir():
        with contextlib.suppress(WorkspaceWriteError, pickle.PicklingError, TypeError, AttributeError):
            atomic_write_bytes(cache, pickle.dumps((key, catalog), protocol=pickle.HIGHEST_PROTOCOL),
                               durable=False)
    return catalog


def _key(shown: str, raw: bytes) -> str:
    digest = hashlib.sha256(f"{__version__}\0{shown}\0".encode())
    here = Path(__file__).resolve().parent
    for module in sorted(here.glob("*.py")):
        st = module.stat()
        digest.update(f"{module.name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    digest.update(raw)
    return digest.hexdigest()


def _read(cache: Path, key: str) -> Catalog | None:
    """The kept catalogue for ``key``; None when there is none, another, or an unreadable one."""
    try:
        data = cache.read_bytes()
    except OSError:
        return None
    try:
        found = pickle.loads(data)  # noqa: S301 (the workspace's own file, see the module docstring)
    except Exception:  # noqa: BLE001 (a torn or foreign file is only a miss)
        return None
    if isinstance(found, tuple) and len(found) == 2 and found[0] == key and isinstance(found[1], Catalog):
        return found[1]
    return None


__all__ = ["CACHE_NAME", "load_catalog_cached"]
