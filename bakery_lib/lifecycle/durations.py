"""Durations and times of the lifecycle commands: ``--older-than`` values, AWS timestamps, ages in reports."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any

from ..errors import UsageError


def parse_duration(text: str, *, option: str = "--older-than") -> float:
    """``90s``, ``45m``, ``2h``, ``3d``, ``1w`` or combinations like ``1h30m`` -> seconds.

    A bare number is refused (except ``0``): in the catalogue a bare number means minutes, so on the
    command line it would be ambiguous, and a cron job deleting things must not guess.
    """
    value = text.strip().lower()
    if value == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", value)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw])", "", value).strip():
        raise UsageError(f"{option} {text!r}: expected a duration such as 90s, 45m, 2h, 3d, 1w or 1h30m")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return float(sum(float(n) * unit[u] for n, u in parts))


def parse_time(value: Any) -> float | None:
    """An AWS/ISO 8601 time (``2024-05-01T12:00:00Z``, ``...000Z``, a datetime) -> epoch seconds (UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def span(seconds: float) -> str:
    """A duration as report lines show it: seconds, minutes, hours or days."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
