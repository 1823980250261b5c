"""An HTTP layer in front of moto server that answers the EC2 AMI calls moto 5.2 lacks, as AWS does.

moto 5.2.5 has no EnableImageDeprecation / DisableImageDeprecation, no ``DeprecationTime`` in
DescribeImages, and no deregistration protection (Enable/DisableImageDeregistrationProtection, the
refusal of DeregisterImage while an AMI is protected, the 24-hour cooldown). The bakery uses all of
them, so the devstack puts this layer between every client and moto: it answers those calls itself,
keeps their state per (region, image), adds ``deprecationTime`` / ``deregistrationProtection`` to the
images moto's DescribeImages returns, and forwards everything else unchanged.

How AWS behaves, from the EC2 API reference (docs.aws.amazon.com/AWSEC2/latest/APIReference/):

- ``API_EnableImageDeprecation``: ``ImageId`` and ``DeprecateAt`` are required; seconds are rounded to
  the nearest minute; "You can't specify a date in the past"; the upper limit is 10 years from now.
  The layer refuses a time before the current minute or beyond 10 years with
  ``InvalidParameterValue``, rounds, and reports it as ``deprecationTime`` (``YYYY-MM-DDTHH:MM:00.000Z``).
- ``API_DisableImageDeprecation``: cancels it (no ``deprecationTime`` any more).
- ``API_EnableImageDeregistrationProtection``: "When deregistration protection is enabled, the AMI can't
  be deregistered"; ``WithCooldown`` "enforces deregistration protection for 24 hours after
  deregistration protection is disabled". ``API_DisableImageDeregistrationProtection``: with the
  cooldown "you won't immediately be able to deregister the AMI". DescribeImages reports the state as
  ``deregistrationProtection`` (the Image shape, ``API_Image``): ``enabled-with-cooldown``,
  ``enabled-without-cooldown`` or ``disabled-until TIME`` during the cooldown.
- ``LastLaunchedTime`` (``API_Image``, ``API_DescribeImageAttribute`` attribute ``lastLaunchedTime``):
  "When the AMI is used to launch an instance, there is a 24-hour delay before that usage is
  reported." The layer notes every RunInstances that moto carried out and reports its time once a
  day has passed on the layer's clock, in DescribeImages and in DescribeImageAttribute.
- ``API_DescribeImageReferences``: "Either IncludeAllResourceTypes or ResourceTypes must be
  specified" (else ``MissingParameter``); answers ``imageReferenceSet`` items (``imageId``,
  ``resourceType``, ``arn``) for the account's ``ec2:Instance`` (option ``state-name``; default here:
  every state but terminated), ``ec2:LaunchTemplate`` (option ``version-depth``, the most recent
  versions; default here 20: the user guide's defaults page could not be read here) and
  ``ssm:Parameter`` (parameters of data type ``aws:ec2:image``), read from moto; the Image Builder
  types are accepted and have no references (moto has no Image Builder).
- Recycle Bin retention rules (``CreateRule``, ``ListRules``; moto has no ``rbin``): ``ami_rbin``.
- Windows Fast Launch (Enable/Describe/DisableFastLaunch) and EBS Fast Snapshot Restore
  (Enable/Describe/DisableFastSnapshotRestores): ``ami_fast``, which says what AWS documents and
  what is assumed. DeregisterImage of an image whose Fast Launch is not disabled is refused there.
- Under IAM enforcement (``LayeredMoto(iam_enforcement=True)``), every call the layer answers itself
  is checked against the caller's policies as moto checks the calls it serves: ``ami_auth``.
- DeregisterImage of a protected AMI (or one in its cooldown) is refused; the reference does not name
  the error code, the layer answers ``OperationNotPermitted`` (EC2's code for a refused state change)
  and a message naming the protection.

Every one of these calls on an image that does not exist answers ``InvalidAMIID.NotFound`` (asked of
moto with DescribeImages), a malformed id ``InvalidAMIID.Malformed``. What the layer does not model:
``DryRun``, ownership checks (moto's public images are never deprecated by the bakery), filters on
the two new fields.

Instance state changes: the instance runners (``devstack.hypervisor``) play the hypervisor, so they
must learn when an instance starts, stops or ends. Every such change reaches moto through this layer
(RunInstances, StartInstances, StopInstances, RebootInstances, TerminateInstances; moto changes an
instance's state only inside those calls), so the layer counts them once moto has answered and
``GET /_ami-layer/instance-changes?after=N&wait=S`` answers the count as soon as it passes ``N`` (or
after ``S`` seconds, at most ``MAX_CHANGE_WAIT``). A runner waits on that instead of describing every
instance several times a second.

Time: the layer's clock is the wall clock plus an offset a test moves forward with
``POST /_ami-layer/advance?seconds=N`` (loopback only, like moto's own ``/moto-api/`` control calls):
the 24-hour cooldown ends without waiting a day.

``python -m devstack.ami_layer --upstream URL`` runs it in its own process (as moto does, so its
answers do not queue behind the tests' Python work); :class:`LayeredMoto` starts moto and the layer
together and is a drop-in :class:`~devstack.moto.MotoServer` whose ``url`` is the layer's.
"""

