"""The only module that imports boto3/botocore.

- Clients per (service, region) with botocore's ``standard`` retry mode (throttling such as
  ``RequestLimitExceeded`` and transient 5xx errors are retried with jittered exponential backoff and a
  retry quota; the AWS SDKs and Tools Reference Guide, "Retry behavior", recommends ``standard`` and calls
  ``adaptive`` a specialised mode for a single resource and client, which the bakery's many bakes per
  account are not) and an endpoint override (``AWS_ENDPOINT_URL``, honoured by botocore itself; passed
  explicitly too so older botocore behaves the same).
- An error AWS answers for a missing permission names the IAM action to grant (``iam_action``), and
  ``bakery iam-policy`` prints the whole policy.
- ``call()`` turns ``ClientError`` and connection/credential errors into the bakery's own errors that
  say which operation failed, the AWS error code, and what to do next.
- A shared cap on concurrent mutating calls keeps parallel bakes from tripping account-wide rate limits.
- Throttling storms: clients are shared by every bake of the process, so botocore's adaptive rate
  limiter and its retry quota are already one budget per (service, region). When a call is still
  throttled after botocore's retries (the storm outlasted them, or the retry quota is spent), the
  :class:`ThrottleGate` of that (service, region, bucket) pauses *every* bake's calls of that bucket with a growing,
  jittered back-off and the call is tried again, a few rounds: the bakes slow down together instead of
  each failing on its own. Transient server errors (``InternalError``, ``ServiceUnavailable``, HTTP
  5xx) that outlast botocore's retries share that budget: a service having a bad minute pauses the
  bakes instead of failing them (EC2 API reference, "Error codes": "retry the request").
- Capacity errors (``InsufficientInstanceCapacity``, ``Unsupported``) persist: RunInstances goes
  through a client without botocore retries (those would only add a minute of back-off per refused
  placement); throttling and 5xx of RunInstances are retried here instead, and launch falls back to the
  next instance type / subnet.
- Every API call is counted (for benchmarks and ``bakery bake`` summaries); so is every poll round of
  the bakes' waits (``rounds``, fed by ``waits.Wait`` through the bakes' clocks).
"""

from __future__ import annotations

import base64
import binascii
import collections
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import boto3
import botocore
import botocore.exceptions
import botocore.loaders
import botocore.parsers
from botocore.config import Config

from . import __version__
from .clock import Clock, PollRounds
from .errors import AwsError, BakeryError, UsageError

# A bake instance in one of these states is a bake in flight (preflight and launch refuse a second).
IN_FLIGHT_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]

_MUTATING_PREFIXES = ("Create", "Delete", "Run", "Terminate", "Stop", "Start", "Put", "Attach", "Detach",
                      "Authorize", "Revoke", "Register", "Deregister", "Copy", "Modify", "Add", "Remove",
                      "Update", "Publish", "Tag", "Untag")


# Error codes AWS uses for throttling (EC2, IAM/STS/SNS, SSM, S3...): retried through the ThrottleGate.
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException", "ThrottledException",
                            "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
                            "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException"})
# Transient server errors: botocore retries them, except on the calls made without SDK retries.
TRANSIENT_CODES = frozenset({"InternalError", "InternalFailure", "InternalServerError", "ServiceUnavailable",
                             "Unavailable", "500", "502", "503", "504"})
# The request went out and no answer came back: retried only for calls made idempotent by a ClientToken.
TIMEOUT_CODES = frozenset({"ReadTimeoutError", "ConnectionClosedError"})
# Calls whose errors botocore must not retry (see the module docstring).
NO_SDK_RETRY = frozenset({"RunInstances"})
STORM_ROUNDS = 4
# The batched polls of a region start at least this long apart, however many bakes ask (see Batcher).
POLL_MIN_GAP = 1.5


NO_CREDENTIALS = ("no AWS credentials found: give the agent an instance profile, use the Jenkins AWS "
                  "credentials binding, or set AWS_PROFILE / AWS_ACCESS_KEY_ID")


