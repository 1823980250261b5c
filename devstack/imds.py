"""An EC2 instance metadata service (IMDSv2 only) double for one simulated instance, on 127.0.0.1.

Instance-side scripts take ``BAKERY_IMDS_URL`` (default http://169.254.169.254); the instance runner
points it here. Like EC2 with ``HttpTokens=required``: ``PUT /latest/api/token`` needs the header
``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600) and returns a token; every GET needs
``X-aws-ec2-metadata-token`` with a live token, else 401. A PUT with ``X-Forwarded-For`` is refused
(403) as EC2 does, to keep the same behaviour toward proxies.

Instance role credentials (EC2 User Guide, "Retrieve security credentials from instance metadata"):
``meta-data/iam/security-credentials/`` lists the role's name, ``.../ROLE`` answers the JSON document
(``Code``, ``LastUpdated``, ``Type: AWS-HMAC``, ``AccessKeyId``, ``SecretAccessKey``, ``Token``,
``Expiration``), ``meta-data/iam/info`` the instance profile; an instance without a profile has no
``iam/`` (404). Where the credentials come from is :attr:`ImdsDouble.role_credentials`, a callable
set by whoever plays IAM (``devstack.iam_enforcement.instance_role_credentials``); unset, the static
metadata answers (``extra`` entries under ``iam/``, as the sandbox tests give), else 404.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

from .httpd import LoopbackHTTPServer

MAX_TTL = 21600


# instance id -> (instance profile ARN, role name, credentials document) or None (no profile).
RoleCredentials = Callable[[str], "tuple[str, str, dict[str, str]] | None"]


class ImdsDouble(LoopbackHTTPServer):
    """``with ImdsDouble(instance_id=..., region=...) as imds:`` -> ``imds.url``; ``imds.requests`` log."""

    # Who hands out the instance role's credentials (see the module docstring); shared by every double.
    role_credentials: ClassVar[RoleCredentials | None] = None

    def __init__(
        self, *, instance_id: str, region: str, account_id: str = "123456789012", image_id: str = "",
        instance_type: str = "t3.medium", availability_zone: str | None = None,
        private_ip: str = "10.0.0.10", user_data: bytes | None = None,
        extra: Mapping[str, str] | None = None,
    ):
        az = availability_zone or f"{region}a"
        hostname = "ip-" + private_ip.replace(".", "-") + ".ec2.internal"
        self.meta: dict[str, str] = {
            "instance-id": instance_id,
            "ami-id": image_id,
            "instance-type": instance_type,
            "local-ipv4": private_ip,
            "hostname": hostname,
            "local-hostname": hostname,
            "placement/region": region,
            "placement/availability-zone": az,
            **(extra or {}),
        }
        self.identity = {
            "accountId": account_id, "architecture": "x86_64", "availabilityZone": az,
            "imageId": image_id, "instanceId": instance_id, "instanceType": instance_type,
            "privateIp": private_ip, "region": region, "version": "2017-09-30",
            "pendingTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.user_data = user_data
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for tests
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self.url = ""

    # --- token bookkeeping --------------------------------------------------------------------------
    def _issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
        return token

    def _valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expires = self._tokens.get(token)
        return expires is not None and expires > time.monotonic()

    def _lookup(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for a GET of ``path``."""
        if path in ("/latest/dynamic/instance-identity/document",):
            return 200, "application/json", json.dumps(self.identity, indent=2)
        if path == "/latest/user-data":
            if self.user_data is None:
                return 404, "text/plain", "Not Found"
            return 200, "application/octet-stream", self.user_data.decode("utf-8", "replace")
        iam = self._iam(path)
        if iam is not None:
            return iam
        prefix = "/latest/meta-data/"
        if path.startswith(prefix) or path == "/latest/meta-data":
            key = path[len(prefix):].strip("/")
            if key in self.meta:
                return 200, "text/plain", self.meta[key]
            # A directory listing, as IMDS gives for meta-data/ and placement/.
            children = set()
            for name in self.meta:
                if key and not name.startswith(key + "/"):
                    continue
                head, sep, _ = (name[len(key) + 1:] if key else name).partition("/")
                children.add(head + ("/" if sep else ""))
            if children:
                return 200, "text/plain", "\n".join(sorted(children))
        return 404, "text/plain", "Not Found"

    def _iam(self, path: str) -> tuple[int, str, str] | None:
        """The ``meta-data/iam/`` answers (None: not an iam path)."""
        base = "/latest/meta-data/iam"
        if not (path == base or path.startswith(base + "/")):
            return None
        provider = type(self).role_credentials
        if provider is None:
            return None  # nobody plays IAM: the static metadata answers (a test's ``extra`` entries)
        found = provider(self.meta["instance-id"])
        if found is None:
            return 404, "text/plain", "Not Found"
        profile_arn, role, document = found
        key = path[len(base):].strip("/")
        if key in ("", "security-credentials"):
            return 200, "text/plain", "info\nsecurity-credentials/" if not key else role
        if key == f"security-credentials/{role}":
            return 200, "text/plain", json.dumps(document, indent=2)
        if key == "info":
            return 200, "text/plain", json.dumps({
                "Code": "Success", "LastUpdated": document.get("LastUpdated", ""),
                "InstanceProfileArn": profile_arn, "InstanceProfileId": "AIPA" + role.upper()[:17]}, indent=2)
        return 404, "text/plain", "Not Found"

    # --- server -----------------------------------------------------------------------------------------
    def start(self) -> ImdsDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "EC2ws"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass  # the request log is kept in double.requests instead of stderr

            def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                double.requests.append((self.command, self.path, status))

            def do_PUT(self) -> None:  # noqa: N802 - stdlib naming
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path != "/latest/api/token":
                    return self._send(404, "Not Found")
                if self.headers.get("X-Forwarded-For"):
                    return self._send(403, "Forbidden")
                ttl_header = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                try:
                    ttl = int(ttl_header or "")
                except ValueError:
                    return self._send(400, "Bad Request: X-aws-ec2-metadata-token-ttl-seconds is required")
                if not 1 <= ttl <= MAX_TTL:
                    return self._send(400, f"Bad Request: TTL must be between 1 and {MAX_TTL}")
                token = double._issue(ttl)
                self.send_response(200)
                self.send_header("X-aws-ec2-metadata-token-ttl-seconds", str(ttl))
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(token)))
                self.end_headers()
                self.wfile.write(token.encode())
                double.requests.append((self.command, self.path, 200))

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                if not double._valid(self.headers.get("X-aws-ec2-metadata-token")):
                    return self._send(401, "Unauthorized")
                status, content_type, body = double._lookup(self.path.split("?", 1)[0])
                self._send(status, body, content_type)

            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                self._send(405, "Method Not Allowed")

        self.url = self._serve(Handler, name=f"imds-{self.meta['instance-id']}")
        return self
