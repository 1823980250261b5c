"""A fault-injecting HTTP proxy in front of moto server, for the bakery CLI running in a subprocess.

The CLI under test gets ``AWS_ENDPOINT_URL`` = this proxy; the instance runner and the test's own
checks keep talking to moto directly, so only the bakery's calls can be failed. Every request is
forwarded unchanged (moto does not check signatures) and logged as one :class:`Call`; a rule may
answer a chosen call with an AWS error instead, in the wire format of that service's protocol:

- EC2 (query, ``<Response><Errors>``), IAM/STS/SNS (query, ``<ErrorResponse>``): ``Action=`` in the body;
- SSM (JSON 1.1, ``{"__type": ...}``): ``X-Amz-Target: AmazonSSM.PutParameter``;
- S3 (REST XML, ``<Error>``): method + path (GET/PUT/HEAD/DELETE on a key, GET on a bucket).

The service comes from the SigV4 credential scope of the ``Authorization`` header. Rules are plain
Python objects set by the test (the proxy runs in the test process), so no control endpoint is
exposed. A :class:`Rewrite` edits response bodies instead: e.g. DescribeImages answering
``pending`` for an image moto already made ``available``, to hold ``wait-image`` in its wait. A
:class:`Hold` keeps a call (before or after moto carried it out) until the test releases it: the
moment to SIGKILL the bakery or to take the Chef server away. ``proxy.realism = Realism(...)`` plays
AWS's timing (eventual consistency with flicker and tag/SSM lag, state transitions, failed images, IAM
propagation, throttling storms and per-API token buckets, capacity and vCPU quotas, the default-key
sharing refusal): see :mod:`support.realism`. The layer is told each request's Region (from its SigV4
scope) and may look things up in moto itself (``upstream_call``).

Error codes botocore treats as throttling (``RequestLimitExceeded``, ``Throttling``,
``ThrottlingException``, ``SlowDown``) and 5xx statuses are retried by the client; 4xx codes such as
``UnauthorizedOperation`` or ``AccessDenied`` are not, and must fail the stage.
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

from devstack.httpd import LOOPBACK, LoopbackHTTPServer

from .realism import Realism

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length"}
_SCOPE_RE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_REGION_RE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/[^/]+/aws4_request")
_KEY_RE = re.compile(r"Credential=([^/]+)/\d{8}/")

# Throttling, per service, in the wire form AWS uses for it (status, code).
THROTTLE = {
    "ec2": (503, "RequestLimitExceeded"),
    "iam": (400, "Throttling"),
    "sts": (400, "Throttling"),
    "sns": (400, "Throttling"),
    "ssm": (400, "ThrottlingException"),
    "s3": (503, "SlowDown"),
}
# A permission error, per service: never retried by botocore.
DENIED = {
    "ec2": (403, "UnauthorizedOperation"),
    "iam": (403, "AccessDenied"),
    "sts": (403, "AccessDenied"),
    "sns": (403, "AuthorizationError"),
    "ssm": (400, "AccessDeniedException"),
    "s3": (403, "AccessDenied"),
}


@dataclass
class Call:
    """One request the proxy saw: which service/operation, what it answered, whether it injected."""

    seq: int
    service: str
    operation: str
    status: int = 0
    injected: str | None = None  # the error code answered instead of forwarding
    rewritten: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)  # wall clock: compared with the state's stage times

    @property
    def ok(self) -> bool:
        return self.injected is None and 0 < self.status < 400


@dataclass
class Rule:
    """Answer matching calls with an AWS error instead of forwarding them.

    ``operation`` is an API operation name (``RunInstances``) or ``*`` for any. With ``each=True``
    the rule fires ``times`` times for *each distinct* operation (throttle every operation once);
    otherwise ``times`` in total (``None``: for ever). ``after`` arms the rule only once an operation
    of that name has been forwarded successfully (to aim at one stage inside ``bakery bake``).
    ``code``/``status`` default to the service's throttling error (``kind="throttle"``) or its
    permission error (``kind="denied"``).
    """

    operation: str
    kind: str = "denied"  # throttle | denied | custom
    code: str | None = None
    status: int | None = None
    message: str = "injected by the fault proxy"
    times: int | None = 1
    each: bool = False
    service: str | None = None
    after: str | None = None
    skip: int = 0  # let this many matching calls through first (aim at the 2nd DescribeImages...)
    fired: int = 0
    seen: int = 0
    fired_ops: dict[str, int] = field(default_factory=dict)

    def error_for(self, service: str) -> tuple[int, str]:
        if self.kind == "throttle":
            status, code = THROTTLE.get(service, (400, "Throttling"))
        elif self.kind == "denied":
            status, code = DENIED.get(service, (403, "AccessDenied"))
        else:
            status, code = 400, "InjectedFault"
        return (self.status or status, self.code or code)


@dataclass
class Rewrite:
    """Replace ``find`` by ``replace`` in the body of ``operation``'s successful responses."""

    operation: str
    find: str
    replace: str
    after: str | None = None
    times: int | None = None
    fired: int = 0
    active: Callable[[], bool] | None = None  # rewrite only while this says so (e.g. until an event is set)