from __future__ import annotations

import argparse
import http.client
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from ._proc import LOOPBACK, free_port, stop_process, wait_until
from .ami_auth import Denied, Enforcer
from .ami_fast import FastError, FastFeatures
from .ami_rbin import RbinError, RecycleBin
from .moto import ACCOUNT_ID, REGION, MotoServer, isolated_env

# The calls in which moto changes an instance's state (see the module docstring), and the longest a
# runner's question about them is held open.
INSTANCE_STATE_ACTIONS = frozenset({"RunInstances", "StartInstances", "StopInstances", "RebootInstances",
                                    "TerminateInstances"})
MAX_CHANGE_WAIT = 30.0

COOLDOWN = timedelta(hours=24)
REPORT_DELAY = timedelta(hours=24)  # LastLaunchedTime is reported a day after the launch
MAX_DEPRECATION = timedelta(days=3650)
_SCOPE_RE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
_ITEM_IMAGE_RE = re.compile(r"(<imageId>(ami-[0-9a-f]+)</imageId>)")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
OWN_ACTIONS = ("EnableImageDeprecation", "DisableImageDeprecation", "EnableImageDeregistrationProtection",
               "DisableImageDeregistrationProtection")
FAST_ACTIONS = ("EnableFastLaunch", "DescribeFastLaunchImages", "DisableFastLaunch", "EnableFastSnapshotRestores",
                "DisableFastSnapshotRestores", "DescribeFastSnapshotRestores")


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class ImageExtras:
    """What AWS keeps about an AMI that moto does not."""

    deprecation: datetime | None = None
    launched: datetime | None = None
    protected: bool = False
    cooldown: bool = False
    disabled_until: datetime | None = None

    def protection(self, now: datetime) -> str | None:
        if self.protected:
            return "enabled-with-cooldown" if self.cooldown else "enabled-without-cooldown"
        if self.disabled_until is not None and self.disabled_until > now:
            return f"disabled-until {_iso(self.disabled_until)}"
        return None

    def last_launched(self, now: datetime) -> datetime | None:
        return self.launched if self.launched is not None and self.launched + REPORT_DELAY <= now else None


