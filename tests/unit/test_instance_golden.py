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


def test_golden_files_show_the_issue_18_behaviour() -> None:
    """What a real estate's instances need (issue 18, instance-side review), as the reviewed files say it."""
    web, reporting = GOLDEN / "expected" / "web", GOLDEN / "expected" / "reporting"
    ps_lib = (reporting / "bakery-lib.ps1").read_text()
    # C:\chef and Cinc's C:\cinc: SYSTEM + Administrators, inheritance removed, before anything is written.
    restrict = ps_lib.index("/inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F'")
    assert "$ChefDataDir = Join-Path $Root $ChefDistribution" in ps_lib
    assert "foreach ($dir in @($ChefDir, $ChefDataDir, $BakeryDir)" in ps_lib
    assert restrict < ps_lib.index("function Write-Log")  # nothing (not even the log) is written before
    bake_ps = (reporting / "bake.ps1").read_text()
    assert "'cache', 'backup', 'local-mode-cache'" in bake_ps  # Chef's cache and backups leave the image
    # IMDS: a deadline of minutes, no fixed start delay; a failed first boot schedules its own retry.
    assert "$ImdsWaitSeconds = 600" in ps_lib and "$script:ImdsToken = Get-ImdsToken" in ps_lib
    task = (reporting / "register-firstboot-task.ps1").read_text()
    assert "PT30S" not in task and "-RestartCount 3" in task
    first_ps = (reporting / "firstboot.ps1").read_text()
    assert first_ps.index("Send-Alert $rc") < first_ps.index("    Register-Retry\n")
    assert "Clear-Retry" in first_ps.split("Remove-Item -Force -Path $Sentinel", 1)[1].split("}", 1)[0]
    # MSI 3010/1641 from install.ps1 are "installed, reboot pending": the client is checked again.
    install = ps_lib.split("function Install-ChefClient", 1)[1].split("\n}\n", 1)[0]
    assert "'\\b(3010|1641)\\b'" in install and install.index("catch") < install.index("Find-ChefClient\n  if (-not")
    # Sysprep waits for the EC2Launch v2 agent's own run to end (status -b blocks until it has).
    generalize = (reporting / "generalize.ps1").read_text()
    assert generalize.index("& $ec2launch status -b") < generalize.index("& $ec2launch sysprep --clean --shutdown")
    # Linux: the unit's deadline is the role's bootstrap_timeout (45 min by default), not a fixed 2 h.
    assert "TimeoutStartSec=2700s" in (web / "bakery-firstboot.service").read_text()
    lib = (web / "bakery-lib.sh").read_text()
    assert ":/snap/bin:" in lib and ":/usr/local/bin:" in lib  # an AWS CLI where bases put it is found
    assert "AWS_CLI_INSTALLER_URL='https://awscli.amazonaws.com/awscli-exe-linux-{arch}.zip'" in lib
    bake = (web / "bake.sh").read_text()
    # The resume unit is armed before the converge, not after chef-client returned 35 (the OS is going down).
    assert bake.index("\narm_resume\nrc=0\nchef_run") < bake.index("35 | 37) reboot_and_resume")
    assert "printf 'uninitialized\\n' >\"$ROOT/etc/machine-id\"" in bake


def test_a_windows_bake_reboots_only_through_ec2launch() -> None:
    """A cookbook's reboot on Windows: Chef's rebooter would run shutdown.exe itself; the bake's client.rb
    leaves only its exit 35, which the bake turns into exit 3010 for EC2Launch v2 to reboot."""
    reporting = GOLDEN / "expected" / "reporting"
    lib, bake = (reporting / "bakery-lib.ps1").read_text(), (reporting / "bake.ps1").read_text()
    assert "Write-ClientRb $NodeName -NoSelfReboot" in bake
    assert "'Chef::Platform::Rebooter.singleton_class.prepend(Module.new do'" in lib
    assert "raise Chef::Exceptions::Reboot," in lib and "shutdown" not in lib.split("NoSelfReboot) {", 1)[1]
    first = (reporting / "firstboot.ps1").read_text()
    assert "Write-ClientRb $node\n" in first  # first boots keep Chef's own reboot behaviour
    assert bake.index("$rc = 3010") > bake.index("Write-ClientRb $NodeName -NoSelfReboot")
