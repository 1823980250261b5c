"""The prune, reap and summary commands as a user runs them (argument handling, exit codes, output)."""

from __future__ import annotations

import subprocess
import sys

from devstack.moto import seed_base_image


def test_prune_cli(run_cli, devstack, tmp_path):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"lonely": {"platform": "linux"}})
    proc = run_cli(["--catalog", str(catalog), "prune", "--role", "lonely", "--keep", "2", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["--catalog", str(catalog), "prune", "--role", "lonely", "--keep", "0"])
    assert proc.returncode == 2 and "keep" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["--catalog", str(catalog), "prune", "--role", "$(id)"])
    assert proc.returncode == 2 and "invalid role name" in proc.stderr


def test_reap_cli(run_cli, devstack, tmp_path):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"lonely": {"platform": "linux"}})
    proc = run_cli(["--catalog", str(catalog), "reap", "--dry-run", "--no-chef", "--region", "us-west-2"])
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["--catalog", str(catalog), "reap", "--older-than", "soon"])
    assert proc.returncode == 2 and "--older-than" in proc.stderr
    proc = run_cli(["--catalog", str(catalog), "reap", "--region", "mars-1"])
    assert proc.returncode == 2 and "mars-1" in proc.stderr
    # Chef identity unusable: the AWS part runs, the report says Chef was skipped, exit 1
    proc = run_cli(["--catalog", str(catalog), "reap", "--dry-run", "--region", "us-west-2"],
                   env={"CHEF_CLIENT_KEY": str(tmp_path / "missing.pem")})
    assert proc.returncode == 1 and "Chef" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_summary_cli(run_cli, devstack, tmp_path, workspace):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"lonely": {"platform": "linux"}})
    proc = run_cli(["--catalog", str(catalog), "summary"])
    assert proc.returncode == 0, proc.stderr
    # A release no bake here is of: exit 2, said plainly (the summary's contract).
    proc = run_cli(["--catalog", str(catalog), "summary", "--release", "1.0"])
    assert proc.returncode == 2 and "no bake of release '1.0'" in proc.stderr and "Traceback" not in proc.stderr
    assert (workspace / "reports" / "summary.html").exists() and (workspace / "reports" / "summary.md").exists()


def _write_state(workspace, role: str, **fields) -> None:
    """A bake record as the bakery writes it (via the product's own Workspace)."""
    from bakery_lib.state import BakeState, StageRecord, Workspace

    stages = fields.pop("stages", {})
    state = BakeState(role=role, bake_id="20260101000000-abcdef", release="1.0", region="us-east-1",
                      platform="linux", **fields)
    state.stages = {name: StageRecord(status=status, duration=1.0) for name, status in stages.items()}
    Workspace(workspace).save(state)


def test_status_lists_stages_in_pipeline_order_and_a_cleaned_failure(run_cli, devstack, tmp_path, workspace):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {"platform": "linux"}})
    # Recorded out of order, as a rerun of an earlier stage would leave them.
    _write_state(workspace, "web", closed=True, outcome="cleaned",
                 stages={"launch": "failed", "preflight": "succeeded", "iam-role": "succeeded",
                         "security-groups": "succeeded"})
    proc = run_cli(["--catalog", str(catalog), "status", "--role", "web"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "web: bake 20260101000000-abcdef, release 1.0, failed (cleaned)"
    listed = [line.split()[0] for line in proc.stdout.splitlines()[2:]]
    assert listed == ["preflight", "security-groups", "iam-role", "launch"]


def test_status_of_an_unknown_role_exits_2(run_cli, devstack, tmp_path):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {"platform": "linux"}})
    proc = run_cli(["--catalog", str(catalog), "status", "--role", "nosuch"])
    assert proc.returncode == 2 and "nosuch" in proc.stderr and "Traceback" not in proc.stderr
    known = run_cli(["--catalog", str(catalog), "status", "--role", "web"])
    assert known.returncode == 0 and "web: no bake in" in known.stdout


def test_no_command_ends_in_a_broken_pipe_traceback(cli_env, devstack, tmp_path, workspace):
    import subprocess
    import sys

    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={f"r{i}": {"platform": "linux"}
                                                                      for i in range(3)})
    for i in range(3):
        _write_state(workspace, f"r{i}", stages={"preflight": "succeeded"})
    py = sys.executable
    commands = {
        "bakery": f"{py} -m bakery_lib.cli --catalog {catalog} status",
        "create-instance": f"{py} -c 'import sys; from bakery_lib.cli import create_instance_main as m; "
                           f"sys.exit(m(sys.argv[1:]))' --help",
        "generate-jobs": f"{py} -c 'import sys; from bakery_lib.cli import generate_jobs_main as m; "
                         f"sys.exit(m(sys.argv[1:]))' --catalog {catalog} --output-dir {tmp_path / 'jobs'} --dry-run",
    }
    for name, command in commands.items():
        # The reader is gone before the command writes its first line (as `| head -1` is after its
        # first): the command must notice and stop quietly.
        proc = subprocess.run(["bash", "-c", f"{command} | true"],
                              env=cli_env, cwd=workspace, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, (name, proc.stderr)
        shown = subprocess.run(["bash", "-c", f"{command} | head -1"],
                               env=cli_env, cwd=workspace, capture_output=True, text=True, timeout=60)
        assert shown.stdout.strip() and "Traceback" not in shown.stderr, (name, shown.stderr)


def test_create_instance_release_without_bake_or_from_ami_exits_2(cli_env, devstack, tmp_path, workspace):
    import subprocess
    import sys

    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {"platform": "linux"}})
    code = "import sys; from bakery_lib.cli import create_instance_main as m; sys.exit(m(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "web", "--release", "1.2", "--catalog", str(catalog)],
                          env=cli_env, cwd=workspace, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--release 1.2 needs --bake" in proc.stderr and "--from-ami latest" in proc.stderr
    ec2 = devstack.moto.client("ec2")
    tagged = ec2.describe_instances(Filters=[{"Name": "tag:bakery:role", "Values": ["web"]},
                                             {"Name": "tag:bakery:purpose", "Values": ["launch"]}])
    assert tagged["Reservations"] == []  # nothing launched


