"""A latency-injecting, call-counting HTTP proxy for benchmarks, and an egress guard.

:class:`CountingProxy` listens on 127.0.0.1 and forwards every request to one fixed upstream on
127.0.0.1 (moto server or goiardi), after sleeping a random latency drawn from a seeded generator:
on a laptop moto answers in a millisecond, real AWS API calls take tens of milliseconds, and a
design that makes many sequential calls only shows its cost when each call costs something.

Every request is counted by (agent, service, operation):

- *agent* from the User-Agent: ``bakery`` (boto3 with ``ami-bakery/`` in it), ``boto3`` (other
  boto3: the instance runner), ``aws-cli`` (instance user data), ``packer`` (aws-sdk-go), ``chef``;
- *service* from the SigV4 credential scope (``Credential=AKID/DATE/REGION/SERVICE/aws4_request``),
  which every AWS SDK sends, so it works for every protocol alike;
- *operation* from ``X-Amz-Target`` (JSON protocols: SSM), else the ``Action`` parameter in the query
  string or form body (EC2, IAM, STS, SNS), else a REST name (S3 ``GetObject``...) or, for a Chef
  server, ``METHOD /first-path-segment``. ``DescribeInstances``/``DescribeImages`` filtered by
  ``instance-id``/``image-id`` (the bakery's batched polls) get the suffix ``:batched``.

Each call is also logged with its wall-clock time (``events()``), so calls can be matched to the
stage records (started/finished times) of a bake.

:class:`EgressGuard` is what ``HTTP_PROXY``/``HTTPS_PROXY`` point at while the benchmark runs: every
client library used here (Go's net/http in Packer, botocore, requests) sends non-loopback traffic to
that proxy and loopback traffic directly, so anything that tries to leave the machine is refused
here, recorded, and reported -- nothing can reach a real AWS endpoint by accident.
"""

from __future__ import annotations

import collections
import http.client
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devstack.httpd import LoopbackHTTPServer

LOOPBACK = "127.0.0.1"
# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded; Content-Length is recomputed.
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Expect", "Content-Length", "Proxy-Connection",
))
CREDENTIAL_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")
S3_REST_NAMES = {
    ("GET", True): "GetObject", ("PUT", True): "PutObject", ("HEAD", True): "HeadObject",
    ("DELETE", True): "DeleteObject", ("POST", True): "PostObject",
    ("GET", False): "ListObjects", ("PUT", False): "CreateBucket", ("HEAD", False): "HeadBucket",
    ("DELETE", False): "DeleteBucket", ("POST", False): "PostBucket",
}

Key = tuple[str, str, str]  # (agent, service, operation)
# A Describe call filtered by resource id is how the bakery's Batcher polls many bakes at once; those
# are counted apart (operation + BATCHED) so a report can tell polls from the rest.
BATCHED_POLL_FILTERS = {"DescribeInstances": "instance-id", "DescribeImages": "image-id"}
BATCHED = ":batched"


def agent_of(user_agent: str) -> str:
    ua = user_agent.lower()
    if "ami-bakery/" in ua:
        return "bakery"
    if ua.startswith("aws-cli/") or " aws-cli/" in ua:
        return "aws-cli"
    if "aws-sdk-go" in ua or "packer" in ua:
        return "packer"
    if "chef" in ua or "python-requests" in ua:
        return "chef"
    if "boto3/" in ua or "botocore/" in ua:
        return "boto3"
    return ua.split("/", 1)[0] or "unknown"


def classify_aws(method: str, path: str, headers: Any, body: bytes) -> tuple[str, str]:
    """(service, operation) of one AWS API request."""
    auth = headers.get("Authorization", "") or ""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    m = CREDENTIAL_RE.search(auth) or CREDENTIAL_RE.search("Credential=" + (query.get("X-Amz-Credential") or [""])[0])
    service = m.group(1) if m else "unknown"
    target = headers.get("X-Amz-Target")
    if target:
        return service, target.rsplit(".", 1)[-1]
    action = (query.get("Action") or [None])[0]
    form: dict[str, list[str]] = {}
    if body and "x-www-form-urlencoded" in (headers.get("Content-Type") or ""):
        form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
        action = action or (form.get("Action") or [None])[0]
    if action:
        if action in BATCHED_POLL_FILTERS:
            params = {**query, **form}
            names = {v[0] for k, v in params.items() if k.startswith("Filter.") and k.endswith(".Name")}
            if BATCHED_POLL_FILTERS[action] in names:
                return service, action + BATCHED
        return service, action
    if service == "s3":
        parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
        return service, S3_REST_NAMES.get((method, len(parts) > 1), f"{method} s3")
    return service, f"{method} {urllib.parse.urlsplit(path).path}"


