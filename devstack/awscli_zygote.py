"""The real AWS CLI, started once per test process and forked per call.

An instance's scripts call ``aws`` dozens of times a bake (S3 downloads, its tags, its alert), and each
call of the AWS CLI v1 spends ~0.6 CPU-s before it sends anything: importing awscli and its vendored
botocore, building the command table, reading the service models. On a 2-core machine that was the
largest single share of the suite's CPU. So the instance doubles put a shim named ``aws`` first on PATH:

- the **server** (``python -m devstack.awscli_zygote SOCKET``, one per test process) imports the CLI
  with its plugins and reads the models once, then forks one child per request. The child takes the
  caller's stdin/stdout/stderr (passed as file descriptors), argv, environment, working directory and
  umask, and runs ``awscli.clidriver.main()``: the CLI's own code, start to end, from a warm process.
  Nothing of one call survives into another: each child is a fresh fork of the warmed server.
- the **shim** (``python -I -S``: stdlib only, ~20 ms) hands those over on a Unix socket, forwards
  SIGINT/SIGTERM/SIGHUP to the child, and exits as the child did (with its signal, if it was killed).
  If the shim dies, the server kills the child (as a dead ``aws`` process would take its call with it).
  If the server cannot be reached, the shim runs the CLI itself, unchanged: slower, never different.

What the warm start leaves out of each call is the work that does not depend on the call: module
imports and the parsing of the JSON files shipped inside the awscli package (read-only data; the
cache holds only files under the package's ``data`` directories). ``BAKERY_TEST_REAL_AWS_CLI=1``
turns the shim off (every call a process of its own), to compare.
``tests/functional/test_awscli_zygote.py`` holds it to the CLI's own output and exit codes.
"""

from __future__ import annotations

import array
import atexit
import gc
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from ._proc import end_by_eof

OFF_ENV = "BAKERY_TEST_REAL_AWS_CLI"
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")

# The shim: no site-packages, no imports beyond the standard library's basics.
SHIM = r'''#!{python} -IS
# bakery devstack: the real AWS CLI, forked from a warm server (devstack/awscli_zygote.py).
import array, json, os, signal, socket, struct, sys
SOCKET, REAL = {socket!r}, {real!r}
def fallback():
    os.execv(REAL, [REAL, *sys.argv[1:]])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(SOCKET)
    header = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
                          "umask": os.umask(0o22)}}).encode()
    os.umask(json.loads(header)["umask"])
    s.sendmsg([struct.pack("!I", len(header)) + header],
              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
except OSError:
    s.close()
    fallback()
def forward(signum, frame):
    try:
        s.sendall(bytes([signum]))
    except OSError:
        pass
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, forward)
data = b""
while len(data) < 4:
    try:
        chunk = s.recv(4 - len(data))
    except InterruptedError:
        continue
    if not chunk:
        sys.stderr.write("aws (devstack shim): the CLI server went away during the call\n")
        sys.exit(70)
    data += chunk
status = struct.unpack("!i", data)[0]
if status < 0:
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
sys.exit(status)
'''


def real_aws() -> str:
    """The AWS CLI's own entry point, next to this interpreter (the venv's ``aws``)."""
    path = Path(sys.executable).parent / "aws"
    if not path.exists():
        found = shutil.which("aws")
        if found is None:
            raise RuntimeError("the AWS CLI is not installed (pip install awscli: make test does)")
        path = Path(found)
    return str(path)


class AwsCliZygote:
    """One warm CLI server and the directory holding its ``aws`` shim (put it first on PATH)."""

    def __init__(self, workdir: Path | None = None):
        self._tmp = None if workdir else tempfile.mkdtemp(prefix="aws-zygote-")
        self.workdir = Path(workdir or self._tmp or ".")
        self.socket = self.workdir / "aws.sock"
        self.bin = self.workdir / "bin"
        self.served = self.workdir / "served"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AwsCliZygote:
        self.bin.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        # stdin: a pipe the server watches, so it ends with this process however this one ends.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.awscli_zygote", str(self.socket), str(self.served)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        if ready.strip() != b"ready":
            code = self._proc.wait()
            raise RuntimeError(f"the AWS CLI server did not start (exit {code}): {ready!r}")
        shim = self.bin / "aws"
        shim.write_text(SHIM.format(python=sys.executable, socket=str(self.socket), real=real_aws()),
                        encoding="utf-8")
        shim.chmod(0o755)
        return self

    def calls(self) -> list[int]:
        """The process ids of the calls the server has forked so far, oldest first."""
        try:
            return [int(line) for line in self.served.read_text(encoding="ascii").split()]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        end_by_eof(self._proc)
        self._proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


_shared: AwsCliZygote | None = None
_shared_lock = threading.Lock()


def path_dirs() -> list[str]:
    """What to put on an instance's PATH ahead of the venv's ``aws``: this process's shim directory
    (the server started on first use), or nothing when ``BAKERY_TEST_REAL_AWS_CLI=1``."""
    global _shared
    if os.environ.get(OFF_ENV) == "1":
        return []
    with _shared_lock:
        if _shared is None:
            _shared = AwsCliZygote().start()
            atexit.register(_shared.stop)
        return [str(_shared.bin)]


# --- the server -------------------------------------------------------------------------------------