def test_prune_all_covers_every_role(run_cli, devstack, tmp_path):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"alpha": {"platform": "linux"},
                                                                      "beta": {"platform": "linux"}})
    proc = run_cli(["--catalog", str(catalog), "prune", "--all", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert "prune of role alpha" in proc.stdout and "prune of role beta" in proc.stdout
    both = run_cli(["--catalog", str(catalog), "prune", "--all", "--role", "alpha"])
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_cleanup_waits_for_the_lock_of_a_still_cleaning_process(run_cli, cli_env, devstack, tmp_path, workspace):
    import threading

    from bakery_lib.state import Workspace

    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {"platform": "linux"}})
    ws = Workspace(workspace)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with ws.lock("web"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        held.wait(10)
        refused = run_cli(["--catalog", str(catalog), "cleanup", "--role", "web", "--lock-wait", "0.5"])
        assert refused.returncode == 2, refused.stderr
        assert "did not release it within 0.5 s" in refused.stderr
        assert "waiting for another bakery process" in refused.stderr
        # Released once the waiter says it waits (its first notice comes at once), never on a timer.
        waiter = subprocess.Popen([sys.executable, "-m", "bakery_lib.cli", "--catalog", str(catalog), "cleanup",
                                   "--role", "web", "--lock-wait", "120"], env=cli_env, cwd=workspace,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        assert waiter.stderr is not None
        notice = ""
        for line in waiter.stderr:
            notice += line
            if "waiting for another bakery process" in line:
                break
        release.set()
        out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, notice + err
        assert "waiting for another bakery process working on role 'web'" in notice
        assert "no bake of role web" in out
    finally:
        release.set()
        t.join(10)


def test_reap_bake_id_is_checked(run_cli, devstack, tmp_path):
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {"platform": "linux"}})
    proc = run_cli(["--catalog", str(catalog), "reap", "--bake-id", "$(id)", "--no-chef"])
    assert proc.returncode == 2 and "--bake-id" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["--catalog", str(catalog), "cleanup", "--bake-id", "20260101000000-abcdef", "--region", "x"])
    assert proc.returncode == 2  # cleanup --bake-id takes no reap options


def test_reap_dry_run_then_cleanup_bake_id_of_a_bake_in_no_workspace(run_cli, devstack, tmp_path, workspace):
    """A bake known only by its tags: the dry run shows its teardown and changes nothing; ``cleanup
    --bake-id`` from an empty workspace tears it down through the same loop and writes no state file."""
    region, bid = "me-south-1", "20260101000000-0badc0"
    catalog = devstack.write_catalog(tmp_path / "bakery.yaml", roles={"web": {"platform": "linux", "region": region}})
    ec2 = devstack.moto.client("ec2", region)
    base = seed_base_image(ec2, name="cli-reap-base")
    tags = {"bakery:bake-id": bid, "bakery:role": "web", "bakery:release": "1.0", "bakery:purpose": "bake",
            "bakery:chef-node": f"bake-web-{bid}", "bakery:expires-at": "2099-01-01T00:00:00Z"}
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, TagSpecifications=[{
        "ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["Instances"][0]["InstanceId"]

    def state() -> str:
        return ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]

    # Not expired: reap keeps it; named by --bake-id, the dry run shows it would go, and changes nothing.
    kept = run_cli(["--catalog", str(catalog), "reap", "--no-chef"])
    assert kept.returncode == 0 and f"{region} instance {instance}: kept: bake {bid}: expires" in kept.stdout
    dry = run_cli(["--catalog", str(catalog), "reap", "--dry-run", "--no-chef", "--bake-id", bid])
    assert dry.returncode == 0, dry.stderr
    assert f"{region} instance {instance}: would terminate: bake {bid} named by --bake-id" in dry.stdout
    assert "reap (dry run): 1 resource(s) to remove" in dry.stdout
    assert state() == "running"

    gone = run_cli(["--catalog", str(catalog), "cleanup", "--bake-id", bid])
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert f"{region} instance {instance}: terminated: bake {bid} named by --bake-id" in gone.stdout
    assert state() in ("shutting-down", "terminated")
    assert not (workspace / ".bakery").exists()  # a bake of no workspace: no state file written
    again = run_cli(["--catalog", str(catalog), "reap", "--bake-id", bid, "--no-chef"])
    assert again.returncode == 0 and "reap: 0 resource(s) removed" in again.stdout, again.stdout