def classify_chef(method: str, path: str) -> tuple[str, str]:
    parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
    if parts[:1] == ["organizations"]:
        parts = parts[2:]  # /organizations/ORG/nodes/x -> nodes
    return "chef", f"{method} /{parts[0] if parts else ''}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class CountingProxy(LoopbackHTTPServer):
    """``with CountingProxy(moto_url, latency=(0.02, 0.05)) as p:`` -> ``p.url``, ``p.snapshot()``.

    ``kind`` is ``"aws"`` or ``"chef"`` (how requests are classified). ``latency`` is the (low, high)
    range in seconds of the delay added before each request is forwarded; ``seed`` makes the sequence
    of delays repeatable.
    """

    def __init__(self, upstream: str, *, kind: str = "aws", latency: tuple[float, float] = (0.02, 0.05),
                 seed: int = 1, name: str = "proxy"):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname != LOOPBACK or parsed.scheme != "http" or not parsed.port:
            raise ValueError(f"{name}: upstream must be http://{LOOPBACK}:PORT, not {upstream!r}")
        self.upstream_host, self.upstream_port = parsed.hostname, parsed.port
        self.kind = kind
        self.latency = latency
        self.name = name
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: collections.Counter[Key] = collections.Counter()
        self._events: list[tuple[float, Key]] = []
        self._errors: list[str] = []
        self.added_latency = 0.0
        self.upstream_time = 0.0  # seconds spent waiting for the upstream's answers (sum over calls)
        self._upstream_by_key: collections.defaultdict[Key, float] = collections.defaultdict(float)  # per key
        self._local = threading.local()
        self.url = ""

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> CountingProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.url = self._serve(Handler, name=f"{self.name}-server", server_class=_Server, poll_interval=0.1)
        return self

    # --- counts --------------------------------------------------------------------------------------
    def snapshot(self) -> collections.Counter[Key]:
        with self._lock:
            return collections.Counter(self._counts)

    def upstream_by_key(self) -> dict[Key, float]:
        """Seconds the upstream took to answer, summed per key, since the last reset."""
        with self._lock:
            return dict(self._upstream_by_key)

    def events(self) -> list[tuple[float, Key]]:
        """(time.time() when the request arrived, key) of every call since the last reset."""
        with self._lock:
            return list(self._events)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._events.clear()
            self.added_latency = 0.0
            self.upstream_time = 0.0
            self._upstream_by_key.clear()

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    # --- used by the handler -------------------------------------------------------------------------
    def _record(self, key: Key, delay: float) -> None:
        with self._lock:
            self._counts[key] += 1
            self._events.append((time.time(), key))
            self.added_latency += delay

    def _delay(self) -> float:
        lo, hi = self.latency
        with self._lock:
            return self._rng.uniform(lo, hi) if hi > 0 else 0.0

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def forward(self, method: str, path: str, headers: list[tuple[str, str]],
                body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                if body or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._drop_connection()
                return resp.status, resp.reason, resp.getheaders(), data
            except (http.client.HTTPException, OSError):  # OSError: resets, timeouts
                # A kept-alive upstream connection closed under us: retry once on a fresh one.
                self._drop_connection()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class _Handler(BaseHTTPRequestHandler):
    owner: CountingProxy
    protocol_version = "HTTP/1.1"  # keep-alive towards the clients, as AWS endpoints do

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # quiet: the counts are the log

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.owner
        body = self._read_body()
        if owner.kind == "chef":
            service, operation = classify_chef(self.command, self.path)
        else:
            service, operation = classify_aws(self.command, self.path, self.headers, body)
        key = (agent_of(self.headers.get("User-Agent") or ""), service, operation)
        delay = owner._delay()
        owner._record(key, delay)
        if delay:
            time.sleep(delay)
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
        started = time.monotonic()
        try:
            status, reason, resp_headers, data = owner.forward(self.command, self.path, headers, body)
            spent = time.monotonic() - started
            with owner._lock:
                owner.upstream_time += spent
                owner._upstream_by_key[key] += spent
        except Exception as exc:  # upstream down: answer 502 and remember why
            with owner._lock:
                owner._errors.append(f"{self.command} {self.path}: {type(exc).__name__}: {exc}")
            status, reason, resp_headers, data = 502, "Bad Gateway", [], str(exc).encode()
        self.send_response(status, reason)
        for name, value in resp_headers:
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class EgressGuard(LoopbackHTTPServer):
    """An HTTP(S) proxy that refuses everything: point HTTP_PROXY/HTTPS_PROXY at ``url``.

    ``attempts`` lists what something tried to reach outside 127.0.0.1 (CONNECT host:port or an
    absolute URL); the benchmark fails if it is not empty.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._lock = threading.Lock()
        self.url = ""

    def start(self) -> EgressGuard:
        guard = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _refuse(self) -> None:
                with guard._lock:
                    guard.attempts.append(f"{self.command} {self.path}")
                self.send_response(403, "Forbidden by the benchmark's egress guard")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_CONNECT = do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _refuse

        self.url = self._serve(Handler, name="egress-guard", server_class=_Server, poll_interval=0.1)
        return self

    def env(self) -> dict[str, str]:
        """Proxy variables (both spellings: Go reads either, Python both) for a child process."""
        no_proxy = f"{LOOPBACK},localhost"
        return {"HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "http_proxy": self.url,
                "https_proxy": self.url, "NO_PROXY": no_proxy, "no_proxy": no_proxy}



def by_operation(counts: collections.Counter[Key], agents: Iterable[str] | None = None) -> collections.Counter[str]:
    """``service.Operation`` -> calls, for the given agents (all when None)."""
    wanted = set(agents) if agents is not None else None
    out: collections.Counter[str] = collections.Counter()
    for (agent, service, operation), n in counts.items():
        if wanted is None or agent in wanted:
            out[f"{service}.{operation}"] += n
    return out
