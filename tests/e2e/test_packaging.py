"""A wheel built from the repository (not an editable install), installed into a fresh venv and run from
another directory, gives working commands with the templates packaged.

One wheel is built per run and checked for what it holds. The fresh venv takes the product from that wheel
only; the third-party packages it requires are the test environment's (a path file), so the test checks the
packaging of the product, not PyPI's, and installs nothing from the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("ami_bakery-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("pkg") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies: the test environment's site-packages, after the venv's own (so the wheel's
    # bakery_lib wins). Path files inside that folder are not read, so the checkout's editable install
    # stays out.
    Path(purelib, "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return env_dir


def test_wheel_holds_only_the_product(wheel):
    """The stand-ins (devstack/) and the tests are development code: a wheel built from the repo has
    neither, only the library and its templates."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"bakery_lib", "bakery_templates"}, sorted(tops)
    assert not [n for n in names if "devstack" in n or "jenkins_double" in n or "/tests/" in n]
    assert "bakery_templates/linux/firstboot.sh.j2" in names


def test_the_wheel_requires_what_the_product_imports(installed, tmp_path):
    """Every requirement the wheel declares is met, and the product's modules import with the wheel's own
    metadata (a package missing from install_requires fails here when it is not in the test env either)."""
    check = ("import importlib.metadata as m, re\n"
             "reqs = m.requires('ami-bakery') or []\n"
             "names = [re.split(r'[ ;<>=!~\\[]', r, maxsplit=1)[0] for r in reqs if 'extra ==' not in r]\n"
             "missing = [n for n in names if not m.distribution(n)]\n"
             "assert names and not missing, missing\n"
             "import bakery_lib.cli, bakery_lib.bake, bakery_lib.cli.generate_jobs\n")
    proc = subprocess.run([str(installed / "bin" / "python"), "-c", check], capture_output=True, text=True,
                          cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0, proc.stderr


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env


def test_console_scripts_work_from_elsewhere(installed, tmp_path):
    bindir = installed / "bin"
    catalog = REPO / "examples" / "bakery.yaml"
    where = subprocess.run([str(bindir / "python"), "-c", "import bakery_lib, bakery_templates; "
                            "print(bakery_lib.__file__); print(bakery_templates.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert where.returncode == 0, where.stderr
    assert all(str(installed) in line for line in where.stdout.splitlines()), where.stdout  # not the checkout

    proc = subprocess.run([str(bindir / "bakery"), "--catalog", str(catalog), "render", "--role", "web",
                           "--output-dir", "out"], capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "web" / "userdata-bake.sh").read_text().startswith("#!")
    assert (tmp_path / "out" / "web" / "bakery-firstboot.service").exists()
    proc = subprocess.run([str(bindir / "bakery"), "--catalog", str(catalog), "render", "--role", "reporting",
                           "--output-dir", "out"], capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "reporting" / "userdata-bake.ps1").read_text().lstrip().startswith("<powershell>")

    proc = subprocess.run([str(bindir / "generate-jobs"), "--catalog", str(catalog), "--output-dir", "jobs"],
                          capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "jobs" / "ami-bake-web" / "config.xml").exists()

    for script in ("bakery", "create-instance", "generate-jobs"):
        proc = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                              env=clean_env())
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), proc.stderr
