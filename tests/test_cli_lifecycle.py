"""The prune, reap and summary commands as a user runs them (argument handling, exit codes, output)."""

from __future__ import annotations


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
    proc = run_cli(["--catalog", str(catalog), "summary", "--release", "1.0"])
    assert proc.returncode == 0, proc.stderr
    assert (workspace / "reports" / "summary.html").exists() and (workspace / "reports" / "summary.md").exists()
