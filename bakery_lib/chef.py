"""The bakery's Chef server client: the only module that imports pychef.

Everything the bakery asks a Chef server goes through :class:`ChefClient`: check that its identity is
accepted, check that a run list's cookbooks and roles exist, and delete a bake's node and client.
The demo and the tests also use it to seed a server (clients, metadata-only cookbooks, roles), and
the stub ``chef-client`` of :mod:`devstack` uses :meth:`ChefClient.request` as a real
chef-client would. Keep this module small: swapping pychef for another client means rewriting
``_Api`` and nothing else.

Every failure becomes a :class:`~bakery_lib.errors.ChefError` naming the server URL, the client name
and the HTTP status; never the key.
"""

from __future__ import annotations

import collections
import collections.abc
import os
import platform
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ChefError, UsageError

# --- pychef 0.3.0 on Python >= 3.10 ------------------------------------------------------------------
# pychef 0.3.0 (the last release on PyPI) was written for Python 2 / early 3: it subclasses
# collections.Mapping / MutableMapping / Sequence (moved to collections.abc, removed from collections in
# 3.10) and its rsa module calls platform.linux_distribution() (removed in 3.8) only to pick the
# libcrypto soname on Amazon Linux. Restoring these names before the first ``import chef`` is enough:
# its ctypes RSA signing works with OpenSSL 3 and goiardi / Chef Server accept the signed requests.
for _name in ("Mapping", "MutableMapping", "Sequence"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
if not hasattr(platform, "linux_distribution"):
    # An empty distribution name makes pychef load the plain "libcrypto.so".
    platform.linux_distribution = lambda *args, **kwargs: ("", "", "")  # type: ignore[attr-defined]


def _version_key(version: str) -> tuple[int, ...]:
    """A dotted version as numbers (``"11.1.7"`` -> ``(11, 1, 7)``): cookbooks' versions, pychef's API's."""
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


# pychef imports pkg_resources only for ``parse_version``, to compare its API classes' versions with
# the server's ("0.9" < "11.1.7" < "12.0.0"). Importing setuptools' pkg_resources costs a stage process
# 0.1-0.2 s of CPU (it scans every installed distribution), so pychef is given, while it is imported, a
# module with that one function; then the name is released, and anything else in the process that
# imports pkg_resources gets the real one.
_PKG_RESOURCES = types.ModuleType("pkg_resources", "the one function pychef uses (see bakery_lib.chef)")
_PKG_RESOURCES.parse_version = _version_key  # type: ignore[attr-defined]
_REAL_PKG_RESOURCES = sys.modules.get("pkg_resources")
sys.modules["pkg_resources"] = _PKG_RESOURCES
try:
    import chef as _pychef  # noqa: E402
    import chef.exceptions as _pychef_exc  # noqa: E402
    import chef.rsa as _pychef_rsa  # noqa: E402
finally:
    if _REAL_PKG_RESOURCES is None:
        del sys.modules["pkg_resources"]
    else:
        sys.modules["pkg_resources"] = _REAL_PKG_RESOURCES

import requests  # noqa: E402  (after the shim on purpose: pychef pulls it in anyway)

__all__ = ["ChefClient", "ChefHTTPError", "parse_knife_config", "run_list_item"]

RUN_LIST_ITEM_RE = re.compile(r"^(recipe|role)\[([A-Za-z0-9_.:@-]+)\]$")


class ChefHTTPError(ChefError):
    """The Chef server answered with an HTTP error; ``status`` is its code (404, 409, 401...)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _Unreachable(Exception):
    """Raised inside ``_Api`` when no HTTP answer came back at all."""


class _Api(_pychef.ChefAPI):
    """pychef's signed-request API, with a timeout and errors that keep the server's own words.

    pychef's ``request`` turns a connection error into ``ChefServerError(e.message)``, which itself
    raises AttributeError on Python 3, and drops the response body; so the transport is wrapped here.
    """

    def __init__(self, url: str, key: Any, client: str, *, ssl_verify: bool, timeout: float):
        # Chef Server 12+ answers the 1.x protocol; 11.1 is what goiardi emulates. pychef only uses the
        # version to refuse API classes newer than it; the server ignores X-Chef-Version for auth.
        super().__init__(url, key, client, version="11.1.7", ssl_verify=ssl_verify)
        self.timeout = timeout

    def _request(self, method, url, data, headers):  # pychef is untyped: its signature, unchanged
        try:
            response = requests.request(
                method, url, headers=headers, data=data, verify=self.ssl_verify, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise _Unreachable(_transport_reason(exc, self.timeout)) from None
        if not response.ok:
            raise _pychef_exc.ChefServerError(_server_words(response), code=response.status_code)
        return response


def _transport_reason(exc: requests.RequestException, timeout: float) -> str:
    """A short reason for a request that got no HTTP answer (urllib3's text is a paragraph)."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed (certificate not trusted? see ssl_verify_mode)"
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    if errno:
        return errno.group(0)
    return type(exc).__name__


def _server_words(response: requests.Response) -> str:
    """The reason phrase plus the server's ``{"error": [...]}`` text, if any."""
    text = f"{response.status_code} {response.reason}"
    try:
        body = response.json()
    except ValueError:
        return text
    errors = body.get("error") if isinstance(body, dict) else None
    if isinstance(errors, list):
        errors = "; ".join(str(e) for e in errors)
    return f"{text}: {errors}" if errors else text


def run_list_item(item: str) -> tuple[str, str]:
    """``recipe[cb::r]`` -> ("recipe", "cb::r"); ``role[x]`` -> ("role", "x"). ValueError otherwise."""
    m = RUN_LIST_ITEM_RE.match(item.strip())
    if not m:
        raise ValueError(f"not a run list item: {item!r} (expected recipe[...] or role[...])")
    return m.group(1), m.group(2)


class ChefClient:
    """One Chef API identity (server URL + client name + private key) and the calls the bakery makes."""

    def __init__(
        self,
        server_url: str,
        client_name: str,
        key_path: str,
        *,
        ssl_verify: bool = True,
        timeout: float = 30,
    ):
        self.server_url = server_url.rstrip("/")
        self.client_name = client_name
        self.key_path = str(key_path)
        try:
            raw = Path(key_path).read_bytes()
        except OSError as exc:
            raise UsageError(f"Chef client key {key_path}: cannot read it ({exc.strerror})") from None
        try:
            key = _pychef_rsa.Key(raw)
        except Exception:
            # The OpenSSL error text is safe, but a key file's content never goes into a message.
            raise UsageError(
                f"Chef client key {key_path}: not an RSA private key in PEM format"
            ) from None
        if key.public:
            raise UsageError(f"Chef client key {key_path}: is a public key, a private key is needed")
        self._api = _Api(self.server_url, key, client_name, ssl_verify=ssl_verify, timeout=timeout)

    def __repr__(self) -> str:
        return f"ChefClient({self.server_url!r}, client={self.client_name!r})"

    # --- construction from the environment ------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str], chef_config: str | None = None) -> ChefClient:
        """From ``CHEF_SERVER_URL``/``CHEF_CLIENT_NAME``/``CHEF_CLIENT_KEY``, or a knife config file.

        An explicit ``chef_config`` (``--chef-config``) wins over the variables.
        """
        if chef_config:
            settings = parse_knife_config(chef_config, env)
            missing = [k for k in ("chef_server_url", "node_name", "client_key") if not settings.get(k)]
            if missing:
                raise UsageError(
                    f"Chef config {chef_config}: no {', '.join(missing)} setting "
                    "(expected lines like: chef_server_url 'https://...', node_name 'me', client_key 'me.pem')"
                )
            return cls(
                settings["chef_server_url"],
                settings["node_name"],
                settings["client_key"],
                ssl_verify=settings.get("ssl_verify_mode") != ":verify_none",
            )
        names = ("CHEF_SERVER_URL", "CHEF_CLIENT_NAME", "CHEF_CLIENT_KEY")
        missing = [n for n in names if not env.get(n)]
        if missing:
            raise UsageError(
                f"Chef API identity not configured: {', '.join(missing)} not set. Set CHEF_SERVER_URL, "
                "CHEF_CLIENT_NAME and CHEF_CLIENT_KEY (path to the client's PEM key) or pass --chef-config "
                "with a knife config.rb"
            )
        key = env["CHEF_CLIENT_KEY"]
        if not os.path.isfile(key) or not os.access(key, os.R_OK):
            raise UsageError(f"CHEF_CLIENT_KEY {key}: no readable key file there")
        return cls(env["CHEF_SERVER_URL"], env["CHEF_CLIENT_NAME"], key)

    # --- transport ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, data: Any = None) -> Any:
        """One signed JSON request; returns the decoded body. Errors become ChefError/ChefHTTPError."""
        where = f"Chef server {self.server_url}"
        try:
            return self._api.api_request(method, path, data=data)
        except _Unreachable as exc:
            raise ChefError(
                f"{where} unreachable ({method} {path} as client {self.client_name}): {exc}"
            ) from None
        except _pychef_exc.ChefServerError as exc:
            status = exc.code or 0
            if status in (401, 403):
                raise ChefHTTPError(
                    f"{where} rejected client {self.client_name}: {exc} ({method} {path}; check "
                    "the client name and its key, and that the client may do this)",
                    status,
                ) from None
            raise ChefHTTPError(
                f"{where}: {method} {path} as client {self.client_name} failed: {exc}", status
            ) from None
        except ValueError as exc:
            # A 2xx answer that is not JSON: not a Chef server (or a proxy's page) at that URL.
            raise ChefError(
                f"{where}: {method} {path} answered something that is not JSON ({exc}); "
                "is that URL a Chef server API (for Chef Server 12+: .../organizations/ORG)?"
            ) from None
        except _pychef_rsa.SSLError:
            raise ChefError(f"{where}: could not sign a request with the key of {self.client_name}") from None

    def _exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
        except ChefHTTPError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _delete(self, path: str) -> bool:
        try:
            self.request("DELETE", path)
        except ChefHTTPError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- what the bakery asks ---------------------------------------------------------------------------
    def check_auth(self) -> None:
        """A signed request any identity may make: reading its own client (or, for a user, user) object.

        The server checks the signature before anything else, so 401/403 means a wrong name or key.
        A knife identity is often a *user* (goiardi's ``admin`` is one), hence the second look-up; 404
        for both means the URL is not the API root this identity belongs to (e.g. a wrong organization).
        """
        if self._exists(f"/clients/{self.client_name}") or self._exists(f"/users/{self.client_name}"):
            return
        raise ChefError(
            f"Chef server {self.server_url} has no client or user {self.client_name} "
            "(for Chef Server 12+ the URL must end in /organizations/ORG)"
        )

    def cookbook_versions(self, name: str) -> list[str]:
        """Versions of cookbook ``name`` on the server, newest first; [] when it is absent."""
        try:
            data = self.request("GET", f"/cookbooks/{name}")
        except ChefHTTPError as exc:
            if exc.status == 404:
                return []
            raise
        versions = [v.get("version", "") for v in (data.get(name) or {}).get("versions", [])]
        return sorted((v for v in versions if v), key=_version_key, reverse=True)

    def role_exists(self, name: str) -> bool:
        return self._exists(f"/roles/{name}")

    def missing_run_list_items(self, run_list: Iterable[str],
                               versions: Callable[[str], list[str]] | None = None) -> list[str]:
        """The items whose cookbook (recipe[cb::r], recipe[cb]) or role (role[x]) the server lacks.

        ``versions`` (default: ``cookbook_versions``) lets a caller answer from its own memo."""
        lookup = versions or self.cookbook_versions
        missing = []
        cookbooks: dict[str, bool] = {}
        for item in run_list:
            kind, name = run_list_item(item)
            if kind == "role":
                present = self.role_exists(name)
            else:
                cookbook = name.split("::", 1)[0].split("@", 1)[0]
                if cookbook not in cookbooks:
                    cookbooks[cookbook] = bool(lookup(cookbook))
                present = cookbooks[cookbook]
            if not present:
                missing.append(item)
        return missing

    def node_exists(self, name: str) -> bool:
        return self._exists(f"/nodes/{name}")

    def client_exists(self, name: str) -> bool:
        return self._exists(f"/clients/{name}")

    def delete_node(self, name: str) -> bool:
        """True when deleted, False when it was already absent."""
        return self._delete(f"/nodes/{name}")

    def delete_client(self, name: str) -> bool:
        """True when deleted, False when it was already absent."""
        return self._delete(f"/clients/{name}")

    def list_nodes(self) -> list[str]:
        return sorted(self.request("GET", "/nodes") or {})

    def list_clients(self) -> list[str]:
        return sorted(self.request("GET", "/clients") or {})

    # --- seeding (demo, tests) ----------------------------------------------------------------------
    def create_client(self, name: str, *, validator: bool = False) -> str:
        """Create a client; returns its new private key (PEM). A validator may create plain clients."""
        body = {"name": name, "admin": False, "validator": validator}
        return str(self.request("POST", "/clients", body)["private_key"])

    def upload_cookbook(self, name: str, version: str = "0.1.0") -> None:
        """A metadata-only cookbook version: enough for existence checks and run list resolution."""
        segments = ("recipes", "definitions", "libraries", "attributes", "files", "templates",
                    "resources", "providers", "root_files")
        body: dict[str, Any] = {
            "name": f"{name}-{version}",
            "cookbook_name": name,
            "version": version,
            "json_class": "Chef::CookbookVersion",
            "chef_type": "cookbook_version",
            "frozen?": False,
            "metadata": {"name": name, "version": version, "description": name, "dependencies": {},
                         "recipes": {}, "attributes": {}, "providing": {}},
        }
        body.update({segment: [] for segment in segments})
        self.request("PUT", f"/cookbooks/{name}/{version}", body)

    def create_role(self, name: str, run_list: list[str]) -> None:
        """Create or replace a role with this run list."""
        body = {"name": name, "json_class": "Chef::Role", "chef_type": "role", "description": "",
                "run_list": list(run_list), "default_attributes": {}, "override_attributes": {},
                "env_run_lists": {}}
        try:
            self.request("POST", "/roles", body)
        except ChefHTTPError as exc:
            if exc.status != 409:
                raise
            self.request("PUT", f"/roles/{name}", body)


_KNIFE_LINE_RE = re.compile(r"""^\s*([a-z_]+)\s*\(?\s*(?:(["'])(.*?)\2|(:[a-z_]+))\s*\)?\s*(?:#.*)?$""")
_INTERPOLATION_RE = re.compile(r"#\{([^}]*)\}")
_ENV_RE = re.compile(r"""^ENV\[\s*(["'])([A-Za-z_][A-Za-z0-9_]*)\1\s*\]$""")


def parse_knife_config(path: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The simple ``key "value"`` / ``key 'value'`` / ``key :symbol`` settings of a knife/client config.

    No Ruby is run: ``#{current_dir}`` (the config's directory, as knife.rb files usually define it)
    and ``#{ENV['X']}`` are expanded; lines with other Ruby are skipped. ``client_name`` is accepted as
    a spelling of ``node_name``; relative ``client_key``/``validation_key`` paths are relative to the
    config's directory.
    """
    env = env or {}  # the caller's environment, never this process's: see Settings
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"Chef config {path}: cannot read it ({reason})") from None
    base = os.path.dirname(os.path.abspath(path))

    def expand(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr == "current_dir":
            return base
        env_match = _ENV_RE.match(expr)
        if env_match:
            return env.get(env_match.group(2), "")
        raise KeyError(expr)

    settings: dict[str, str] = {}
    for line in text.splitlines():
        m = _KNIFE_LINE_RE.match(line)
        if not m:
            continue
        key, quote, value, symbol = m.group(1), m.group(2), m.group(3), m.group(4)
        if symbol:
            value = symbol
        elif quote == '"':
            try:
                value = _INTERPOLATION_RE.sub(expand, value)
            except KeyError:
                continue  # Ruby we do not evaluate
        if key == "client_name":
            key = "node_name"
        if key in ("client_key", "validation_key") and value and not os.path.isabs(value):
            value = os.path.join(base, value)
        settings[key] = value
    return settings
