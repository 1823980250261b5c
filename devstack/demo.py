"""``make demo``: the main job on embedded local services, from a fresh clone.

1. Starts moto server and goiardi on 127.0.0.1 (seeded: base images, bucket, validator, topic,
   cookbook), the instance runner that plays EC2's part (Linux and Windows user data), and the
   Jenkins double: the same playground as ``python -m devstack``.
2. Points the whole example catalogue at those services: every role with its tags, volume sizes,
   timeouts and ingress, the Windows role too (only endpoints and base images change).
3. Bakes a release of every role with the real console scripts (``bakery bake --all``), then shows
   the tags of each AMI as the AWS API reports them.
4. A second release: the first Linux role's volume size changes (a bake input), so ``bakery bake --all``
   rebakes that role and reuses the others' AMIs; shows, as the AWS API reports them, the deprecation
   time and deregistration protection of each new AMI and of the AMI it superseded (its bake also finds
   updated base-image packages), prints the second
   release's summary (``bakery summary --release V``: every bake of the release in the workspace), and
   writes it from the account alone (``bakery summary --release V --from-aws`` in an
   empty workspace, as an operator on another machine would), whose Markdown is printed.
5. Launches one instance from the newest baked AMI of the first Linux role (``create-instance ROLE
   --from-ami latest``), shows its root volume (size, type, encryption) and tags, and waits until its
   first boot registered it with the Chef server.
6. Renders the Jenkins jobs (``generate-jobs --output-dir``) and syncs them to the Jenkins double, twice,
   to show the second sync writes nothing.
7. Prints a summary and stops the services.

Every command is echoed as a user would type it, after ``. DIR/env.sh`` (which the demo writes): the
console scripts on PATH, the environment exported, so a command can be pasted as is. Each command's
output (stdout and stderr, in the order written) follows its echo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bakery_lib.catalog import load_catalog
from bakery_lib.errors import BakeryError

from .jenkins_double import JenkinsDouble, deploy_job_xml
from .moto import isolated_env
from .runner import BASE_PACKAGES, InstanceRunner
from .stack import JENKINS_TOKEN, JENKINS_USER, DevStack, env_script, playground_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: bakery, create-instance, generate-jobs


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Echo ``cmd`` as typed, run it and show its output as it comes (stderr merged into stdout, so
    lines stay in the order the command wrote them); returns it with that output."""
    print("$ " + shlex.join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


def _show_images(stack: DevStack, amis: dict[str, dict[str, str]]) -> None:
    """What the AWS API says about each baked AMI: its tags (the catalogue's, merged, and the bakery's)."""
    for role, regions in sorted(amis.items()):
        for region, ami in sorted(regions.items()):
            image = stack.moto.client("ec2", region).describe_images(ImageIds=[ami])["Images"][0]
            tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
            own = ", ".join(f"{k}={v}" for k, v in sorted(tags.items()) if not k.startswith("bakery:"))
            print(f"  {role:<12} {region} {ami}  tags: {own}; bakery:release={tags.get('bakery:release')}, "
                  f"bakery:boot-test={tags.get('bakery:boot-test')}")


def _show_instance(stack: DevStack, region: str, instance_id: str) -> None:
    """The launched instance's root volume and tags as the AWS API reports them. (moto's CreateImage
    does not carry the bake instance's volume into the AMI as AWS does, so the volume is shown here.)"""
    ec2 = stack.moto.client("ec2", region)
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
    for vol in volumes:
        print(f"  {instance_id} volume {vol['VolumeId']}: {vol['Size']} GiB {vol['VolumeType']}"
              f"{' encrypted' if vol.get('Encrypted') else ' NOT encrypted'}")
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    print(f"  {instance_id} tags: " + ", ".join(f"{k}={v}" for k, v in sorted(tags.items())))


def _lifecycle(image: dict) -> str:
    return (f"deprecation {image.get('DeprecationTime') or 'none'}, "
            f"deregistration protection {image.get('DeregistrationProtection') or 'disabled'}")


def _show_lifecycle(stack: DevStack, first: dict[str, dict[str, str]], second: dict[str, dict[str, str]]) -> None:
    """Each role's AMI of the second release beside the one it superseded, as DescribeImages reports them."""
    for role, regions in sorted(second.items()):
        for region, ami in sorted(regions.items()):
            old = first.get(role, {}).get(region)
            ids = [ami] + ([old] if old and old != ami else [])
            found = {i["ImageId"]: i for i in stack.moto.client("ec2", region).describe_images(ImageIds=ids)["Images"]}
            if old == ami:
                print(f"  {role:<12} {region} {ami} reused (unchanged inputs): {_lifecycle(found[ami])}")
                continue
            print(f"  {role:<12} {region} {ami} new:        {_lifecycle(found[ami])}")
            if old:
                print(f"  {'':<12} {region} {old} superseded: {_lifecycle(found[old])}")


def _change_a_bake_input(catalog: Path, role: str) -> str:
    """What the second release changes: ``role``'s volume size (in the bake key, so the role is rebaked)."""
    data = yaml.safe_load(catalog.read_text(encoding="utf-8"))
    spec = data["roles"][role]
    before = spec.get("volume_size") or data.get("defaults", {}).get("volume_size") or 8
    spec["volume_size"] = int(before) + 10
    catalog.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return f"{role}'s volume_size {before} -> {spec['volume_size']} GiB"


# What the second release's bake finds installed: the base image's security updates (one package upgraded,
# one added by the converge); the release summary shows the difference against the role's previous AMI.
SECOND_RELEASE_PACKAGES = {**BASE_PACKAGES, "tzdata": "2025b-0+deb12u1", "curl": "7.88.1-10+deb12u12"}


def _second_release(stack: DevStack, runner: InstanceRunner, ws: Path, catalog: Path, run_env: dict[str, str],
                    role: str, first: dict[str, Any], release: str) -> bool:
    """Bake ``release`` after changing one bake input of ``role`` (on a base image with updated packages);
    show the AMIs' lifecycle, the package changes and the release summary read from AWS alone. False if a
    command failed."""
    wsq = ["--workspace", str(ws)]
    change = _change_a_bake_input(catalog, role)
    runner.packages = SECOND_RELEASE_PACKAGES
    _step(f"a second release, {release}: it changes {change} in {catalog.name} (and the base image has package "
          "updates: tzdata upgraded, curl added); the other roles are unchanged and reuse their AMIs")
    if _run(["bakery", *wsq, "bake", "--all", "--release", release], run_env, ws).returncode != 0:
        print("demo: the second bake failed (see above)", file=sys.stderr)
        return False
    second = json.loads((ws / "artifacts" / "amis.json").read_text(encoding="utf-8"))
    _step("deprecation and deregistration protection, as the AWS API reports them: the new AMIs and the ones "
          "they superseded")
    _show_lifecycle(stack, first["amis"], second["amis"])
    _step(f"the summary of release {release} in this workspace (every bake of the release, also the reused ones; "
          "the rebaked role's package changes against its previous AMI, from the two SBOMs)")
    if _run(["bakery", *wsq, "summary", "--release", release], run_env, ws).returncode != 0:
        return False
    print((ws / "reports" / "summary.md").read_text(encoding="utf-8"), end="")
    _step(f"the summary of release {release} from the account alone (an empty workspace, as on another machine)")
    elsewhere = ws / "another-machine"
    if _run(["bakery", "--workspace", str(elsewhere), "summary", "--release", release, "--from-aws"],
            run_env, ws).returncode != 0:
        return False
    print((elsewhere / "reports" / "summary.md").read_text(encoding="utf-8"), end="")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--catalog", default=str(REPO / "examples" / "bakery.yaml"))
    parser.add_argument("--workspace", default="demo-workspace")
    parser.add_argument("--release", default="demo-" + time.strftime("%Y%m%d.%H%M%S"))
    parser.add_argument("--second-release", help="the second release baked (default: RELEASE.2)")
    args = parser.parse_args(argv)
    second_release = args.second_release or f"{args.release}.2"

    try:
        example = load_catalog(args.catalog)
    except BakeryError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    linux = [name for name, role in example.roles.items() if role.platform == "linux"]
    ws = Path(args.workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _step("starting moto server, goiardi (with authentication), the instance runner and a Jenkins double "
          "on 127.0.0.1")
    with DevStack(ws / ".services") as stack, stack.runner(ws / ".services" / "instances") as runner, \
            JenkinsDouble({JENKINS_USER: JENKINS_TOKEN}) as jenkins:
        catalog = stack.write_example_catalog(ws / "bakery.yaml", args.catalog)
        env = playground_env(stack, jenkins.url, catalog)
        env_file = ws / "env.sh"
        env_file.write_text(env_script(env), encoding="utf-8")
        run_env = isolated_env({**env, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])})
        print(f"moto {stack.moto.url}; goiardi {stack.goiardi.url}; jenkins {jenkins.url}; "
              f"instances run under {runner.workdir}")
        print(f"the whole of {args.catalog} pointed at them: {catalog}")
        print(f"every command below runs after:  . {shlex.quote(str(env_file))}")
        wsq = ["--workspace", str(ws)]

        roles = yaml.safe_load(catalog.read_text(encoding="utf-8"))["roles"]
        _step(f"baking release {args.release} of every role: {', '.join(roles)}")
        bake = _run(["bakery", *wsq, "bake", "--all", "--release", args.release, "--jobs", str(len(roles))],
                    run_env, ws)
        if bake.returncode != 0:
            print("demo: the bake failed (see above)", file=sys.stderr)
            return 1
        amis = json.loads((ws / "artifacts" / "amis.json").read_text(encoding="utf-8"))
        _step("the AMIs as the AWS API reports them (the catalogue's tags, merged with defaults.tags)")
        _show_images(stack, amis["amis"])
        _run(["bakery", *wsq, "summary", "--release", args.release], run_env, ws)

        first = linux[0]
        if not _second_release(stack, runner, ws, catalog, run_env, first, amis, second_release):
            return 1
        _step(f"scaling fast: an instance of {first} from its newest baked AMI")
        launched = _run(["create-instance", first, "--from-ami", "latest", *wsq], run_env, ws)
        if launched.returncode != 0:
            return 1
        # create-instance prints the instance id alone on a line (its progress lines are interleaved here).
        instance_id = next(line for line in reversed(launched.stdout.splitlines())
                           if re.fullmatch(r"i-[0-9a-f]{8,17}", line.strip())).strip()
        _show_instance(stack, example.roles[first].region, instance_id)
        result = runner.wait(instance_id, timeout=120)
        node = f"{first}-{instance_id}"
        registered = stack.goiardi.client().node_exists(node)
        print(f"first boot of {instance_id}: exit {result.get('exit_code')}; Chef node {node} "
              f"{'registered' if registered else 'NOT registered'}")

        _step("Jenkins: one post-deploy bake job per role")
        jobs_dir = ws / "jobs"
        _run(["generate-jobs", *wsq, "--output-dir", str(jobs_dir)], run_env, ws)
        sync = ["generate-jobs", *wsq]
        jenkins.put_item("deploy-release", deploy_job_xml())  # the deploy job the catalogue's upstream_jobs names
        _run(sync, run_env, ws)
        print("(second sync: nothing changed, so nothing is written)")
        _run(sync, run_env, ws)

        _step("summary")
        print(f"  releases        {amis['release']}, then {second_release} (its summary from AWS: "
              f"{ws / 'another-machine' / 'reports' / 'summary.html'})")
        print(f"  JUnit reports   {ws / 'reports'}  (summary: {ws / 'reports' / 'summary.html'})")
        print(f"  artifacts       {ws / 'artifacts'}  (amis.json, amis.properties)")
        print(f"  job configs     {jobs_dir}")
        print(f"  scaled instance {instance_id}: Chef node {node} {'registered' if registered else 'missing'}")
        print(f"  took {time.monotonic() - t0:.0f} s; stopping the local services "
              f"(`python -m devstack` keeps them running to try commands by hand)")
        return 0 if registered else 1


if __name__ == "__main__":
    sys.exit(main())
