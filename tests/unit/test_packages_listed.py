"""Every package of bakery_lib is declared in setup.cfg: a missing one installs without its modules, and
the console scripts then fail with ``No module named ...`` only where the bakery is installed, never in a
checkout (the end-to-end packaging test catches that too, but slowly)."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_bakery_lib_package_is_in_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    declared = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "bakery_lib").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found - declared == set(), f"packages missing from setup.cfg [options] packages: {sorted(found - declared)}"
