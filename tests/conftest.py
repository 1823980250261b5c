"""Shared fixtures: real local services (moto server, goiardi), the instance runner, CLI runs.

Servers start once per session and are shared; tests keep apart by using their own names (roles,
nodes, buckets keys: the ``names`` fixture) and their own instances (each test using the devstack is its
owner while it runs: the catalogues it writes tag their instances with it, and its runner boots only
those). Every service listens on 127.0.0.1 only.

- ``moto_server``     MotoServer (session)           ``goiardi``   GoiardiServer (session)
- ``devstack``        DevStack on both, seeded (session): bucket, validator key, topic, cookbook, base AMIs
- ``aws_env``         a full environment for a subprocess that must talk to moto (no real credentials)
- ``cli_env``         the same plus CHEF_SERVER_URL / CHEF_CLIENT_NAME / CHEF_CLIENT_KEY for the bakery
- ``instance_runner`` an InstanceRunner started around one test (boots only the test's own instances)
- ``names``           names only this test uses: ``names.role("shop")``, ``names.bake_id()``
- ``workspace``       an empty directory for ``--workspace``
- ``catalog_path``    a catalogue (roles web + worker, Linux) pointing at the devstack
- ``run_cli``         run ``python -m bakery_lib.cli ARGS`` in a subprocess -> CompletedProcess
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from support.bakes import FaultTable
from support.proxy import FaultProxy

from devstack import DevStack, GoiardiServer, InstanceRunner, MotoServer, isolated_env
from devstack.ami_layer import LayeredMoto

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tools the suite runs for real. A missing one is an error for the whole run, never a skip: a green
# run must mean the scripts were really checked and the Chef protocol really exercised.
REQUIRED_TOOLS = {
    "goiardi": "apt-get install goiardi",
    "shellcheck": "apt-get install shellcheck",
}


def pytest_configure(config: pytest.Config) -> None:
    missing = [f"{tool} (install: {how})" for tool, how in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError("required tools not found on PATH: " + "; ".join(missing))
    if not hasattr(config, "workerinput"):  # once, in the controller, before any worker starts
        write_bytecode()


def write_bytecode() -> None:
    """Compile the bakery and the devstack to ``__pycache__`` before the suite starts its subprocesses.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in many CI and container images) no Python process writes
    bytecode, so each of the suite's ~1000 ``bakery`` subprocesses would compile every module it
    imports from source again (0.1-0.7 s of CPU each). compileall writes it whatever that variable
    says, skips what is up to date, and replaces each file atomically."""
    for package in ("bakery_lib", "devstack"):
        compileall.compile_dir(REPO_ROOT / package, quiet=1)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The fault table (``BAKERY_FAULT_TABLE``): an xdist worker hands its rows to the controller,
    which writes them all (each worker alone would overwrite the table with its share)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_table"] = FaultTable.rows()
    elif FaultTable.rows():
        FaultTable.write_all()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    FaultTable.extend(getattr(node, "workeroutput", {}).get("fault_table", []))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = LayeredMoto().start()  # moto + the AMI calls it lacks (devstack.ami_layer)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def goiardi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoiardiServer]:
    server = GoiardiServer(tmp_path_factory.mktemp("goiardi")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory, moto_server: MotoServer,
             goiardi: GoiardiServer) -> Iterator[DevStack]:
    stack = DevStack(tmp_path_factory.mktemp("devstack"), moto=moto_server, goiardi=goiardi).start()
    yield stack
    stack.stop()  # leaves the shared servers to their own fixtures


@pytest.fixture(autouse=True)
def _devstack_owner(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that uses the devstack owns the instances of the catalogues it writes (see DevStack.owner).

    Only for tests that ask for the devstack anyway: a unit test starts no server. A module-scoped
    fixture's catalogue and runner, made before any test owns the stack, stay unowned together.
    """
    if "devstack" not in request.fixturenames:
        yield
        return
    stack: DevStack = request.getfixturevalue("devstack")
    stack.owner = uuid.uuid4().hex[:12]
    yield
    stack.owner = None


class Names:
    """Names no other test uses (roles, Chef nodes, bake ids are shared state on the session's moto
    and goiardi): ``role("shop")`` -> ``shop-1a2b3c`` (the same for the same stem within a test)."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:6]
        self._bakes = 0

    def role(self, stem: str) -> str:
        return f"{stem}-{self.token}"

    def bake_id(self) -> str:
        """A bake id of the state file's shape (``YYYYMMDDhhmmss-xxxxxx``), unique to this test."""
        self._bakes += 1
        return f"2026010100{self._bakes:04d}-{self.token}"


@pytest.fixture()
def names() -> Names:
    return Names()


@pytest.fixture()
def aws_env(moto_server: MotoServer) -> dict[str, str]:
    """os.environ without credential/profile variables, plus the moto endpoint and dummy keys."""
    return isolated_env(moto_server.env())


@pytest.fixture()
def cli_env(devstack: DevStack) -> dict[str, str]:
    """aws_env plus the bakery's Chef identity (goiardi's admin) and the repo on PYTHONPATH."""
    env = isolated_env(devstack.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture()
def instance_runner(devstack: DevStack, tmp_path: Path) -> Iterator[InstanceRunner]:
    with devstack.runner(tmp_path / "instances") as runner:
        yield runner


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture()
def catalog_path(devstack: DevStack, tmp_path: Path) -> Path:
    return devstack.write_catalog(tmp_path / "bakery.yaml", roles=["web", "worker"])


RunCli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture()
def run_cli(request: pytest.FixtureRequest) -> RunCli:
    """``run_cli(args, env=None, cwd=None, timeout=300)``.

    Runs ``[sys.executable, "-m", "bakery_lib.cli", *args]`` with text output captured. ``env`` is
    merged over ``cli_env`` (a value of None removes that variable); ``cwd`` defaults to the
    ``workspace`` fixture. The devstack is started only if a test actually runs the CLI.
    """

    def run(args: Sequence[str], env: Mapping[str, str | None] | None = None,
            cwd: str | os.PathLike[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full_env = dict(request.getfixturevalue("cli_env"))
        for name, value in (env or {}).items():
            if value is None:
                full_env.pop(name, None)
            else:
                full_env[name] = value
        if cwd is None:
            cwd = request.getfixturevalue("workspace")
        return subprocess.run(
            [sys.executable, "-m", "bakery_lib.cli", *map(str, args)],
            env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    return run


@pytest.fixture(scope="module")
def module_proxy(devstack: DevStack) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's moto, one per test module."""
    with FaultProxy(devstack.moto.url) as proxy:
        yield proxy


@pytest.fixture()
def proxy(module_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The module's fault proxy with no rule and an empty call log."""
    module_proxy.reset()
    yield module_proxy
    module_proxy.reset()
