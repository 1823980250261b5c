"""The operator's day one: the playground (``python -m devstack``) and ``make demo`` (``devstack.demo``).

What a user sees: the example catalogue kept whole when pointed at the local services, one command that
starts every service and prints an environment that works when sourced, and a demo that echoes commands
a user can paste (console scripts, not ``python -c`` fragments) with their output in order.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bakery_lib.catalog import AmiFilter, load_catalog
from devstack.runner import OWNER_TAG
from devstack.stack import BASE_IMAGE_FILTER, WINDOWS_IMAGE_FILTER

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "bakery.yaml"


def test_example_catalogue_is_kept_whole_when_pointed_at_the_stack(devstack, tmp_path):
    path = devstack.write_example_catalog(tmp_path / "bakery.yaml", EXAMPLE)
    example, local = load_catalog(EXAMPLE), load_catalog(path)
    assert sorted(local.roles) == sorted(example.roles)
    for name, mine in local.roles.items():
        theirs = example.roles[name]
        for key in ("platform", "instance_type", "volume_size", "volume_type", "tags", "ingress",
                    "bootstrap_timeout", "image_timeout", "bake_ttl", "run_list_ami", "run_list_launch"):
            value = getattr(mine, key)
            if key == "tags":  # the test's owner tag on its instances (DevStack.owner) aside
                value = tuple(t for t in value if t[0] != OWNER_TAG)
            assert value == getattr(theirs, key), (name, key)
        wanted = WINDOWS_IMAGE_FILTER if mine.platform == "windows" else BASE_IMAGE_FILTER
        assert mine.base_ami == AmiFilter(wanted["name"], tuple(wanted["owners"]))
        assert mine.chef.server_url == devstack.goiardi.url and mine.runlist_bucket == devstack.bucket
    assert any(r.platform == "windows" for r in local.roles.values())


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 120) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(word):
            return "".join(seen)
    raise AssertionError(f"no {word!r} line from the playground:\n{''.join(seen)}")


def test_playground_one_command_then_every_cli_works_from_the_sourced_env(tmp_path):
    workdir = tmp_path / "pg"
    proc = subprocess.Popen([sys.executable, "-m", "devstack", "--workdir", str(workdir)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        banner = _wait_for(proc, "ready")
        env_sh = (workdir / "env.sh").read_text()
        assert env_sh in banner  # printed as well as written
        for name in ("AWS_ENDPOINT_URL", "CHEF_SERVER_URL", "JENKINS_URL", "BAKERY_CATALOG"):
            assert re.search(rf"^export {name}=\S*127\.0\.0\.1|^export {name}=\S+", env_sh, re.M), name
        assert "export BAKERY_POLL_INTERVAL=1\n" in env_sh
        assert re.search(r"^export (AWS_ENDPOINT_URL|CHEF_SERVER_URL|JENKINS_URL)=http://127\.0\.0\.1:\d+", env_sh, re.M)
        assert not re.search(r"https?://(?!127\.0\.0\.1)", "\n".join(
            line for line in env_sh.splitlines() if "URL=" in line))
        assert re.search(r"^  bakery --workspace \S+ bake --all --release 1\.0$", banner, re.M)
        ws = tmp_path / "ws"
        script = (f". {workdir / 'env.sh'} && cd {tmp_path} && "
                  f"bakery --workspace {ws} status && "
                  f"generate-jobs --workspace {ws} && "
                  f"aws s3 ls s3://acme-bakery/chef/")
        shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=180,
                               env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert shell.returncode == 0, shell.stdout + shell.stderr
        assert f"no bakes in {ws}" in shell.stdout
        assert "validator.pem" in shell.stdout
        assert "ami-bake-web" in shell.stdout + shell.stderr  # generate-jobs synced to the Jenkins double
        roles = yaml.safe_load((workdir / "bakery.yaml").read_text())["roles"]
        assert set(roles) == set(yaml.safe_load(EXAMPLE.read_text())["roles"])
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest


def test_demo_bakes_the_catalogue_whole_and_echoes_pasteable_commands(tmp_path):
    """`make demo` on a small catalogue (the example's Windows role is played when the runner plays
    Windows; this keeps the test to one Linux role): tags merged, volume size and timeouts kept; a second
    release rebakes the changed role and shows its AMIs' deprecation and protection and the release summary."""
    catalog = tmp_path / "example.yaml"
    example = yaml.safe_load(EXAMPLE.read_text())
    example["defaults"]["tags"] = {"team": "platform", "env": "demo"}
    example["roles"] = {"web": {**example["roles"]["web"], "volume_size": 40, "bootstrap_timeout": "10m",
                                "tags": {"env": "prod", "service": "web"}}}
    catalog.write_text(yaml.safe_dump(example))
    ws = tmp_path / "demo-ws"
    proc = subprocess.run([sys.executable, "-m", "devstack.demo", "--catalog", str(catalog), "--workspace", str(ws),
                           "--release", "7.1"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    commands = [line[2:] for line in out.splitlines() if line.startswith("$ ")]
    assert commands[0] == f"bakery --workspace {ws} bake --all --release 7.1 --jobs 1"
    assert all(c.split()[0] in ("bakery", "create-instance", "generate-jobs") for c in commands), commands
    assert "python" not in "".join(commands)
    assert f". {ws / 'env.sh'}" in out
    # output in order: the bake's own lines follow its echo, before the next step
    bake_at = out.index("$ bakery --workspace")
    assert bake_at < out.index("web  ") < out.index("==> the AMIs as the AWS API reports them")
    line = next(x for x in out.splitlines() if x.strip().startswith("web ") and "tags:" in x)
    assert "env=prod" in line and "service=web" in line and "team=platform" in line, line
    # The second release changed web's volume size (40 -> 50): the instance comes from its new AMI.
    assert re.search(r"^  i-[0-9a-f]+ volume vol-[0-9a-f]+: 50 GiB gp3 encrypted$", out, re.M), out
    assert re.search(r"^  i-[0-9a-f]+ tags: .*env=prod.*service=web.*team=platform", out, re.M), out
    assert re.search(r"Chef node web-i-[0-9a-f]+ registered", out), out
    # The second release: web rebaked; its new AMI and the one it superseded, from the API; the release
    # summary read from AWS alone in an empty workspace.
    assert commands[2] == f"bakery --workspace {ws} bake --all --release 7.1.2", commands
    new = re.search(r"^  web +us-east-1 (ami-[0-9a-f]+) new: +deprecation (\S+), deregistration protection "
                    r"enabled-with-cooldown$", out, re.M)
    old = re.search(r"^ +us-east-1 (ami-[0-9a-f]+) superseded: deprecation (\S+), deregistration protection "
                    r"(\S+)$", out, re.M)
    assert new and old, out
    assert old.group(2) < new.group(2), "the superseded AMI is deprecated before the new one"
    assert commands[3] == f"bakery --workspace {ws} summary --release 7.1.2"
    assert re.search(r"^\| web \| ✔ succeeded \| passed \|", out, re.M), out  # the workspace summary's row
    # The rebaked role's package changes against its previous AMI (the two SBOMs), in that summary.
    assert re.search(rf"^\*\*web\*\*: \d+ packages; against {old.group(1)} \(release 7\.1\): 1 added, 0 removed, "
                     r"1 changed$", out, re.M), out
    assert "- added: curl " in out and "- changed: tzdata 2024a-0+deb12u1 → 2025b-0+deb12u1" in out
    assert commands[4] == f"bakery --workspace {ws / 'another-machine'} summary --release 7.1.2 --from-aws"
    assert re.search(rf"^\| web \| us-east-1 \| ✔ baked \| {new.group(1)} \| 7\.1\.2 \| passed \| yes \| "
                     rf"{re.escape(new.group(2))} \| enabled-with-cooldown \|", out, re.M), out