class AmiLayer:
    """The layer's state and answers (no HTTP here: :func:`serve` wires it to a server)."""

    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.lock = threading.Lock()
        self.images: dict[tuple[str, str], ImageExtras] = {}
        self.offset = timedelta()
        self.rbin = RecycleBin()
        self.auth = Enforcer(upstream)
        self.fast = FastFeatures(ACCOUNT_ID)
        self._clients: dict[tuple[str, str], object] = {}
        self._zones: dict[str, set[str]] = {}
        self.instance_changes = 0
        self._changed = threading.Condition()

    def instance_state_changed(self) -> None:
        with self._changed:
            self.instance_changes += 1
            self._changed.notify_all()

    def wait_instance_changes(self, after: int, wait: float) -> int:
        """The count of instance state changes, once it is past ``after`` or ``wait`` seconds passed."""
        with self._changed:
            self._changed.wait_for(lambda: self.instance_changes > after, timeout=min(max(wait, 0.0),
                                                                                        MAX_CHANGE_WAIT))
            return self.instance_changes

    def client(self, service: str, region: str) -> Any:
        """The layer's own boto3 client to moto (its administrator key while IAM is enforced)."""
        with self.lock:
            key = (service, region)
            if key not in self._clients:
                self._clients[key] = self.auth.client(service, region)
            return self._clients[key]

    def enforce_iam(self, access_key: str, secret_key: str) -> None:
        self.auth.enable(access_key, secret_key)
        with self.lock:
            self._clients.clear()

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    # --- forwarding ---------------------------------------------------------------------------------
    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        try:
            headers = {**headers, "Content-Length": str(len(body))}
            conn.request(method, path, body=body if body or method in ("POST", "PUT") else None, headers=headers)
            resp = conn.getresponse()
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP], resp.read()
        finally:
            conn.close()

    def _exists(self, region: str, image_id: str, headers: dict[str, str]) -> dict[str, Any]:
        """The image as moto's DescribeImages answers it (asked with the layer's own key)."""
        from botocore.exceptions import ClientError

        if not _AMI_RE.match(image_id or ""):
            raise ApiError("InvalidAMIID.Malformed", f"Invalid id: \"{image_id}\" (expecting \"ami-...\")")
        try:
            found = self.client("ec2", region).describe_images(ImageIds=[image_id])["Images"]
        except ClientError:
            found = []
        if not found:
            raise ApiError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        return dict(found[0])

    def _snapshot_owners(self, region: str, params: dict[str, str]) -> dict[str, str]:
        from botocore.exceptions import ClientError

        ids = [v for k, v in sorted(params.items()) if re.match(r"^SourceSnapshotId\.\d+$", k)]
        try:
            found = self.client("ec2", region).describe_snapshots(SnapshotIds=ids)["Snapshots"] if ids else []
        except ClientError as exc:
            raise ApiError(str(exc.response["Error"].get("Code") or "InvalidSnapshot.NotFound"),
                           str(exc.response["Error"].get("Message") or f"The snapshot '{ids[0]}' does not exist.")
                           ) from None
        owners = {s["SnapshotId"]: s["OwnerId"] for s in found}
        missing = [i for i in ids if i not in owners]
        if missing:
            raise ApiError("InvalidSnapshot.NotFound", f"The snapshot '{missing[0]}' does not exist.")
        return owners

    def _zone_names(self, region: str) -> set[str]:
        if region not in self._zones:
            zones = self.client("ec2", region).describe_availability_zones()["AvailabilityZones"]
            self._zones[region] = {z["ZoneName"] for z in zones} | {z["ZoneId"] for z in zones}
        return self._zones[region]

    def _default_vpc(self, region: str) -> bool:
        vpcs = self.client("ec2", region).describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
        return bool(vpcs["Vpcs"])

    def fast_call(self, action: str, region: str, params: dict[str, str], headers: dict[str, str]) -> str:
        """Windows Fast Launch and Fast Snapshot Restore (``ami_fast``)."""
        now = self.now()
        if action == "EnableFastLaunch":
            image = self._exists(region, params.get("ImageId", ""), headers)
            return self.fast.enable_launch(region, params, image, self._default_vpc(region), now)
        if action == "DisableFastLaunch":
            image = self._exists(region, params.get("ImageId", ""), headers)
            return self.fast.disable_launch(region, image["ImageId"], now)
        if action == "DescribeFastLaunchImages":
            return self.fast.describe_launch(region, params, now)
        if action == "EnableFastSnapshotRestores":
            return self.fast.enable_restores(region, params, self._snapshot_owners(region, params),
                                             self._zone_names(region), now)
        if action == "DisableFastSnapshotRestores":
            return self.fast.disable_restores(region, params, self._snapshot_owners(region, params), now)
        return self.fast.describe_restores(region, now)

    # --- the calls moto lacks -----------------------------------------------------------------------
    def own(self, action: str, region: str, params: dict[str, str], headers: dict[str, str]) -> str:
        image_id = params.get("ImageId", "")
        self._exists(region, image_id, headers)
        with self.lock:
            extras = self.images.setdefault((region, image_id), ImageExtras())
            now = self.now()
            if action == "EnableImageDeprecation":
                extras.deprecation = self._deprecate_at(params.get("DeprecateAt"), now)
            elif action == "DisableImageDeprecation":
                extras.deprecation = None
            elif action == "EnableImageDeregistrationProtection":
                extras.protected, extras.disabled_until = True, None
                extras.cooldown = params.get("WithCooldown", "false").lower() == "true"
            else:  # DisableImageDeregistrationProtection
                if extras.protected and extras.cooldown:
                    extras.disabled_until = now + COOLDOWN
                extras.protected = False
        return "<return>true</return>"

    @staticmethod
    def _deprecate_at(raw: str | None, now: datetime) -> datetime:
        if not raw:
            raise ApiError("MissingParameter", "The request must contain the parameter DeprecateAt")
        when = _parse_time(raw)
        if when is None:
            raise ApiError("InvalidParameterValue", f"Value ({raw}) for parameter DeprecateAt is invalid")
        rounded = (when + timedelta(seconds=30)).replace(second=0, microsecond=0)
        if rounded < now.replace(second=0, microsecond=0):
            raise ApiError("InvalidParameterValue", "DeprecateAt: you can't specify a date in the past")
        if when > now + MAX_DEPRECATION:
            raise ApiError("InvalidParameterValue", "DeprecateAt: the upper limit is 10 years from now")
        return rounded

    def launched(self, region: str, params: dict[str, str]) -> None:
        with self.lock:
            self.images.setdefault((region, params.get("ImageId", "")), ImageExtras()).launched = self.now()

    def last_launched_attribute(self, region: str, params: dict[str, str], headers: dict[str, str]) -> str:
        image_id = params.get("ImageId", "")
        self._exists(region, image_id, headers)
        with self.lock:
            extras = self.images.get((region, image_id))
            launched = extras.last_launched(self.now()) if extras else None
        value = f"<value>{_iso(launched)}</value>" if launched else ""
        return f"<imageId>{image_id}</imageId><lastLaunchedTime>{value}</lastLaunchedTime>"

    def references(self, region: str, params: dict[str, str]) -> str:
        from . import ami_references  # boto3 clients to moto: only for this call

        image_ids = [v for k, v in sorted(params.items()) if re.match(r"^ImageId\.\d+$", k)]
        types = {v for k, v in params.items() if re.match(r"^ResourceType\.\d+\.ResourceType$", k)}
        if params.get("IncludeAllResourceTypes", "false").lower() != "true" and not types:
            raise ApiError("MissingParameter", "Either IncludeAllResourceTypes or ResourceTypes must be specified")
        if not image_ids:
            raise ApiError("MissingParameter", "The request must contain the parameter ImageIds")
        found = ami_references.find(self.upstream.geturl(), region, image_ids, types or None, self.auth.keys)
        items = "".join(f"<item><imageId>{escape(i)}</imageId><resourceType>{escape(t)}</resourceType>"
                        f"<arn>{escape(a)}</arn></item>" for i, t, a in found)
        return f"<imageReferenceSet>{items}</imageReferenceSet>"

    def answer(self, action: str, region: str, params: dict[str, str], headers: dict[str, str]) -> str | None:
        """The layer's own answer to a call (its response elements), or None to forward it to moto."""
        if action in (*OWN_ACTIONS, *FAST_ACTIONS, "DescribeImageReferences") or (
                action == "DescribeImageAttribute" and params.get("Attribute") == "lastLaunchedTime"):
            self.auth.check(action, headers.get("Authorization", ""))
        if action in FAST_ACTIONS:
            return self.fast_call(action, region, params, headers)
        if action in OWN_ACTIONS:
            return self.own(action, region, params, headers)
        if action == "DescribeImageReferences":
            return self.references(region, params)
        if action == "DescribeImageAttribute" and params.get("Attribute") == "lastLaunchedTime":
            return self.last_launched_attribute(region, params, headers)
        if action == "DeregisterImage":
            self.refuse_protected(region, params)
            self.fast.refuse_deregister(region, params.get("ImageId", ""))
        return None

    def after(self, action: str, region: str, params: dict[str, str], status: int, body: bytes) -> bytes:
        """moto's answer, with what AWS adds (DescribeImages), noting launches (RunInstances) and
        instance state changes."""
        if action in INSTANCE_STATE_ACTIONS:
            self.instance_state_changed()
        if action == "DescribeImages" and status == 200:
            return self.decorate(region, body)
        if action == "RunInstances" and status == 200:
            self.launched(region, params)
        if action == "DeleteSnapshot" and status == 200:
            self.fast.snapshot_deleted(region, params.get("SnapshotId", ""))
        return body

    def refuse_protected(self, region: str, params: dict[str, str]) -> None:
        image_id = params.get("ImageId", "")
        with self.lock:
            extras = self.images.get((region, image_id))
            state = extras.protection(self.now()) if extras else None
        if state:
            raise ApiError("OperationNotPermitted",
                           f"The image {image_id} cannot be deregistered: deregistration protection is {state}")

    def decorate(self, region: str, body: bytes) -> bytes:
        """DescribeImages: each image's ``deprecationTime`` and ``deregistrationProtection``."""
        text = body.decode()
        now = self.now()

        def add(match: re.Match[str]) -> str:
            with self.lock:
                extras = self.images.get((region, match.group(2)))
            if extras is None:
                return match.group(1)
            extra = ""
            if extras.deprecation is not None:
                extra += f"<deprecationTime>{_iso(extras.deprecation)}</deprecationTime>"
            if (launched := extras.last_launched(now)) is not None:
                extra += f"<lastLaunchedTime>{_iso(launched)}</lastLaunchedTime>"
            if (state := extras.protection(now)) is not None:
                extra += f"<deregistrationProtection>{escape(state)}</deregistrationProtection>"
            return match.group(1) + extra
        return _ITEM_IMAGE_RE.sub(add, text).encode()