def _warm() -> Any:
    """Import the CLI and its plugins, and keep what the package's data files parse to."""
    import awscli.clidriver
    from awscli.botocore import loaders

    data_dirs = tuple(str(Path(p).resolve()) + os.sep for p in (
        Path(loaders.__file__).parent / "data", Path(awscli.clidriver.__file__).parent / "data"))
    parsed: dict[str, Any] = {}
    load_file = loaders.JSONFileLoader.load_file

    def cached_load_file(self: Any, file_path: str, *args: Any, **kwargs: Any) -> Any:
        if not os.path.realpath(file_path).startswith(data_dirs) or args or kwargs:
            return load_file(self, file_path, *args, **kwargs)
        if file_path not in parsed:
            parsed[file_path] = load_file(self, file_path)
        return parsed[file_path]

    loaders.JSONFileLoader.load_file = cached_load_file
    awscli.clidriver.create_clidriver()  # its plugins' imports
    loader = loaders.create_loader()
    for name in ("endpoints", "partitions", "_retry", "sdk-default-configuration"):
        try:
            loader.load_data(name)
        except Exception:  # an awscli without that file: nothing to warm
            pass
    for service in ("ec2", "s3", "sns", "sts", "ssm", "iam"):
        for kind in ("service-2", "paginators-1", "waiters-2", "endpoint-rule-set-1"):
            try:
                loader.load_service_model(service, kind)
            except Exception:
                pass
    for module in ("awscli.customizations.s3.subcommands", "awscli.botocore.auth", "awscli.botocore.parsers",
                   "awscli.botocore.serialize", "awscli.botocore.httpsession", "awscli.botocore.retries.standard",
                   "awscli.botocore.credentials", "awscli.botocore.utils", "awscli.botocore.endpoint_provider",
                   "awscli.botocore.httpchecksum", "awscli.s3transfer.manager", "awscli.formatter", "awscli.table",
                   "awscli.text", "urllib3", "http.client", "email.utils", "uuid", "xml.etree.ElementTree"):
        try:
            __import__(module)
        except ImportError:
            pass
    return awscli.clidriver


def _child(clidriver: Any, request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the caller's ``aws`` process and run the CLI."""
    code = 255
    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        # The package's import sets AWS_DATA_PATH from the environment it finds: run it on the caller's.
        import importlib

        import awscli

        importlib.reload(awscli)
        # As the interpreter sets them up at start: stdout line-buffered on a terminal only.
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
        import random

        random.seed()
        sys.argv = [real_aws(), *request["argv"]]
        try:
            code = clidriver.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
    except BaseException:  # the double's own failure: said on the caller's stderr, exit 70
        import traceback

        sys.stderr.write("aws (devstack shim): the forked CLI failed to start:\n" + traceback.format_exc())
        code = 70
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe: the real CLI would lose the output too
                pass
        os._exit(code if isinstance(code, int) else 255)


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if len(data) < _HEADER.size:
        raise OSError("short request")
    size = _HEADER.unpack_from(data)[0]
    body = data[_HEADER.size:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise OSError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def serve(path: str, served: str) -> None:
    clidriver = _warm()
    # What the warm-up made is never collected: a child's collections do not walk it (nor copy its pages).
    gc.collect()
    gc.freeze()
    sel = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(path)
    listener.listen(64)
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(sys.stdin, selectors.EVENT_READ, "parent")
    calls: dict[int, tuple[socket.socket, int]] = {}  # pidfd -> (connection, pid)
    by_conn: dict[socket.socket, int] = {}
    watched: set[socket.socket] = set()  # connections still read for signals (until the caller's EOF)
    log = open(served, "ab", buffering=0)  # noqa: SIM115 - held for the server's life
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in sel.select():
            what = key.data
            if what == "parent":
                for _, pid in calls.values():
                    os.kill(pid, signal.SIGKILL)
                return
            if what == "accept":
                conn, _ = listener.accept()
                try:
                    request, fds = _recv_request(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _child(clidriver, request, fds)
                for fd in fds:
                    os.close(fd)
                log.write(b"%d\n" % pid)
                pidfd = os.pidfd_open(pid)
                calls[pidfd] = (conn, pid)
                by_conn[conn] = pidfd
                sel.register(pidfd, selectors.EVENT_READ, "exit")
                sel.register(conn, selectors.EVENT_READ, "caller")
                watched.add(conn)
            elif what == "exit":
                pidfd = key.fd
                conn, pid = calls.pop(pidfd)
                _, status = os.waitpid(pid, 0)
                sel.unregister(pidfd)
                os.close(pidfd)
                if by_conn.pop(conn, None) is not None and conn in watched:
                    watched.discard(conn)
                    sel.unregister(conn)
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                try:
                    conn.sendall(_STATUS.pack(code))
                except OSError:
                    pass
                conn.close()
            elif what == "caller":
                conn = key.fileobj  # type: ignore[assignment]
                pidfd = by_conn[conn]
                _, pid = calls[pidfd]
                try:
                    signals = conn.recv(64)
                except OSError:
                    signals = b""
                if not signals:  # the caller is gone: so is its call
                    os.kill(pid, signal.SIGKILL)
                    watched.discard(conn)
                    sel.unregister(conn)
                    continue
                for signum in signals:
                    os.kill(pid, signum)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the callers; they end their calls
    serve(sys.argv[1], sys.argv[2])
