"""Nothing lost on a full disk: from the first workspace write that fails (``ENOSPC``), every later one
fails too, as on a full file system; the bake must fail with a clear error naming the file (exit 1, no
traceback) and be torn down without the disk: no instance running, no Chef node or client, no pending
image left. A ``--workspace`` that is a file is refused (exit 2) before anything is done.

The failure is injected in the one writer every workspace file goes through (``fsutil``), at each kind
of write a bake makes: its first state record, the record of the launched instance, a stage's JUnit
report during bootstrap and during imaging, the artifacts, the summary.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support.bakes import RELEASE, Census, SimulatedBoot, cli_env, run_in_process

from bakery_lib import fsutil


def _state_with(field: str) -> Callable[[Path, str], bool]:
    def match(path: Path, text: str) -> bool:
        return path.parent.name == ".bakery" and path.suffix == ".json" and bool(json.loads(text).get(field))
    return match


TRIGGERS: dict[str, Callable[[Path, str], bool]] = {
    "first-state": lambda path, text: path.parent.name == ".bakery" and path.suffix == ".json",
    "instance-recorded": _state_with("instance_id"),
    "bootstrap-report": lambda path, text: path.name.endswith("-bootstrap.xml"),
    "image-recorded": _state_with("image_id"),
    "artifacts": lambda path, text: path.parent.name == "artifacts",
    "summary": lambda path, text: path.name.startswith("summary."),
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_a_full_disk_fails_the_bake_clearly_and_tears_it_down(devstack, tmp_path, capsys, monkeypatch, trigger):
    role = f"disk-{trigger}"
    ws = tmp_path / "ws"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=[role])
    census = Census.take(devstack)
    real_write = fsutil._write
    failed: list[Path] = []

    def write(path: Path, text: str, *args: object) -> Path:
        if failed or TRIGGERS[trigger](path, text):
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, text, *args)

    monkeypatch.setattr(fsutil, "_write", write)
    with SimulatedBoot(devstack, [role]):
        code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "bake", "--role", role,
                                         "--release", RELEASE], cli_env(devstack), capsys, monkeypatch)
    text = out + err
    assert failed, "the injected failure was never reached"
    assert code == 1, text
    assert f"cannot write {failed[0]}: No space left on device (errno 28)" in text, text
    assert "Traceback" not in text
    # Torn down without the disk: only a published (available) AMI may remain, as after any bake.
    assert census.leaks() == [], text


def test_a_workspace_that_is_a_file_is_refused_with_nothing_done(devstack, tmp_path, capsys, monkeypatch):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=["diskfile"])
    not_a_dir = tmp_path / "ws"
    not_a_dir.write_text("a file\n")
    census = Census.take(devstack)
    for ws in (not_a_dir, not_a_dir / "below"):
        code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "bake", "--role",
                                         "diskfile", "--release", RELEASE], cli_env(devstack), capsys, monkeypatch)
        assert code == 2, out + err
        assert f"--workspace {ws}:" in err and "not a directory" in err and "Traceback" not in err
    assert not_a_dir.read_text() == "a file\n"
    assert census.leaks() == []
