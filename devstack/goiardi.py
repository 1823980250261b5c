"""A real goiardi Chef server with authentication, on a free 127.0.0.1 port, for tests and the demo.

goiardi (Debian package) speaks the Chef Server 11 API at the root of its URL (no /organizations/ORG)
and, with ``-A``, checks every request's signature exactly as Chef Server does. On first start it
writes ``admin.pem`` (client ``admin``), ``chef-validator.pem`` and ``chef-webui.pem`` into its
conf root. Data lives in memory: each server starts empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bakery_lib.chef import ChefClient

from ._proc import LOOPBACK, free_port, stop_process, wait_until

GOIARDI = "goiardi"


class GoiardiServer:
    """``with GoiardiServer() as g:`` -> ``g.url``, ``g.admin_name``, ``g.admin_key_path``, ``g.client()``."""

    admin_name = "admin"

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, startup_timeout: float = 20):
        self._own_dir = workdir is None
        self.conf_root = Path(workdir or tempfile.mkdtemp(prefix="goiardi-"))
        self.startup_timeout = startup_timeout
        self.port = 0
        self.url = ""
        self._proc: subprocess.Popen | None = None
        self._validator_keys: dict[str, str] = {}

    @property
    def admin_key_path(self) -> str:
        return str(self.conf_root / "admin.pem")

    @property
    def log_path(self) -> str:
        return str(self.conf_root / "goiardi.log")

    def start(self) -> GoiardiServer:
        binary = shutil.which(GOIARDI)
        if binary is None:
            raise RuntimeError("goiardi is not installed (Debian package 'goiardi': apt-get install goiardi)")
        self.conf_root.mkdir(parents=True, exist_ok=True)
        # The port is chosen before goiardi binds it; on the rare lost race, try another one.
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://{LOOPBACK}:{self.port}"
            log = open(self.log_path, "ab")  # handed to the child, closed below
            try:
                self._proc = subprocess.Popen(
                    [binary, "-A", "-I", LOOPBACK, "-H", LOOPBACK, "-P", str(self.port),
                     f"--conf-root={self.conf_root}", "-g", "warning", "--disable-webui"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=self.conf_root,
                )
            finally:
                log.close()
            try:
                wait_until(self._admin_works, timeout=self.startup_timeout, what=f"goiardi on {self.url}",
                           proc=self._proc, log_path=self.log_path)
                return self
            except RuntimeError:
                stop_process(self._proc)
                if attempt == 2:
                    raise
        return self

    def _admin_works(self) -> bool:
        if not os.path.exists(self.admin_key_path):
            return False
        self.client(timeout=2).check_auth()
        return True

    def client(self, *, timeout: float = 30) -> ChefClient:
        """A ChefClient signed as goiardi's admin."""
        return ChefClient(self.url, self.admin_name, self.admin_key_path, timeout=timeout)

    def create_validator(self, name: str = "acme-validator") -> str:
        """Create (once) the validator client that instances register with; returns its key PEM."""
        if name not in self._validator_keys:
            admin = self.client()
            # A validator left from an earlier call without its key is of no use: make a new one.
            admin.delete_client(name)
            self._validator_keys[name] = admin.create_client(name, validator=True)
        return self._validator_keys[name]

    def write_validator_key(self, path: str | os.PathLike[str], name: str = "acme-validator") -> str:
        """Write the validator's key (mode 0600) to ``path``; returns the path."""
        pem = self.create_validator(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(pem)
        return str(path)

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self.conf_root, ignore_errors=True)

    def __enter__(self) -> GoiardiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