class CallCounter:
    """Counts API calls by ``service.Operation`` (thread safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, event_name: str = "", **_: Any) -> None:
        # event_name: before-call.ec2.RunInstances
        parts = event_name.split(".")
        key = ".".join(parts[1:3]) if len(parts) >= 3 else event_name
        with self._lock:
            self.counts[key] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


# (service, region, bucket): see ``Aws.gate_key``.
GateKey = tuple[str, str, str]


class ThrottleGate:
    """A back-off shared by every bake of the process, per (service, region, bucket) (``Aws.gate_key``).

    ``trip`` (a call still throttled after botocore's retries) pushes the shared "not before" time out by
    a jittered 1, 2, 4... s (at most 30); every call waits for it in ``wait`` before going out; a
    success lowers the level again. Sleeps wake early on the caller's cancel event.
    """

    MAX_DELAY = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_before: dict[GateKey, float] = {}
        self._level: dict[GateKey, int] = {}

    def remaining(self, key: GateKey) -> float:
        """Seconds until calls for ``key`` may go out again (0 when they may now)."""
        with self._lock:
            return max(0.0, self._not_before.get(key, 0.0) - time.monotonic())

    def wait(self, key: GateKey, cancel: threading.Event | None = None) -> None:
        delay = self.remaining(key)
        if delay > 0:
            (cancel or threading.Event()).wait(delay)

    def trip(self, key: GateKey) -> float:
        with self._lock:
            level = self._level.get(key, 0) + 1
            self._level[key] = level
            delay = min(2.0 ** (level - 1), self.MAX_DELAY) * random.uniform(0.5, 1.0)
            self._not_before[key] = max(self._not_before.get(key, 0.0), time.monotonic() + delay)
            return delay

    def tripped(self) -> list[GateKey]:
        """The keys this gate ever backed off (each once)."""
        with self._lock:
            return sorted(self._level)

    def ok(self, key: GateKey) -> None:
        with self._lock:
            if self._level.get(key):
                self._level[key] -= 1


# botocore's data loader (service models, endpoints, partitions) per AWS_DATA_PATH: one per process.
_LOADERS: dict[str | None, botocore.loaders.Loader] = {}
_LOADERS_LOCK = threading.Lock()


def shared_loader(data_path: str | None = None) -> botocore.loaders.Loader:
    """The process's one botocore ``Loader`` for ``data_path`` (``AWS_DATA_PATH``).

    Each botocore session has a loader of its own, which reads and parses every service model its
    clients need (EC2's is a 4 MB JSON: 0.1-0.2 CPU-s) and lists the installed services (a directory scan)
    once per session. The models depend on the installed botocore and the data path alone, so every
    ``Aws`` of the process (an in-process test makes one per case) shares one loader: a model is parsed
    once per process. boto3's own data (its resource models) is on its search path, as on boto3's."""
    with _LOADERS_LOCK:
        loader = _LOADERS.get(data_path)
        if loader is None:
            loader = botocore.loaders.create_loader(data_path)
            boto3_data = os.path.join(os.path.dirname(boto3.__file__), "data")
            if boto3_data not in loader.search_paths:
                loader.search_paths.append(boto3_data)
            _LOADERS[data_path] = loader
        return loader


class Aws:
    """boto3 clients for one bakery process, shared by all bakes running in it."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 10,
        mutating_concurrency: int = 8,
        session: boto3.session.Session | None = None,
    ):
        # The CLI passes AWS_ENDPOINT_URL (Settings); the library never reads the environment itself.
        self.endpoint_url = endpoint_url or None
        self._session = session or boto3.session.Session()
        # boto3 keeps its botocore session there (no public name): its clients read the shared models.
        core = self._session._session
        core.register_component("data_loader", shared_loader(core.get_config_variable("data_path")))
        self._config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=60,
            user_agent_extra=f"ami-bakery/{__version__}",
            max_pool_connections=50,
        )
        # Without botocore retries, for NO_SDK_RETRY calls (this class retries throttling for them).
        self._config_once = self._config.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))
        self.gate = ThrottleGate()
        self._clients: dict[tuple[str, str, bool], Any] = {}
        self._lock = threading.Lock()
        self.counter = CallCounter()
        # Poll rounds of the waits of every bake of the process (their clocks share it, see clock.PollRounds).
        self.rounds = PollRounds()
        self.mutations = threading.BoundedSemaphore(mutating_concurrency)
        self._hooks: list[tuple[str, Callable[..., Any]]] = []
        self._regions: set[str] | None = None
        # Regions whose CreateImage refused snapshot TagSpecifications (moto answers 500 to them), and
        # the lock one bake holds while it finds out for a region, so concurrent bakes ask once.
        self.no_snapshot_tag_specs: set[str] = set()
        self.snapshot_tag_specs_known: set[str] = set()
        self.snapshot_tag_specs_probe = threading.Lock()
        # Polls and look-ups of many concurrent bakes share one Describe call per region (see Batcher).
        self.instances = Batcher(self._fetch_instances, min_gap=POLL_MIN_GAP)
        self.images = Batcher(self._fetch_images, min_gap=POLL_MIN_GAP)
        # Bake instances in flight, by role (preflight's and launch's checks for another bake).
        self.bakes_in_flight = Batcher(self._fetch_bakes_in_flight, linger=0.05)
        # The available AMIs of each role, by role (preflight's look-up: a reusable AMI, and what the
        # SBOM's diff and publish's deprecation of superseded AMIs need, see stages.preflight).
        self.amis_by_role = Batcher(self._fetch_amis_by_role, linger=0.05)

    def add_hook(self, event: str, handler: Callable[..., Any]) -> None:
        """Register a botocore event handler on every client (existing and future): fault injection."""
        with self._lock:
            self._hooks.append((event, handler))
            for client in self._clients.values():
                client.meta.events.register(event, handler)

    def _check_region(self, region: str) -> None:
        """Refuse a region botocore does not know: on AWS it would only show up as a DNS failure
        after minutes of retries (with an endpoint override, as an opaque server error)."""
        if self._regions is None:
            known: set[str] = set()
            for partition in self._session.get_available_partitions():
                known.update(self._session.get_available_regions("ec2", partition))
            self._regions = known
        if region not in self._regions:
            raise UsageError(
                f"unknown AWS region {region!r}: no such region in any AWS partition known to botocore "
                f"{botocore.__version__} (check the catalogue's region/copy_to_regions or --region; "
                "if the region is brand new, upgrade boto3)"
            )

    def client(self, service: str, region: str, *, sdk_retries: bool = True) -> Any:
        key = (service, region, sdk_retries)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                self._check_region(region)
                try:
                    client = self._session.client(  # type: ignore[call-overload]  # service is a runtime name
                        service, region_name=region, endpoint_url=self.endpoint_url,
                        config=self._config if sdk_retries else self._config_once,
                    )
                except botocore.exceptions.BotoCoreError as exc:
                    raise UsageError(f"cannot create an AWS {service} client for region {region!r}: {exc}") from None
                client.meta.events.register("before-call", self.counter)
                for event, handler in self._hooks:
                    client.meta.events.register(event, handler)
                self._clients[key] = client
            return client

    def call(self, service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        """Call ``operation`` (CamelCase, as in the AWS API) and translate errors.

        Still throttled after botocore's own retries: the shared gate backs every bake off, then the
        call is tried again (``STORM_ROUNDS`` in all)."""
        key = self.gate_key(service, region, operation)
        sdk_retries = operation not in NO_SDK_RETRY
        for round_no in range(STORM_ROUNDS):
            self.gate.wait(key)
            try:
                result = self._call_once(service, region, operation, sdk_retries, params)
            except AwsError as exc:
                retry = (exc.code in THROTTLE_CODES or exc.code in TRANSIENT_CODES
                         # No answer to a call carrying a ClientToken: the same call again is safe
                         # (AWS answers a replay with the first call's result).
                         or (exc.code in TIMEOUT_CODES and "ClientToken" in params))
                if not retry or round_no == STORM_ROUNDS - 1:
                    raise
                self.gate.trip(key)
                continue
            self.gate.ok(key)
            return result
        raise AssertionError("unreachable")

    @staticmethod
    def gate_key(service: str, region: str, operation: str) -> GateKey:
        """Which back-off a call waits for. EC2 throttles each API on its own token bucket, per account and
        Region ("each API is evaluated individually": EC2 API reference, "Request throttling"), so a
        throttled DescribeInstances pauses DescribeInstances, not CreateTags or RunInstances (RunInstances'
        resource bucket is its own API's too). Other services' limits are shared per service here."""
        return (service, region, operation if service == "ec2" else "*")

    def _call_once(self, service: str, region: str, operation: str, sdk_retries: bool,
                   params: dict[str, Any]) -> dict[str, Any]:
        client = self.client(service, region, sdk_retries=sdk_retries)
        method = getattr(client, _snake(operation))
        mutating = operation.startswith(_MUTATING_PREFIXES)
        if mutating:
            self.mutations.acquire()
        try:
            result: dict[str, Any] = method(**params)
            return result
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "Unknown")
            message = str(err.get("Message") or exc)
            if code == "403":
                # A refusal whose body the protocol could not parse (an XML error to a JSON API): the
                # status says enough, the body would only be noise in the one-paragraph reason.
                message = "access denied (HTTP 403)"
            raise AwsError(operation, code, message,
                           hint=_hint(code, iam_action(service, operation))) from None
        except botocore.exceptions.NoCredentialsError:
            raise UsageError(NO_CREDENTIALS) from None
        except botocore.exceptions.EndpointConnectionError as exc:
            raise AwsError(operation, "EndpointConnectionError", str(exc),
                           hint=f"check the region {region!r} and AWS_ENDPOINT_URL") from None
        except botocore.exceptions.ParamValidationError as exc:
            raise BakeryError(f"AWS {operation}: invalid request: {exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise AwsError(operation, type(exc).__name__, str(exc)) from None
        except botocore.parsers.ResponseParserError as exc:
            # Not a BotoCoreError: an answer that is not the service's XML/JSON (an HTML error page from
            # something in between); its text carries the whole body, so only its start is kept.
            raise AwsError(operation, "ResponseParserError", str(exc)[:300]) from None
        finally:
            if mutating:
                self.mutations.release()

    def wait(self, service: str, region: str, waiter: str, **params: Any) -> None:
        """Run a botocore waiter; its failures become AwsError like any call's (never a traceback)."""
        w = self.client(service, region).get_waiter(waiter)
        what = f"{w.config.operation} ({waiter} waiter)"
        try:
            w.wait(**params)
        except botocore.exceptions.WaiterError as exc:
            err = (exc.last_response or {}).get("Error", {})
            code = str(err.get("Code") or "WaiterFailed")
            raise AwsError(what, code, str(err.get("Message") or exc.kwargs.get("reason") or exc),
                           hint=_hint(code)) from None
        except botocore.exceptions.NoCredentialsError:
            raise UsageError(NO_CREDENTIALS) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise AwsError(what, type(exc).__name__, str(exc)) from None

    def paginate(self, service: str, region: str, operation: str, key: str, **params: Any) -> list[Any]:
        """Every page of a list call: ``NextToken`` (EC2, SSM...), or IAM's ``Marker`` / ``IsTruncated``."""
        out: list[Any] = []
        token_name = "Marker" if service == "iam" else "NextToken"
        while True:
            page = self.call(service, region, operation, **params)
            out.extend(page.get(key, []))
            token = page.get(token_name)
            if not token or (service == "iam" and not page.get("IsTruncated")):
                return out
            params[token_name] = token

    def account_id(self, region: str) -> str:
        return self.call("sts", region, "GetCallerIdentity")["Account"]

    # --- EC2 helpers shared by stages, cleanup, reap and prune ------------------------------------

    def describe_instances(self, region: str, instance_ids: Iterable[str] = (), filters: list[dict] | None = None) -> list[dict]:
        params: dict[str, Any] = {}
        ids = list(instance_ids)
        if ids:
            params["InstanceIds"] = ids
        if filters:
            params["Filters"] = filters
        try:
            reservations = self.paginate("ec2", region, "DescribeInstances", "Reservations", **params)
        except AwsError as exc:
            if exc.code == "InvalidInstanceID.NotFound":
                return []
            raise
        return [i for r in reservations for i in r.get("Instances", [])]

    def describe_images(self, region: str, image_ids: Iterable[str] = (), **params: Any) -> list[dict]:
        ids = list(image_ids)
        if ids:
            params["ImageIds"] = ids
        else:
            # Accounts hold thousands of AMIs: page through them (EC2 refuses MaxResults with ImageIds).
            params.setdefault("MaxResults", 1000)
        try:
            return self.paginate("ec2", region, "DescribeImages", "Images", **params)
        except AwsError as exc:
            if exc.code in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
                return []
            raise

    def _fetch_instances(self, region: str, ids: list[str]) -> dict[str, Any]:
        found = self.describe_instances(region, filters=[{"Name": "instance-id", "Values": ids}])
        return {i["InstanceId"]: i for i in found}

    def _fetch_images(self, region: str, ids: list[str]) -> dict[str, Any]:
        found = self.describe_images(region, Filters=[{"Name": "image-id", "Values": ids}])
        return {i["ImageId"]: i for i in found}

    def _fetch_bakes_in_flight(self, region: str, roles: list[str]) -> dict[str, Any]:
        found = self.describe_instances(region, filters=[
            {"Name": "tag:bakery:role", "Values": roles},
            {"Name": "tag:bakery:purpose", "Values": ["bake"]},
            {"Name": "instance-state-name", "Values": IN_FLIGHT_STATES},
        ])
        return _group_by_tag(found, "bakery:role")

    def _fetch_amis_by_role(self, region: str, roles: list[str]) -> dict[str, Any]:
        found = self.describe_images(region, Owners=["self"], Filters=[
            {"Name": "tag:bakery:role", "Values": roles},
            {"Name": "state", "Values": ["available"]},
        ])
        return _group_by_tag(found, "bakery:role")

    def console_tail(self, region: str, instance_id: str, lines: int = 40) -> str:
        """The last lines of the instance's console output ('' when there is none yet)."""
        try:
            out = self.call("ec2", region, "GetConsoleOutput", InstanceId=instance_id, Latest=True).get("Output") or ""
        except AwsError as exc:
            if exc.code in ("UnsupportedOperation", "InvalidParameterValue"):
                out = self.call("ec2", region, "GetConsoleOutput", InstanceId=instance_id).get("Output") or ""
            else:
                return f"(console output unavailable: {exc.code})"
        text = decode_console(out)
        return "\n".join(text.splitlines()[-lines:])


def decode_console(output: str) -> str:
    """AWS returns base64, moto plain text: decode when it is base64, else use as is."""
    stripped = output.strip()
    if not stripped:
        return ""
    try:
        raw = base64.b64decode(stripped, validate=True)
        return raw.decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return output


def _group_by_tag(resources: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in resources:
        value = tags_of(r).get(key)
        if value is not None:
            out[value].append(r)
    return dict(out)


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", []) or []}


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _snake(operation: str) -> str:
    out = []
    for i, ch in enumerate(operation):
        if ch.isupper() and i and (not operation[i - 1].isupper() or (i + 1 < len(operation) and operation[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


# Operations whose IAM action has another name (Service Authorization Reference).
_ACTION_NAMES = {"s3:HeadObject": "s3:GetObject", "s3:ListObjectsV2": "s3:ListBucket",
                 "s3:HeadBucket": "s3:ListBucket"}
DENIED_CODES = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "403"})


def iam_action(service: str, operation: str) -> str:
    """The IAM action an API operation needs, e.g. ``ec2:RunInstances``."""
    action = f"{service}:{operation}"
    return _ACTION_NAMES.get(action, action)


def _hint(code: str, action: str = "") -> str:
    if code in DENIED_CODES:
        if action:
            return (f"the bakery's AWS identity lacks the permission {action}; "
                    "`bakery iam-policy` prints the policy it needs")
        return "the bakery's AWS identity lacks this permission"
    if code in ("AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"):
        return "the AWS credentials are invalid or expired"
    if code == "VcpuLimitExceeded":
        return ("the account's On-Demand vCPU quota for this instance family is used up: stop or terminate "
                "instances of that family, or request a higher quota (Service Quotas, 'Running On-Demand ... instances')")
    if code in ("InsufficientInstanceCapacity", "InstanceLimitExceeded"):
        return "try another instance type or subnet, or raise the limit"
    return ""


class Batcher:
    """Coalesces the Describe calls of many concurrent bakes into one call per region.

    Each bake asks for its own key (an instance id, an image id, a role); the first to
    find the cached answer too old fetches the answers for every key asked for recently in one call
    (``fetch(region, keys) -> {key: answer}``, filtered by key, so a vanished id does not fail the
    whole call), the others use that answer. With N bakes polling every P seconds this makes about
    one call per P seconds instead of N. ``max_age=0`` asks for an answer fetched after the question
    (a check that must see the present, e.g. for another bake that just launched). ``linger`` waits
    that long before fetching, so that bakes starting together share their first call. ``min_gap``:
    a fetch for a region starts at least that long (at most the caller's ``max_age``) after the
    previous one started; a caller that needs
    a fresher answer waits for the next fetch, which includes its key. So 20 bakes entering a wait at
    slightly different moments (each with a key not cached yet) make one call per ``min_gap``, not 20.
    Time is the Batcher's own ``clock``; the waits (``linger``, the gap) sleep on the asking bake's
    clock (``get(..., clock=)``), so an abort of that bake ends them at once.
    """

    CHUNK = 100
    FORGET_AFTER = 600.0

    def __init__(self, fetch: Callable[[str, list[str]], dict[str, Any]], *, linger: float = 0.0,
                 min_gap: float = 0.0, clock: Clock | None = None):
        self._fetch = fetch
        self._clock = clock or Clock()
        self._linger = linger
        self._min_gap = min_gap
        self._last_fetch: dict[str, float] = {}
        self._lock = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._wanted: dict[str, dict[str, float]] = collections.defaultdict(dict)  # region -> key -> last asked
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, region: str, key: str, max_age: float = 0.0, *, clock: Clock | None = None) -> Any:
        """The answer for ``key``, fetched at most ``max_age`` seconds ago; sleeps on ``clock`` (the asker's)."""
        pace = clock or self._clock
        now = self._clock.now()
        with self._lock:
            self._wanted[region][key] = now
            hit = self._cache.get((region, key))
        if hit is not None and now - hit[0] <= max_age:
            return hit[1]
        if self._linger:
            pace.sleep(self._linger)
        with self._fetch_locks[region]:
            with self._lock:
                hit = self._cache.get((region, key))
                if hit is not None and hit[0] >= now:
                    return hit[1]  # fetched by another bake while this one waited for the lock
                # Never wait longer than the caller's own poll age: fast test polls stay fast.
                gap = self._last_fetch.get(region, -1e9) + min(self._min_gap, max_age) - self._clock.now()
            if gap > 0:
                pace.sleep(gap)  # holding the region's fetch lock: the bakes asking meanwhile queue up
            with self._lock:
                keys = [k for k, t in self._wanted[region].items() if now - t < self.FORGET_AFTER]
                self._wanted[region] = {k: self._wanted[region][k] for k in keys}
            fetched_at = self._clock.now()
            self._last_fetch[region] = fetched_at
            found: dict[str, Any] = {}
            for start in range(0, len(keys), self.CHUNK):
                found.update(self._fetch(region, keys[start:start + self.CHUNK]))
            with self._lock:
                for k in keys:
                    self._cache[(region, k)] = (fetched_at, found.get(k))
            return found.get(key)

    def forget(self, region: str, key: str) -> None:
        """Stop asking for ``key`` (its bake no longer polls it)."""
        with self._lock:
            self._wanted[region].pop(key, None)
            self._cache.pop((region, key), None)
