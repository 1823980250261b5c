"""AMI lifecycle: ``bakery prune`` (old AMIs of a role) and ``bakery reap`` (what killed runs left behind).

Both decide first and act second: every removal goes through one executor (``CleanupReport``), which
carries it out or, with ``dry_run``, only shows it; every resource looked at gets one report line with
the action taken (or that would be taken) and the reason. A dry run makes only Describe/Get/List calls.

The rooms, in the order of a run:

- ``durations``: ``--older-than`` values (``parse_duration``), AWS timestamps, ages in report lines;
- ``prune``: the AMIs of a role beyond its newest ``keep``, what still uses them, their deletion;
- ``survey``: reap's look (Describe/List only), per region and bake; instances not listed yet;
- ``plan``: reap's decision, a frozen ``ReapPlan`` (what stays and why, which bakes are torn down);
- ``reap``: look, decide, act (each abandoned bake through the stages' teardown loop);
- ``report``: reap's report lines, errors and exit code.
"""

from __future__ import annotations

from .durations import parse_duration
from .prune import PruneReport, prune
from .reap import reap
from .report import ReapReport

__all__ = ["PruneReport", "ReapReport", "parse_duration", "prune", "reap"]
