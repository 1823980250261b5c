"""The bakery's own errors. Each carries the exit code the CLI returns for it.

Exit codes are a contract with Jenkins and users' scripts: 0 success, 1 the stage/bake failed,
2 bad usage or a bad catalogue (and nothing was done).
"""

from __future__ import annotations


class BakeryError(Exception):
    """A stage or command failed for a reason a person can act on. Exit code 1."""

    exit_code = 1


class WorkspaceWriteError(BakeryError):
    """A file of the workspace could not be written (full disk, read-only file system, permissions).

    Exit code 1: the bake fails and is torn down as on any failure; the teardown goes on without the
    disk (what the bake made carries its ``bakery:bake-id`` tag, the fallback record)."""

    def __init__(self, path: object, exc: OSError):
        self.path = str(path)
        self.errno = exc.errno
        reason = exc.strerror or str(exc)
        super().__init__(f"cannot write {self.path}: {reason}"
                         + (f" (errno {exc.errno})" if exc.errno is not None else ""))


class UsageError(BakeryError):
    """Bad command line, bad environment or a stage run out of order. Exit code 2, nothing done."""

    exit_code = 2


class CatalogError(UsageError):
    """The roles catalogue is invalid. The message names the file, the role and the key."""

    def __init__(self, path: str, message: str, *, role: str | None = None, key: str | None = None):
        self.path = path
        self.role = role
        self.key = key
        where = [f"catalogue {path}"]
        if role:
            where.append(f"role {role!r}")
        if key:
            where.append(f"key {key!r}")
        super().__init__(f"{', '.join(where)}: {message}")


class AwsError(BakeryError):
    """An AWS API call failed. ``code`` is the AWS error code (e.g. ``UnauthorizedOperation``)."""

    def __init__(self, operation: str, code: str, message: str, *, hint: str = ""):
        self.operation = operation
        self.code = code
        self.message = message
        self.hint = hint
        text = f"AWS {operation} failed: {code}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class Skipped(BakeryError):
    """A removal the bakery must not carry out (an AMI under deregistration protection, which only
    prune lifts once nothing points at it): reported as kept, with the reason, not as an error."""


class ChefError(BakeryError):
    """A Chef server API call failed."""


class StageTimeout(BakeryError):
    """A wait gave up. The state keeps what it waited for, so a rerun resumes the wait."""


class Interrupted(BakeryError):
    """The process received SIGTERM/SIGINT (Jenkins abort)."""
