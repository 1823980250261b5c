"""Small helpers shared by the local services: free loopback ports, waiting, stopping children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it; a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, proc: subprocess.Popen | None = None,
    log_path: str | None = None, interval: float = 0.05,
) -> None:
    """Poll ``check`` until it is true; fail early (with the log tail) if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}{log_tail(log_path)}")
        try:
            if check():
                return
        except Exception as exc:  # any failure just means "not yet"
            last_error = exc
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s{detail}{log_tail(log_path)}")


def log_tail(path: str | None, lines: int = 20) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as fh:
        tail = fh.readlines()[-lines:]
    return "\n--- " + path + " (tail) ---\n" + "".join(tail)


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL if it lingers. The child must own its group."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


def end_by_eof(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """Close a server's stdin (its signal to finish), wait for it, kill it if it lingers."""
    if proc is None:
        return
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
