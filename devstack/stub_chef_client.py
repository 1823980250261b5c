"""A stub ``chef-client`` that talks to a real Chef server (goiardi) as chef-client does, runs no recipe.

Installed by :func:`write_stub_bin` as executables named ``chef-client`` and ``cinc-client`` (Cinc's
name for the same client, the catalogue's default distribution) on the instance sandbox's PATH. What it does, in chef-client's order:

1. reads the config (``-c``, default ``$BAKERY_ROOT/etc/chef/client.rb``): ``chef_server_url``,
   ``node_name``, ``validation_client_name``, ``validation_key``, ``client_key``. Absolute paths are
   taken inside ``$BAKERY_ROOT`` (like a chroot), so a config written for the real image
   (``/etc/chef/client.pem``) works in the sandbox and in a copy of it;
2. if the client key file does not exist, registers client ``node_name`` signed by the validator key
   (POST /clients) and writes the new key (0600) -- 409 if the client already exists, as on a server
   that still has a stale client;
3. as that client, creates the node if absent, expands ``role[...]`` items and resolves the cookbooks
   (POST /environments/_default/cookbook_versions: 412 for a missing cookbook), then saves the node.
   ``-j FILE`` (``{"run_list": [...]}``) and ``-r`` set the node's run list; ``-o ITEMS`` is an override
   for this run only and, as with the real chef-client, is not saved in the node's run list (its
   expansion is in the node's ``automatic.recipes``/``roles``).

``--why-run`` (``-W``), as the real client does (chef/chef ``lib/chef/node.rb``: ``Node.find_or_create``
POSTs a new node, ``Node#save`` logs "In why-run mode, so NOT performing node save." and saves
nothing): it registers the client, creates the node if absent (with an empty run list: the run list
given is applied in memory only), expands the run list and resolves its cookbooks, converges
nothing, and does not save the node at the end.

It fails (exit 1, FATAL lines on stderr, after registering) when a run list item contains the word
``fail`` (e.g. ``recipe[fail]``) or ``BAKERY_STUB_CHEF_FAIL=1``, and on any server error. Every run
appends ``{argv, node_name, run_list, ok, ...}`` to ``$BAKERY_ROOT/var/log/stub-chef-client.jsonl``.

Reboot requests: a real converge with a ``reboot`` resource saves the node, then exits 35 ("reboot
scheduled") or 37 ("reboot needed") -- Chef RFC 062 exit codes (``lib/chef/application/exit_code.rb``)
-- and a run after the reboot converges normally. For 35, ``Chef::Platform::Rebooter.reboot!``
(``lib/chef/platform/rebooter.rb``) first runs ``shutdown -r +DELAY "REASON" &`` through a shell: the
OS is already going down while the client exits. ``BAKERY_STUB_CHEF_REBOOT_EXIT=35`` (or 37) plays
that: the first successful run of a root runs that ``shutdown`` (35 only, and only inside a real-init
container, where it reboots the instance; in a sandbox the runner plays the reboot) and exits 35,
later runs exit 0 (the marker is ``$BAKERY_ROOT/var/lib/stub-chef/reboot-requested``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery_lib.chef import ChefClient, ChefHTTPError, parse_knife_config, run_list_item
from bakery_lib.errors import BakeryError

VERSION = "18.4.12"
FAIL_WORD_RE = re.compile(r"(?<![A-Za-z])fail(?![A-Za-z])")
STUB_COMMANDS = ("systemctl", "chkconfig", "update-rc.d", "service", "shutdown", "poweroff", "reboot",
                 "halt", "hostnamectl", "restorecon")


class RunFailed(Exception):
    """The chef-client run failed; the message is chef-client's FATAL line."""


def in_root(path: str, root: str) -> str:
    """``path`` seen from inside the sandbox whose ``/`` is ``root``."""
    if root in ("", "/"):
        return path
    root = os.path.abspath(root)
    absolute = os.path.abspath(path)
    if absolute == root or absolute.startswith(root + os.sep):
        return absolute
    return os.path.join(root, absolute.lstrip("/"))


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chef-client", add_help=True)
    p.add_argument("-c", "--config")
    p.add_argument("-o", "--override-runlist")
    p.add_argument("-j", "--json-attributes")
    p.add_argument("-r", "--runlist")
    p.add_argument("-N", "--node-name")
    p.add_argument("-S", "--server")
    p.add_argument("-K", "--validation_key")
    p.add_argument("-k", "--client_key")
    p.add_argument("-E", "--environment")
    p.add_argument("-L", "--logfile")
    p.add_argument("-l", "--log_level")
    p.add_argument("-F", "--format")
    p.add_argument("--chef-license")
    p.add_argument("-W", "--why-run", action="store_true")
    p.add_argument("-v", "--version", action="store_true")
    # --once, --no-fork, --no-color, -z... : accepted and ignored, as they change nothing here.
    args, _unknown = p.parse_known_args(argv)
    return args


