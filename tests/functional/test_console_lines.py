"""What a Jenkins console shows of a bake: each fact once (issue 13, item 13).

A stage used to log a progress line and then return the same sentence as its result ("launched i-…
as t3.medium …" twice; "created security group sg-…" then "created sg-…: 0 rule(s) added";
"creating image ami-…" then "image ami-… requested"). A whole ``bakery bake`` runs in a subprocess
against moto, goiardi and the instance runner; its console lines (stderr without the time stamp, and
stdout) are read as Jenkins shows them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


def console(proc: subprocess.CompletedProcess) -> list[str]:
    return [STAMP.sub("", line) for line in proc.stderr.splitlines() + proc.stdout.splitlines() if line.strip()]


def test_a_bake_says_each_fact_once(devstack, instance_runner, tmp_path: Path):
    role = "consoleonce"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={role: {"platform": "linux"}})
    env = dict(devstack.env, BAKERY_POLL_INTERVAL="0.2")
    proc = subprocess.run([sys.executable, "-m", "bakery_lib", "--workspace", str(tmp_path / "ws"), "--catalog",
                           str(catalog), "bake", "--role", role, "--release", "1.0"],
                          env=env, capture_output=True, text=True, timeout=300)
    lines = console(proc)
    assert proc.returncode == 0, "\n".join(lines)

    # No line twice, whatever it says.
    twice = [line for line, n in Counter(lines).items() if n > 1]
    assert twice == [], "\n".join(lines)
    # Each of these facts is one line: where the instance was launched, the group, the image.
    instance = re.search(r"launched (i-[0-9a-f]+) as ", "\n".join(lines))
    assert instance is not None, "\n".join(lines)
    assert sum(f"launched {instance.group(1)}" in line for line in lines) == 1, "\n".join(lines)
    group = re.search(r"(sg-[0-9a-f]+) \(bakery-consoleonce\)", "\n".join(lines))
    assert group is not None and sum(f"created {group.group(1)}" in line or f"security group {group.group(1)}"
                                     in line for line in lines) == 1, "\n".join(lines)
    image = re.search(r"image (ami-[0-9a-f]+) \(bakery-consoleonce-", "\n".join(lines))
    assert image is not None, "\n".join(lines)
    assert not any(f"creating image {image.group(1)}" in line for line in lines), "\n".join(lines)
