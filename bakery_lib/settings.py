"""Runtime settings of one bakery process, built once by the CLI from argv and the environment.

Only ``bakery_lib.cli`` reads ``os.environ``; it turns what it read into one frozen ``Settings`` and
passes it down (catalogue path, AWS endpoint, poll interval, Chef API identity, lock wait). The
library below the CLI never looks at the environment, so a test or another program sets exactly
what it means by building a ``Settings``.

Environment read here (through the mapping the CLI hands over): ``BAKERY_CATALOG``,
``AWS_ENDPOINT_URL``, ``BAKERY_POLL_INTERVAL``, ``BAKERY_HEARTBEAT_INTERVAL`` (seconds between a live bake's
``bakery:heartbeat`` beats, default 60: reap judges a bake dead after 5 minutes without one, so keep it at
60 or less; the fault tests set it high so that no beat falls into the calls they count), and for the Chef API ``CHEF_SERVER_URL``,
``CHEF_CLIENT_NAME``, ``CHEF_CLIENT_KEY`` (a knife config may also name ``ENV['X']``, so the Chef
part keeps the whole mapping), and Jenkins' own ``BUILD_URL`` (or ``JOB_NAME`` + ``BUILD_NUMBER``) for the
``bakery:build`` tag of the AMIs a build makes. boto3 reads its own credential chain, as it does everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .catalog import DEFAULT_CATALOG
from .errors import UsageError
from .waits import DEFAULT_INTERVAL

# Polls are batched (one Describe per region for every bake of the process, aws.Batcher), so a short
# interval costs about one call per region every 2 s however many bakes run, and waits notice within ~2 s.
DEFAULT_POLL_INTERVAL = DEFAULT_INTERVAL
DEFAULT_LOCK_WAIT = 600.0
DEFAULT_HEARTBEAT_INTERVAL = 60.0  # = lifecycle.heartbeat.INTERVAL (reap's threshold is counted in it)


def _frozen(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(env or {}))


@dataclass(frozen=True)
class Settings:
    catalog_path: str = DEFAULT_CATALOG
    endpoint_url: str | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    chef_config: str | None = None
    # What Chef credentials are read from (CHEF_* variables, or ENV[...] inside a knife config).
    chef_env: Mapping[str, str] = field(default_factory=_frozen)
    lock_wait: float = DEFAULT_LOCK_WAIT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    # The Jenkins build running this process (``bakery:build`` on its AMIs); None outside Jenkins.
    build: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, catalog: str | None = None, chef_config: str | None = None,
                 lock_wait: float = DEFAULT_LOCK_WAIT) -> Settings:
        """Flags win over variables; a bad variable is a usage error (exit 2) naming it."""
        return cls(
            catalog_path=catalog or env.get("BAKERY_CATALOG") or DEFAULT_CATALOG,
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            poll_interval=poll_interval(env),
            chef_config=chef_config,
            chef_env=_frozen(env),
            lock_wait=lock_wait,
            heartbeat_interval=_seconds(env, "BAKERY_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL, 1, 86400),
            build=jenkins_build(env),
        )


def _seconds(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number of seconds") from None
    if not low <= value <= high:
        raise UsageError(f"{name}={raw!r} must be between {low:g} and {high:g} seconds")
    return value


def jenkins_build(env: Mapping[str, str]) -> str | None:
    """The Jenkins build as its variables name it: ``BUILD_URL`` (set when Jenkins knows its own URL),
    else ``JOB_NAME#BUILD_NUMBER``; None outside Jenkins. At most 256 characters (an EC2 tag value's limit)."""
    url = (env.get("BUILD_URL") or "").strip()
    if url:
        return url[:256]
    job, number = (env.get("JOB_NAME") or "").strip(), (env.get("BUILD_NUMBER") or "").strip()
    return f"{job}#{number}"[:256] if job and number else None


def poll_interval(env: Mapping[str, str]) -> float:
    raw = env.get("BAKERY_POLL_INTERVAL", str(DEFAULT_POLL_INTERVAL))
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"BAKERY_POLL_INTERVAL={raw!r} is not a number of seconds") from None
    if not 0.01 <= value <= 600:
        raise UsageError(f"BAKERY_POLL_INTERVAL={raw!r} must be between 0.01 and 600 seconds")
    return value