@dataclass
class Hold:
    """Hold a matching call: ``reached`` is set when it arrives; the answer waits for ``release``.

    With ``forward_first`` the call is carried out by moto before the answer is held: the resource
    exists but the bakery has not heard of it (the moment a SIGKILL leaves the worst state behind); a
    call moto refused is not held (the next matching one is).
    ``callback`` runs when the call is reached (e.g. take the Chef server away).
    """

    operation: str
    forward_first: bool = True
    after: str | None = None
    timeout: float = 120.0
    times: int = 1
    callback: Callable[[], None] | None = None
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    fired: int = 0


class FaultProxy(LoopbackHTTPServer):
    """``with FaultProxy(moto.url) as proxy:`` -> ``proxy.url``; ``proxy.add(Rule(...))``; ``proxy.calls``."""

    def __init__(self, upstream: str):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.url = ""
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.calls: list[Call] = []
        self.rules: list[Rule] = []
        self.rewrites: list[Rewrite] = []
        self.holds: list[Hold] = []
        self._seen_ok: set[str] = set()
        self._parked: socket.socket | None = None  # the port, kept while down() (see there)
        # AWS's timing (tests/faults/realism.py); None: moto's instant, consistent answers.
        self.realism: Realism | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self, port: int = 0) -> FaultProxy:
        """Listen on ``port`` (0: any free one); a stopped proxy restarts on its old port with ``start(port)``."""
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.url = self._serve(Handler, name="fault-proxy", port=port, server_class=_Server)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    def down(self) -> None:
        """Stop answering but keep the port, as a server that went away: a connection is refused (a
        socket stays bound to the port, not listening), and nothing else -- another server, a client's
        ephemeral port -- takes the port before :meth:`up`. Both bind it with SO_REUSEPORT, so the
        port is never free in between (a stop, then ``start(port)``, lost it to a client under load)."""
        parked = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        parked.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        parked.bind((LOOPBACK, self.port))
        self._parked = parked
        LoopbackHTTPServer.stop(self)

    def up(self) -> FaultProxy:
        """Answer again on the same port, after :meth:`down`."""
        self.start(self.port)
        self._unpark()
        return self

    def stop(self) -> None:
        super().stop()
        self._unpark()

    def _unpark(self) -> None:
        if self._parked is not None:
            self._parked.close()
            self._parked = None

    def upstream_call(self, service: str, region: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One call straight to moto (the realism layer looks things up with it, e.g. an image's snapshots)."""
        from devstack._boto import client as shared_client
        from devstack.moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

        client = shared_client(
            service, region_name=region, endpoint_url=f"http://{self.upstream_host}:{self.upstream_port}",
            aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)
        result: dict[str, Any] = getattr(client, _snake(operation))(**params)
        return result

    # --- what tests use ------------------------------------------------------------------------------
    def add(self, *items: Rule | Rewrite | Hold) -> None:
        with self._lock:
            for item in items:
                if isinstance(item, Rule):
                    self.rules.append(item)
                elif isinstance(item, Rewrite):
                    self.rewrites.append(item)
                else:
                    self.holds.append(item)

    def reset(self) -> None:
        """Forget rules, rewrites and the call log (between cases sharing one proxy)."""
        with self._lock:
            self.rules.clear()
            self.rewrites.clear()
            for hold in self.holds:
                hold.release.set()  # never leave a request hanging across cases
            self.holds.clear()
            self.calls.clear()
            self._seen_ok.clear()
            self.realism = None

    def mark(self) -> int:
        """The position in the call log now: ``calls_since(mark)`` gives what came after."""
        with self._lock:
            return len(self.calls)

    def calls_since(self, mark: int = 0) -> list[Call]:
        with self._lock:
            return list(self.calls[mark:])

    def operations(self, mark: int = 0, *, ok_only: bool = False) -> list[str]:
        """Distinct operations seen since ``mark``, in order of first appearance."""
        return list(dict.fromkeys(c.operation for c in self.calls_since(mark) if c.ok or not ok_only))

    def injected(self, mark: int = 0) -> list[Call]:
        return [c for c in self.calls_since(mark) if c.injected]

    # --- the decision for one request ----------------------------------------------------------------
    def _decide(self, service: str, operation: str) -> tuple[int, str, str] | None:
        with self._lock:
            for rule in self.rules:
                if rule.operation not in ("*", operation) or (rule.service and rule.service != service):
                    continue
                if rule.after and rule.after not in self._seen_ok:
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.each:
                    done = rule.fired_ops.get(operation, 0)
                    if rule.times is not None and done >= rule.times:
                        continue
                    rule.fired_ops[operation] = done + 1
                else:
                    if rule.times is not None and rule.fired >= rule.times:
                        continue
                rule.fired += 1
                status, code = rule.error_for(service)
                return status, code, rule.message
        return None

    def _hold(self, operation: str, forward_first: bool) -> Hold | None:
        with self._lock:
            for hold in self.holds:
                if hold.operation == operation and hold.forward_first == forward_first and hold.fired < hold.times and (
                        not hold.after or hold.after in self._seen_ok):
                    hold.fired += 1
                    return hold
        return None

    def _rewrite(self, operation: str, body: bytes) -> tuple[bytes, bool]:
        changed = False
        with self._lock:
            for rw in self.rewrites:
                if rw.operation != operation or (rw.after and rw.after not in self._seen_ok):
                    continue
                if rw.times is not None and rw.fired >= rw.times:
                    continue
                if rw.active is not None and not rw.active():
                    continue
                new = body.replace(rw.find.encode(), rw.replace.encode())
                if new != body:
                    rw.fired += 1
                    body, changed = new, True
        return body, changed

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            if call.ok:
                self._seen_ok.add(call.operation)


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def identify(method: str, path: str, headers: Any, body: bytes) -> tuple[str, str, dict[str, Any]]:
    """(service, operation, params) of one AWS API request."""
    m = _SCOPE_RE.search(headers.get("Authorization", "") or "")
    service = m.group(1) if m else "unknown"
    target = headers.get("X-Amz-Target")
    if target:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return service, target.rsplit(".", 1)[-1], params if isinstance(params, dict) else {}
    ctype = headers.get("Content-Type", "") or ""
    if method == "POST" and "x-www-form-urlencoded" in ctype:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        params = {k: v[0] if len(v) == 1 else v for k, v in form.items()}
        return service, str(params.get("Action", "Unknown")), params
    if service == "s3":
        return service, _s3_operation(method, path, headers), {}
    return service, f"{method} {urllib.parse.urlsplit(path).path}", {}


def _s3_operation(method: str, path: str, headers: Any) -> str:
    split = urllib.parse.urlsplit(path)
    parts = [p for p in split.path.split("/") if p]
    host = (headers.get("Host") or "").split(":")[0]
    bucket_in_host = bool(host) and not re.match(r"^\d+\.\d+\.\d+\.\d+$", host) and host != "localhost"
    has_key = len(parts) >= (1 if bucket_in_host else 2)
    if has_key:
        return {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
            method, f"{method}Object")
    return {"GET": "ListObjects", "PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(
        method, f"{method}Bucket")


def error_body(service: str, code: str, message: str) -> tuple[bytes, str]:
    """The error document ``service`` would send, and its content type."""
    rid = str(uuid.uuid4())
    code_x, msg_x = escape(code), escape(message)
    if service == "ec2":
        doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code_x}</Code>'
               f"<Message>{msg_x}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>")
        return doc.encode(), "text/xml;charset=UTF-8"
    if service == "ssm":
        return json.dumps({"__type": code, "message": message}).encode(), "application/x-amz-json-1.1"
    if service == "s3":
        doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code_x}</Code><Message>{msg_x}</Message>'
               f"<RequestId>{rid}</RequestId></Error>")
        return doc.encode(), "application/xml"
    doc = (f'<ErrorResponse><Error><Type>Sender</Type><Code>{code_x}</Code><Message>{msg_x}</Message></Error>'
           f"<RequestId>{rid}</RequestId></ErrorResponse>")
    return doc.encode(), "text/xml"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_port = True  # FaultProxy.down() keeps the port bound while the proxy is away

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed while its call was held (the SIGKILL tests) is expected, not an error.
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the stdlib's name)
        pass  # the call log is the record; stderr noise would hide test output

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        proxy = self.owner
        service, operation, params = identify(self.command, self.path, self.headers, body)
        call = Call(next(proxy._seq), service, operation, params=params)
        decision = proxy._decide(service, operation)
        realism = proxy.realism
        if decision is None and realism is not None:
            if realism.upstream is None:
                realism.upstream = proxy.upstream_call
            auth = self.headers.get("Authorization", "") or ""
            region, key = _REGION_RE.search(auth), _KEY_RE.search(auth)
            decision = realism.refuse(service, operation, params, region.group(1) if region else "us-east-1",
                                      access_key=key.group(1) if key else "")
        replayed = realism.replay(service, operation, params) if decision is None and realism is not None else None
        if replayed is not None:  # a ClientToken seen before, same request: AWS's first answer again
            call.status, call.rewritten = 200, True
            proxy._record(call)
            self._reply(200, [("Content-Type", "text/xml"), ("x-amzn-RequestId", str(uuid.uuid4()))], replayed)
            return
        if decision is not None:
            status, code, message = decision
            payload, ctype = error_body(service, code, message)
            call.status, call.injected = status, code
            proxy._record(call)
            self._reply(status, [("Content-Type", ctype), ("x-amzn-RequestId", str(uuid.uuid4()))], payload)
            return
        hold = proxy._hold(operation, forward_first=False)
        if hold is not None:
            self._wait(hold)
        try:
            status, headers, payload = self._forward(body)
        except OSError as exc:
            call.status = 502
            proxy._record(call)
            self._reply(502, [("Content-Type", "text/plain")], f"fault proxy: upstream unreachable: {exc}".encode())
            return
        # Held after forwarding only when moto carried the call out: a refused call (moto's 500 to a
        # CreateImage snapshot TagSpecification, answered by a retry without it) made nothing.
        hold = proxy._hold(operation, forward_first=True) if status < 400 else None
        if hold is not None:
            self._wait(hold)
        if status < 400:
            payload, call.rewritten = proxy._rewrite(operation, payload)
            if realism is not None:
                played = realism.answer(service, operation, params, payload)
                call.rewritten |= played is not payload
                payload = played
        call.status = status
        proxy._record(call)
        self._reply(status, headers, payload)

    @staticmethod
    def _wait(hold: Hold) -> None:
        hold.reached.set()
        if hold.callback is not None:
            hold.callback()
        hold.release.wait(hold.timeout)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body if body or self.command in ("POST", "PUT") else None,
                         headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            return resp.status, out, payload
        finally:
            conn.close()

    def _reply(self, status: int, headers: Iterable[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle
