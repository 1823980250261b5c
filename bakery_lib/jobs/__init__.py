"""generate-jobs: the Jenkins side of the bakery, rendered from the catalogue and synced.

Decide, then do (as Chalice's deployer does): ``render`` turns the catalogue into ``Item``s (the
exact config.xml of every folder, job and view), ``plan`` reads what Jenkins has and decides
create/update/delete/unchanged per item as frozen ``Action``s, ``execute`` carries a plan out
through ``manager.JenkinsManager`` (the only code that talks to python-jenkins) or ``show_plan``
prints it for ``--dry-run``, and ``report`` writes the JUnit report and the one-line summary.
``normalize`` holds the config comparison and the managed marker; ``cli.main`` is the command.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names, imported on first use: `generate-jobs --output-dir` must not pay for importing
# python-jenkins and requests, which only a sync needs.
_EXPORTS = {
    "Action": "plan", "Plan": "plan", "RemoteState": "plan", "decide": "plan", "read_remote": "plan",
    "Outcome": "execute", "execute": "execute", "show_plan": "execute",
    "JenkinsError": "manager", "JenkinsManager": "manager",
    "Marker": "normalize", "normalized": "normalize", "parse_marker": "normalize", "same_config": "normalize",
    "Item": "render", "render_items": "render", "write_output_dir": "render",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
