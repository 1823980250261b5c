"""Output that scales: a 200-role ``bakery bake --all`` prints fewer than 300 lines, with progress
lines (``N of M done, K failed, ETA``) and the final table failures first; a reused role is one line.

The stages are replaced by instant stand-ins (what is under test is the output of the runner and the CLI,
not the bakes): every role is reused except three that fail in bootstrap and are torn down for real.
"""

from __future__ import annotations

import re

from support.bakes import cli_env, run_in_process

from bakery_lib import bake
from bakery_lib.progress import Progress
from bakery_lib.stages import StageResult
from bakery_lib.state import BakeState, new_bake_id

FAILING = {"svc007", "svc100", "svc199"}


def fake_run_stage(ctx, name, *, release=None, announce=True):
    role = ctx.role.name
    if name == "preflight":
        ctx.state = BakeState(role=role, bake_id=new_bake_id(), release=release, region=ctx.region,
                              platform="linux", base_ami="ami-0123456789abcdef0")
        ctx.state.reused = role not in FAILING
        ctx.state.amis = {} if role in FAILING else {ctx.region: "ami-0fedcba9876543210"}
        ctx.save()
    if name == "bootstrap" and role in FAILING:
        if announce:
            ctx.log(f"{name} FAILED: stub chef run failed")
        return StageResult(role, name, "failed", "stub chef run failed", 0.1, 1)
    if announce:
        ctx.log(f"{name}: done (0.0 s)")
    return StageResult(role, name, "succeeded", "done", 0.0, 0)


def test_a_200_role_bake_prints_under_300_lines_failures_first(devstack, tmp_path, capsys, monkeypatch):
    roles = [f"svc{i:03d}" for i in range(200)]
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=roles)
    monkeypatch.setattr(bake, "run_stage", fake_run_stage)
    code, out, err = run_in_process(["--workspace", str(tmp_path / "ws"), "--catalog", str(catalog), "bake", "--all",
                                     "--release", "1", "--jobs", "8"], cli_env(devstack), capsys, monkeypatch)
    assert code == 1, err[-2000:]
    lines = out.splitlines() + err.splitlines()
    assert len(lines) < 300, f"{len(lines)} lines"
    assert not [line for line in lines if ": done (0.0 s)" in line], "stage lines printed for 200 roles"
    progress = [line for line in err.splitlines() if "progress: " in line]
    assert progress and progress[-1].endswith("progress: 200 of 200 done, 3 failed, all done in " +
                                              progress[-1].rsplit(" ", 1)[-1])
    table = [line for line in out.splitlines() if re.match(r"^svc\d{3}  ", line)]
    assert [line.split()[0] for line in table[:3]] == sorted(FAILING), table[:4]
    assert len([line for line in table if " reused " in line]) == 197
    for role in FAILING:  # each failure said at once, with its cleanup
        assert any(line.endswith(f"{role}: bootstrap FAILED: stub chef run failed") for line in err.splitlines())


def test_progress_lines_are_rate_limited_and_the_last_is_always_said():
    now = [0.0]
    said: list[str] = []
    progress = Progress(5, said.append, every=5.0, clock=lambda: now[0])
    for t, failed in ((1.0, False), (2.0, True), (7.0, False), (8.0, False), (9.0, False)):
        now[0] = t
        progress.finished(failed)
    assert said == ["progress: 1 of 5 done, 0 failed, ETA 0m04s",
                    "progress: 3 of 5 done, 1 failed, ETA 0m05s",
                    "progress: 5 of 5 done, 1 failed, all done in 0m09s"]