def _items(text: str) -> list[str]:
    return [i.strip() for i in text.split(",") if i.strip()]


def _log(message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime())}] {message}", flush=True)


def _expand(client: ChefClient, run_list: list[str], seen: set[str] | None = None) -> tuple[list[str], list[str]]:
    """(recipes, roles) of a run list, roles expanded recursively from the server."""
    seen = set() if seen is None else seen
    recipes: list[str] = []
    roles: list[str] = []
    for item in run_list:
        try:
            kind, name = run_list_item(item)
        except ValueError as exc:
            raise RunFailed(f"ArgumentError: {exc}") from None
        if kind == "recipe":
            if name not in recipes:
                recipes.append(name)
            continue
        if name in seen:
            continue
        seen.add(name)
        roles.append(name)
        try:
            role = client.request("GET", f"/roles/{name}")
        except ChefHTTPError as exc:
            if exc.status == 404:
                raise RunFailed(f"Net::HTTPClientException: 404 \"Not Found\" role[{name}] does not exist") from None
            raise
        sub_recipes, sub_roles = _expand(client, list(role.get("run_list") or []), seen)
        recipes += [r for r in sub_recipes if r not in recipes]
        roles += [r for r in sub_roles if r not in roles]
    return recipes, roles


def _register(server_url: str, node_name: str, validator: str, validation_key: str, client_key: str) -> None:
    if not os.path.isfile(validation_key):
        raise RunFailed(
            f"Chef::Exceptions::PrivateKeyMissing: I cannot read {validation_key}, which you told me to use "
            "to sign requests!"
        )
    _log(f"INFO: Client key {client_key} is not present - registering")
    _log(f"INFO: Creating a new client identity for {node_name} using the validator key.")
    try:
        pem = ChefClient(server_url, validator, validation_key).create_client(node_name)
    except ChefHTTPError as exc:
        if exc.status == 409:
            raise RunFailed(
                f"Net::HTTPClientException: 409 \"Conflict\": client {node_name} already exists on "
                f"{server_url} (a stale client from an earlier run?)"
            ) from None
        raise
    Path(client_key).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(client_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(pem)


@dataclass(frozen=True)
class _Config:
    """What client.rb and the command line say, paths taken inside the root."""

    path: str
    server_url: str
    node_name: str
    validator: str
    validation_key: str
    client_key: str


def _config(args: argparse.Namespace, root: str) -> _Config:
    config_path = in_root(args.config or "/etc/chef/client.rb", root)
    if not os.path.isfile(config_path):
        raise RunFailed(f"Chef::Exceptions::ConfigurationError: config file {config_path} does not exist")
    settings = parse_knife_config(config_path, os.environ)
    server_url = args.server or settings.get("chef_server_url")
    if not server_url:
        raise RunFailed(f"Chef::Exceptions::ConfigurationError: no chef_server_url in {config_path}")
    return _Config(
        path=config_path, server_url=server_url,
        node_name=args.node_name or settings.get("node_name") or socket.gethostname(),
        validator=settings.get("validation_client_name") or "chef-validator",
        validation_key=in_root(args.validation_key or settings.get("validation_key") or "/etc/chef/validation.pem",
                               root),
        client_key=in_root(args.client_key or settings.get("client_key") or "/etc/chef/client.pem", root),
    )


def _run_lists(args: argparse.Namespace, root: str) -> tuple[list[str] | None, list[str] | None]:
    """(what the node's run list becomes, this run's override): ``-j``/``-r`` and ``-o``."""
    persistent: list[str] | None = None
    if args.json_attributes:
        json_path = in_root(args.json_attributes, root)
        try:
            attrs = json.loads(Path(json_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunFailed(f"Chef::Exceptions::JSON::ParseError: cannot load {json_path}: {exc}") from None
        if not isinstance(attrs, dict) or not isinstance(attrs.get("run_list", []), list):
            raise RunFailed(f"Chef::Exceptions::JSON::ParseError: {json_path}: run_list must be a list")
        if "run_list" in attrs:
            persistent = [str(i) for i in attrs["run_list"]]
    if args.runlist:
        persistent = _items(args.runlist)
    return persistent, (_items(args.override_runlist) if args.override_runlist else None)


def _find_or_create_node(client: ChefClient, name: str, args: argparse.Namespace,
                         persistent: list[str] | None) -> dict[str, Any]:
    """``Node.find_or_create``: a new node is POSTed (with an empty run list under why-run)."""
    try:
        return dict(client.request("GET", f"/nodes/{name}"))
    except ChefHTTPError as exc:
        if exc.status != 404:
            raise
    node = {"name": name, "json_class": "Chef::Node", "chef_type": "node",
            "chef_environment": args.environment or "_default",
            "run_list": [] if args.why_run else (persistent or []),
            "normal": {}, "default": {}, "override": {}, "automatic": {}}
    client.request("POST", "/nodes", node)
    _log(f"INFO: Created node[{name}]")
    return dict(node)


def _check_not_failing(run_list: list[str]) -> None:
    failing = [i for i in run_list if FAIL_WORD_RE.search(i)]
    if failing or os.environ.get("BAKERY_STUB_CHEF_FAIL") == "1":
        why = f"{failing[0]} failed" if failing else "BAKERY_STUB_CHEF_FAIL=1"
        raise RunFailed(f"RuntimeError: {why} (bakery stub chef-client was asked to fail)")


def _load_cookbooks(client: ChefClient, node: dict[str, Any], recipes: list[str]) -> None:
    if not recipes:
        return
    try:
        cookbooks = client.request("POST", f"/environments/{node.get('chef_environment') or '_default'}"
                                   "/cookbook_versions", {"run_list": recipes})
    except ChefHTTPError as exc:
        if exc.status == 412:
            raise RunFailed(f"Net::HTTPClientException: 412 \"Precondition Failed\": {exc}") from None
        raise
    _log("INFO: Loading cookbooks [" + ", ".join(f"{n}@{c.get('version')}" for n, c in sorted(cookbooks.items())) + "]")


def _run(args: argparse.Namespace, root: str, record: dict[str, Any]) -> None:
    cfg = _config(args, root)
    record["node_name"] = cfg.node_name
    persistent, override = _run_lists(args, root)

    _log(f"INFO: *** Chef Infra Client {VERSION} (bakery stub) ***")
    if not os.path.exists(cfg.client_key):
        _register(cfg.server_url, cfg.node_name, cfg.validator, cfg.validation_key, cfg.client_key)
        record["registered"] = True
    client = ChefClient(cfg.server_url, cfg.node_name, cfg.client_key)
    node = _find_or_create_node(client, cfg.node_name, args, persistent)
    if persistent is not None:
        node["run_list"] = persistent
    run_list = override if override is not None else list(node.get("run_list") or [])
    record["run_list"] = run_list
    _log(f"INFO: Run List is [{', '.join(run_list)}]")
    _check_not_failing(run_list)

    recipes, roles = _expand(client, run_list)
    _load_cookbooks(client, node, recipes)
    automatic = dict(node.get("automatic") or {})
    automatic.update({"recipes": recipes, "roles": roles, "ohai_time": time.time(),
                      "chef_packages": {"chef": {"version": VERSION, "stub": True}}})
    node["automatic"] = automatic
    record["why_run"] = bool(args.why_run)
    if args.why_run:
        _log("WARN: In why-run mode, so NOT performing node save.")
        _log("Chef Infra Client finished, 0/0 resources would have been updated")
        return
    client.request("PUT", f"/nodes/{cfg.node_name}", node)
    _log("INFO: Chef Infra Client Run complete in 0.1 seconds")
    _log("Chef Infra Client finished, 0/0 resources updated in 00 seconds")


def _request_reboot(code: int, root: str) -> int:
    """What chef-client does when a ``reboot`` resource asked for one (lib/chef/platform/rebooter.rb):
    exit 35 after running ``shutdown -r +0 "REASON" &`` through a shell -- the shutdown is under way
    while the client exits; exit 37 (``RebootPending``) schedules nothing. The shutdown is only run
    inside a real-init instance (``/`` is the instance's and ``/run/systemd/container`` says so),
    never on a sandbox's host."""
    _log("INFO: Chef Infra Client: a reboot is requested (bakery stub)")
    if code == 35 and root in ("", "/") and Path("/run/systemd/container").exists():
        reason = "Reboot by Chef Infra Client"
        _log(f"WARN: Rebooting server at a recipe's request. Details: {{:delay_mins=>0, :reason=>\"{reason}\"}}")
        subprocess.run(["/bin/sh", "-c", f'shutdown -r +0 "{reason}" &'], check=False,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until_stopping()
    return code


def _until_stopping(limit: float = 120.0) -> None:
    """Chef raises Reboot after the shutdown command, then runs its exception and report handlers
    (seconds on a real node) before it exits: the OS is typically going down already when the
    caller sees 35. Played as its worst case, deterministically: return once systemd says
    ``stopping`` (or the shutdown's SIGTERM ends this process first)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        state = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True, check=False)
        if state.stdout.strip() == "stopping":
            return
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    if args.version:
        print(f"Chef Infra Client: {VERSION}")
        return 0
    root = os.environ.get("BAKERY_ROOT", "/")
    record: dict[str, Any] = {"argv": argv, "node_name": None, "run_list": [], "ok": False,
                              "registered": False, "time": time.time()}
    written = False
    try:
        _run(args, root, record)
        record["ok"] = True
        reboot_exit = os.environ.get("BAKERY_STUB_CHEF_REBOOT_EXIT")
        marker = Path(in_root("/var/lib/stub-chef/reboot-requested", root))
        # A why-run converges nothing, so no reboot resource fires either.
        if reboot_exit and not args.why_run and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("1\n", encoding="utf-8")
            record["exit"] = int(reboot_exit)
            # Logged before the shutdown starts: its SIGTERM may end this process before ``finally``.
            _append_record(record, root)
            written = True
            return _request_reboot(int(reboot_exit), root)
        return 0
    except (RunFailed, BakeryError) as exc:
        record["error"] = str(exc)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        print(f"[{stamp}] ERROR: Running exception handlers", file=sys.stderr)
        print("Chef Infra Client failed. 0 resources updated in 00 seconds", file=sys.stderr)
        print(f"[{stamp}] FATAL: {exc}", file=sys.stderr)
        return 1
    finally:
        if not written:
            _append_record(record, root)


def _append_record(record: dict[str, Any], root: str) -> None:
    log = Path(in_root("/var/log/stub-chef-client.jsonl", root))
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        print(f"chef-client stub: cannot write {log}: {exc}", file=sys.stderr)


_COMMAND_STUB = """#!/bin/bash
# bakery devstack: '{name}' does nothing inside an instance sandbox (it would act on the test host);
# the call is recorded in $BAKERY_ROOT/var/log/stub-commands.log.
if [ -n "${{BAKERY_ROOT:-}}" ] && [ "$BAKERY_ROOT" != / ]; then
  mkdir -p "$BAKERY_ROOT/var/log" && printf '%s\\n' "{name} $*" >> "$BAKERY_ROOT/var/log/stub-commands.log"
fi
exit 0
"""


def write_stub_bin(bin_dir: str | os.PathLike[str]) -> Path:
    """Write ``chef-client`` (this module, run by this Python) and no-op system commands; returns the dir."""
    bin_path = Path(bin_dir)
    bin_path.mkdir(parents=True, exist_ok=True)
    # The directory that holds the bakery_lib package, so the stub imports this very code.
    package_parent = str(Path(__file__).resolve().parents[1])
    chef_client = bin_path / "chef-client"
    chef_client.write_text(
        f"#!{sys.executable}\n"
        "# bakery devstack stub chef-client (generated by devstack.stub_chef_client)\n"
        "import sys\n"
        f"sys.path.insert(0, {package_parent!r})\n"
        "from devstack.stub_chef_client import main\n"
        "sys.exit(main())\n",
        encoding="utf-8",
    )
    chef_client.chmod(0o755)
    cinc_client = bin_path / "cinc-client"
    cinc_client.write_bytes(chef_client.read_bytes())
    cinc_client.chmod(0o755)
    for name in STUB_COMMANDS:
        stub = bin_path / name
        stub.write_text(_COMMAND_STUB.format(name=name), encoding="utf-8")
        stub.chmod(0o755)
    return bin_path


if __name__ == "__main__":
    sys.exit(main())