def _error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID>"
            "</Response>").encode()


def _handler(layer: AmiLayer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without this, Nagle's algorithm and the client's
        # delayed ACK add some 40 ms to every answer.
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: list | None = None, ctype: str = "text/xml") -> None:
            self.send_response(status)
            for key, value in headers or [("Content-Type", ctype)]:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _control(self, url: urllib.parse.SplitResult, body: bytes) -> None:
            """The tests' control calls (loopback only): move the clock, start IAM enforcement, make
            the next EnableFastLaunch of a region fail; the runners' wait for instance state changes."""
            query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
            if url.path == "/_ami-layer/instance-changes":
                count = layer.wait_instance_changes(int(query.get("after", "-1")), float(query.get("wait", "0")))
                self._send(200, str(count).encode(), ctype="text/plain")
                return
            if url.path == "/_ami-layer/advance":
                with layer.lock:
                    layer.offset += timedelta(seconds=float(query["seconds"]))
            elif url.path == "/_ami-layer/enforce-iam":
                access, _, secret = body.decode().partition(":")
                layer.enforce_iam(access, secret)
            elif url.path == "/_ami-layer/fast-launch-fails":
                layer.fast.fail_next(query["region"], query["reason"])
            else:
                self._send(404, b"unknown control call", ctype="text/plain")
                return
            self._send(200, b"ok", ctype="text/plain")

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if self.path.startswith("/_ami-layer/"):
                self._control(urllib.parse.urlsplit(self.path), body)
                return
            scope = _SCOPE_RE.search(self.headers.get("Authorization", ""))
            region, service = (scope.group(1), scope.group(2)) if scope else (REGION, "")
            if service == "rbin":
                try:
                    answered = layer.rbin.handle(self.path, region, body)
                except RbinError as exc:
                    self._send(exc.status, exc.body(), [("Content-Type", "application/json"),
                                                        ("x-amzn-ErrorType", exc.code)])
                    return
                if answered is not None:
                    self._send(answered[0], answered[1], [("Content-Type", "application/json")])
                    return
            params = ({k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
                      if service == "ec2" and self.command == "POST" else {})
            action = params.get("Action", "")
            try:
                answer = layer.answer(action, region, params, headers)
            except (ApiError, FastError, Denied) as exc:
                self._send(exc.status, _error(exc.code, exc.message))
                return
            if answer is not None:
                self._send(200, (f'<?xml version="1.0" encoding="UTF-8"?><{action}Response>'
                                 f"<requestId>{uuid.uuid4()}</requestId>{answer}</{action}Response>").encode())
                return
            status, out_headers, answer_body = layer.forward(self.command, self.path, headers, body)
            self._send(status, layer.after(action, region, params, status, answer_body), out_headers)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle  # noqa: N815

    return Handler


def serve(upstream: str, port: int) -> None:
    server = ThreadingHTTPServer((LOOPBACK, port), _handler(AmiLayer(upstream)))
    server.daemon_threads = True
    server.serve_forever(poll_interval=0.5)


class LayeredMoto(MotoServer):
    """moto server with the AMI layer in front: ``url`` (and so ``env()``/``client()``) is the layer's,
    ``moto_url`` moto's own. ``advance(seconds)`` moves the layer's clock (the cooldown's)."""

    _layer: subprocess.Popen | None = None
    moto_url = ""
    offset = 0.0  # seconds the layer's clock was moved forward

    def start(self) -> LayeredMoto:
        super().start()
        self.moto_url = self.url
        port = free_port()
        root = str(Path(__file__).resolve().parent.parent)
        with open(self.log_path or "/dev/null", "ab") as log:
            self._layer = subprocess.Popen(
                [sys.executable, "-m", "devstack.ami_layer", "--upstream", self.moto_url, "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=root, env=isolated_env({"PYTHONPATH": root}))
        self.url = f"http://{LOOPBACK}:{port}"
        wait_until(self._answers, timeout=self.startup_timeout, what=f"AMI layer on {self.url}",
                   proc=self._layer, log_path=self.log_path, interval=0.1)
        return self

    def _control(self, path: str, body: bytes | None = None) -> None:
        request = urllib.request.Request(f"{self.url}/_ami-layer/{path}", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def advance(self, seconds: float) -> None:
        self._control(f"advance?seconds={seconds}")
        self.offset += seconds

    def fail_next_fast_launch(self, region: str, reason: str) -> None:
        """The next EnableFastLaunch in ``region`` ends ``enabling-failed`` with ``reason``."""
        self._control("fast-launch-fails?" + urllib.parse.urlencode({"region": region, "reason": reason}))

    def enforce_iam(self) -> None:
        """moto's enforcement, and the layer's for the calls it answers (with a key of its own, made
        while moto still answers unauthenticated requests)."""
        from .iam_enforcement import ADMIN_POLICY, create_user

        keys = create_user(self, "devstack-ami-layer", ADMIN_POLICY)
        super().enforce_iam()
        self._control("enforce-iam", f"{keys[0]}:{keys[1]}".encode())

    def stop(self) -> None:
        stop_process(self._layer)
        self._layer = None
        super().stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.ami_layer", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="moto server URL")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.upstream, args.port)


if __name__ == "__main__":
    main()
