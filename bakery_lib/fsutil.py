"""The one atomic file writer of the bakery: temp file in the same directory, fsync, rename, fsync of the
directory.

A kill (or a full disk) at any moment leaves either the old file or the new one, never a torn one:
bake state, JUnit reports, artifacts, the summary and rendered job XML are all written through here.
A write that fails (``ENOSPC``, ``EROFS``, ``EACCES``...) raises ``WorkspaceWriteError`` naming the
file: a bake fails on it like on any stage failure (exit 1, torn down), never with a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import WorkspaceWriteError


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably; returns ``path``.

    ``durable=False`` keeps the atomicity (a reader sees the old file or the new one, never a torn one:
    the rename does that) but not the fsyncs: for files that are regenerated at will (job XML under
    ``generate-jobs --output-dir``), where 600 fsyncs for 300 jobs cost more than the rendering."""
    try:
        return _write(path, text, durable)
    except OSError as exc:
        raise WorkspaceWriteError(path, exc) from None


def _write(path: Path, text: str, durable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not durable:
        return path
    # The rename itself is durable only once the directory entry is on disk.
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
