"""Unit tests of the bake state file and the artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bakery_lib.errors import BakeryError, UsageError
from bakery_lib.reports import write_artifacts, write_junit
from bakery_lib.state import BakeState, Workspace, new_bake_id


def make_state(role="web", **kw) -> BakeState:
    return BakeState(role=role, bake_id=new_bake_id(), release="1.2.3", region="us-east-1", platform="linux", **kw)


def test_round_trip_and_schema(tmp_path):
    ws = Workspace(tmp_path)
    st = make_state(instance_id="i-0123")
    st.stage("launch").status = "succeeded"
    ws.save(st)
    data = json.loads((tmp_path / ".bakery" / "web.json").read_text())
    assert data["schema_version"] == 1 and data["instance_id"] == "i-0123"
    back = ws.load("web")
    assert back == st and back.succeeded("launch")


def test_wrong_schema_and_garbage_are_clear(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / ".bakery").mkdir()
    (tmp_path / ".bakery" / "web.json").write_text('{"schema_version": 99}')
    with pytest.raises(UsageError, match="schema version 99"):
        ws.load("web")
    (tmp_path / ".bakery" / "web.json").write_text('{"schema_vers')
    with pytest.raises(BakeryError, match="not valid JSON"):
        ws.load("web")


def test_bake_ids_are_unique_and_safe():
    ids = {new_bake_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(i.replace("-", "").isalnum() and i.islower() or i[:14].isdigit() for i in ids)


def test_lock_refuses_second_holder(tmp_path):
    ws = Workspace(tmp_path)
    with ws.lock("web"):
        with pytest.raises(UsageError, match="another bakery process"):
            with ws.lock("web"):
                pass
    with ws.lock("web"):
        pass


def test_kill_during_writes_never_corrupts(tmp_path):
    """SIGKILL a process that rewrites the state in a tight loop: the file always parses.

    The child says when it has saved (every 25th save); each kill follows a different number of such
    lines, so it lands at a different point of a write, whatever the machine's speed.
    """
    script = textwrap.dedent(f"""
        import sys
        from bakery_lib.state import BakeState, Workspace
        ws = Workspace({str(tmp_path)!r})
        st = BakeState(role="web", bake_id="b", release="1", region="us-east-1", platform="linux")
        i = 0
        while True:
            st.snapshot_ids = ["snap-%d" % j for j in range(i % 500)]
            ws.save(st)
            if i % 25 == 0:
                print("saved", i, flush=True)
            i += 1
    """)
    for kill in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for _ in range(1 + kill * 3):
            assert proc.stdout.readline().startswith("saved")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        data = json.loads((tmp_path / ".bakery" / "web.json").read_text())
        assert data["role"] == "web"
    leftovers = [p for p in (tmp_path / ".bakery").iterdir() if p.suffix == ".tmp"]
    assert len(leftovers) <= 5  # at most one torn temp file per kill, never the state itself


def test_junit_and_artifacts(tmp_path):
    import xml.etree.ElementTree as ET

    ws = Workspace(tmp_path)
    path = write_junit(ws, "web", "launch", 1.5, failure="AWS RunInstances failed: Unsupported: nope")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "bakery.web"
    case = suite.find("testcase")
    assert case.get("name") == "launch" and float(case.get("time")) == 1.5
    assert "RunInstances" in case.find("failure").get("message")

    st = make_state(role="web-app")
    st.amis = {"us-east-1": "ami-0aaa", "eu-west-1": "ami-0bbb"}
    write_artifacts(ws, st)
    st2 = make_state(role="db")
    st2.amis = {"us-east-1": "ami-0ccc"}
    write_artifacts(ws, st2)
    art = json.loads((tmp_path / "artifacts" / "web-app.json").read_text())
    assert art["role"] == "web-app" and art["amis"]["eu-west-1"] == "ami-0bbb" and art["bake_id"] == st.bake_id
    amis = json.loads((tmp_path / "artifacts" / "amis.json").read_text())
    assert amis == {"release": "1.2.3", "releases": {"db": "1.2.3", "web-app": "1.2.3"},
                    "amis": {"db": {"us-east-1": "ami-0ccc"},
                             "web-app": {"eu-west-1": "ami-0bbb", "us-east-1": "ami-0aaa"}}}
    props = (tmp_path / "artifacts" / "amis.properties").read_text().splitlines()
    assert "AMI_WEB_APP=ami-0aaa" in props and "AMI_WEB_APP_EU_WEST_1=ami-0bbb" in props
    assert "AMI_DB=ami-0ccc" in props and "AMI_DB_US_EAST_1=ami-0ccc" in props


def test_lock_wait_says_so_and_takes_the_lock_once_released(tmp_path):
    import threading

    ws = Workspace(tmp_path)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with ws.lock("web"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    notices: list[str] = []
    with pytest.raises(UsageError, match="did not release it within 0.3 s"):
        with ws.lock("web", wait=0.3, on_wait=notices.append):
            pass
    assert notices and "waiting for another bakery process working on role 'web'" in notices[0]
    # The holder lets go once the second wait has begun (its notice is the event), never on a timer.
    def notice_then_release(message: str) -> None:
        notices.append(message)
        release.set()

    with ws.lock("web", wait=60, on_wait=notice_then_release):
        entered = True
    assert entered
    t.join(5)
