"""Golden files of the instance-side scripts: what ``bakery render`` writes for each role of
``tests/golden/instance/bakery.yaml`` must equal ``tests/golden/instance/expected/ROLE/*`` byte for byte.

They make every change to what runs on the instances visible in review (the bake, launch and first-boot
scripts of both platforms, the unpacked bake scripts, the units and the scheduled task). After an
intended template change, regenerate them and review the diff::

    BAKERY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/test_instance_golden.py
"""

from __future__ import annotations

import base64
import gzip
import os
import re
import shutil
from pathlib import Path

import pytest

from bakery_lib.catalog import load_catalog
from bakery_lib.userdata import render_role_scripts

GOLDEN = Path(__file__).resolve().parent / "golden" / "instance"
CATALOG = load_catalog(GOLDEN / "bakery.yaml")


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): comparable(p) for p in sorted(root.rglob("*")) if p.is_file()}


def comparable(path: Path) -> str:
    """The file's text; in the bake user data, the gzip+base64 blob is shown unpacked, so that another
    zlib's (equally valid) compressed bytes do not fail the comparison."""
    text = path.read_text(encoding="utf-8")
    blob = re.search(r"(?s)(<<'BAKERY_FILE_END'\n|\$Packed = '\n)([A-Za-z0-9+/=\n]+?)(BAKERY_FILE_END|')", text)
    if path.name.startswith("userdata-bake") and blob:
        plain = gzip.decompress(base64.b64decode("".join(blob.group(2).split()))).decode("utf-8")
        text = text[:blob.start(2)] + "[unpacked:]\n" + plain + text[blob.end(2):]
    return text


@pytest.mark.parametrize("name", sorted(CATALOG.roles))
def test_rendered_scripts_equal_the_golden_files(name: str, tmp_path: Path) -> None:
    render_role_scripts(CATALOG.roles[name], tmp_path)
    expected_dir = GOLDEN / "expected" / name
    if os.environ.get("BAKERY_UPDATE_GOLDEN"):
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(tmp_path / name, expected_dir)
    got, expected = tree(tmp_path / name), tree(expected_dir)
    assert sorted(got) == sorted(expected), "a different set of files was rendered"
    for file, content in expected.items():
        assert got[file] == content, f"{name}/{file} differs from its golden file"


def test_golden_files_show_the_issue_12_behaviour() -> None:
    """The reviewed files say what they must: Cinc by default, licensed Chef only with its key source,
    EC2Launch v2 sysprep without --block after the generalizing tag, reboots continued."""
    web, reporting, batch = (GOLDEN / "expected" / n for n in ("web", "reporting", "batch"))
    lib = (web / "bakery-lib.sh").read_text()
    assert "CHEF_INSTALLER_URL='https://omnitruck.cinc.sh/install.sh'" in lib and "CHEF_BIN='cinc-client'" in lib
    assert "$ChefInstallerUrl = 'https://omnitruck.cinc.sh/install.ps1'" in (reporting / "bakery-lib.ps1").read_text()
    assert "$ChefBinDir = 'C:\\cinc-project\\cinc\\bin'" in (reporting / "bakery-lib.ps1").read_text()
    batch_lib = (batch / "bakery-lib.sh").read_text()
    assert "CHEF_BIN='chef-client'" in batch_lib and "CHEF_LICENSE_SSM='/acme/chef/license-key'" in batch_lib
    generalize = (reporting / "generalize.ps1").read_text()
    assert "& $ec2launch sysprep --clean --shutdown\n" in generalize and "sysprep --clean --block" not in generalize
    assert generalize.index("Set-BootstrapTag 'generalizing'") < generalize.index("& $ec2launch sysprep")
    assert "35 | 37) reboot_and_resume" in (web / "bake.sh").read_text()
    assert "exit 3010" in (reporting / "bake.ps1").read_text()
