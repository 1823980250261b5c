"""``bakery validate`` and ``bakery bake --dry-run`` ask and create nothing; preflight refuses what AWS
would accept silently (a Linux role on a Windows base AMI, an instance type the region does not offer)
before anything is launched; an unknown role gets a did-you-mean and a short list.

The CLI runs in process (its console entry point) with AWS behind the fault proxy, whose call log
shows every operation the bakery made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.bakes import Census, cli_env, run_in_process

READ_ONLY = ("Describe", "Get", "List", "Head")


def only_reads(proxy) -> list[str]:
    ops = proxy.operations()
    assert ops, "no AWS call at all"
    return [op for op in ops if not op.startswith(READ_ONLY)]


@pytest.fixture()
def env(devstack, proxy) -> dict[str, str]:
    return cli_env(devstack, proxy.url)


def test_dry_run_creates_nothing_and_says_what_each_role_would_do(devstack, proxy, env, tmp_path, capsys,
                                                                  monkeypatch):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "dryweb": {}, "drywin": {"platform": "windows"}, "drybad": {"instance_type": "t3.smal"}})
    ws = tmp_path / "ws"
    census = Census.take(devstack)
    code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "bake", "--all",
                                     "--release", "1", "--dry-run"], env, capsys, monkeypatch)
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[0].startswith("drybad") and "refused" in lines[0], out
    assert "'instance_type'" in lines[0], lines[0]
    assert "t3.smal is not offered in" in lines[0]
    assert any(line.startswith("dryweb") and " bake " in line and "no AMI of role dryweb yet" in line
               for line in lines), out
    assert any(line.startswith("drywin") and " bake " in line for line in lines), out
    assert lines[-1] == "2 bake, 1 refused (of 3 role(s))"
    assert only_reads(proxy) == []
    assert not ws.exists(), "the dry run wrote the workspace"
    assert census.leaks() == [] and census.new_available_images() == []


def test_validate_checks_what_launch_and_publish_need_and_creates_nothing(devstack, proxy, env, tmp_path, capsys,
                                                                          monkeypatch):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "valweb": {}, "valnotopic": {"alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:no-such-topic",
                                     "subnet_id": "subnet-0123456789abcdef0"}})
    ws = tmp_path / "ws"
    code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "validate"], env, capsys,
                                    monkeypatch)
    assert code == 1, out + err
    first, second = out.splitlines()[:2]
    assert first.startswith("valnotopic") and "refused" in first
    assert "key 'alert_topic_arn'" in first and "key 'subnet_id'" in first, first
    assert second.startswith("valweb") and " ok " in second and "a bake would bake" in second
    assert only_reads(proxy) == []
    assert not ws.exists()


def test_preflight_refuses_a_linux_role_on_a_windows_base_ami_before_launching(devstack, proxy, env, tmp_path,
                                                                               capsys, monkeypatch):
    from devstack.stack import WINDOWS_IMAGE_FILTER

    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={
        "mixedup": {"platform": "linux", "base_ami": dict(WINDOWS_IMAGE_FILTER)}})
    ws = tmp_path / "ws"
    code, out, err = run_in_process(["--workspace", str(ws), "--catalog", str(catalog), "bake", "--role", "mixedup",
                                     "--release", "1"], env, capsys, monkeypatch)
    assert code == 1, out + err
    assert "key 'platform': the role is linux but its base AMI" in out and "is a windows image" in out, out
    assert only_reads(proxy) == [], "preflight created something before refusing"


def test_preflight_refuses_an_instance_type_the_region_does_not_offer(devstack, proxy, env, tmp_path, capsys,
                                                                      monkeypatch):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"typo": {"instance_type": "t3.smal"}})
    code, out, err = run_in_process(["--workspace", str(tmp_path / "ws"), "--catalog", str(catalog), "stage",
                                     "preflight", "--role", "typo", "--release", "1"], env, capsys, monkeypatch)
    assert code == 1, out + err
    assert "role 'typo', key 'instance_type': t3.smal is not offered in us-east-1" in err, err
    assert "RunInstances" not in proxy.operations()


def test_unknown_role_gets_did_you_mean_and_a_short_list(devstack, proxy, env, tmp_path: Path, capsys, monkeypatch):
    roles = {f"svc{i:03d}": {} for i in range(200)}
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles=roles)
    code, out, err = run_in_process(["--workspace", str(tmp_path / "ws"), "--catalog", str(catalog), "bake",
                                     "--role", "svc999", "--release", "1", "--dry-run"], env, capsys, monkeypatch)
    assert code == 2
    assert "did you mean" in err and "svc099" in err and "(200 in all" in err, err
    assert max(len(line) for line in err.splitlines()) < 300, err
    assert proxy.calls_since() == []
