"""`pip install .` (not editable) into a fresh venv, run from another directory, gives working
commands with the templates packaged."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkg")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, str(REPO)], capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return env_dir


def test_wheel_holds_only_the_product(tmp_path):
    """The stand-ins (devstack/) and the tests are development code: a wheel built from the repo has
    neither, only the library and its templates."""
    proc = subprocess.run([str(Path(os.sys.executable)), "-m", "pip", "wheel", "-q", "--no-deps",
                           "--disable-pip-version-check", "-w", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("ami_bakery-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"bakery_lib", "bakery_templates"}, sorted(tops)
    assert not [n for n in names if "devstack" in n or "jenkins_double" in n or "/tests/" in n]
    assert "bakery_templates/linux/firstboot.sh.j2" in names


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
