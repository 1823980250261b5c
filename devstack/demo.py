"""``make demo``: the main job on embedded local services, from a fresh clone.

1. Starts moto server and goiardi on 127.0.0.1 (seeded: base image, bucket, validator, topic,
   cookbook) and the instance runner that plays EC2's part.
2. Writes a demo catalogue from the example catalogue's Linux roles, pointed at those services.
3. Bakes a release of those roles with the real CLI (``bakery bake --role ... --jobs N``).
4. Launches one instance from the newest baked AMI (``create-instance ROLE --from-ami latest``) and
   waits until its first boot registered it with the Chef server.
5. Renders the Jenkins jobs (``generate-jobs --output-dir``) and syncs them to a local Jenkins
   double (``generate-jobs --jenkins-url``), twice, to show the second sync writes nothing.
6. Prints a summary and stops the services.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bakery_lib.catalog import load_catalog

from .jenkins_double import JenkinsDouble
from .moto import isolated_env
from .stack import DevStack

REPO = Path(__file__).resolve().parents[1]


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-c"] else cmd), flush=True)
    proc = subprocess.run(cmd, env=env, cwd=cwd, text=True, capture_output=True, timeout=900)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    return proc


def _cli(name: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; from bakery_lib.cli import {name}; sys.exit({name}())"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(REPO / "examples" / "bakery.yaml"))
    parser.add_argument("--workspace", default="demo-workspace")
    parser.add_argument("--release", default="demo-" + time.strftime("%Y%m%d.%H%M%S"))
    args = parser.parse_args(argv)

    example = load_catalog(args.catalog)
    linux = {name: role for name, role in example.roles.items() if role.platform == "linux"}
    if not linux:
        print(f"demo: {args.catalog} has no Linux role to bake", file=sys.stderr)
        return 2
    ws = Path(args.workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _step("starting moto server, goiardi (with authentication) and the instance runner on 127.0.0.1")
    with DevStack(ws / ".services") as stack, stack.runner(ws / ".services" / "instances") as runner:
        print(f"moto {stack.moto.url}; goiardi {stack.goiardi.url}; instances run under {runner.workdir}")
        roles = {}
        for name, role in linux.items():
            spec: dict = {"platform": "linux"}
            if role.ingress:
                spec["ingress"] = [{"protocol": r.protocol, "from_port": r.from_port, "to_port": r.to_port,
                                    **({"cidr": r.cidr} if r.cidr else {"source_group": r.source_group})}
                                   for r in role.ingress]
            roles[name] = spec
        jenkins = {k: v for k, v in (example.raw.get("jenkins") or {}).items()}
        catalog = stack.write_catalog(ws / "bakery.yaml", roles=roles, jenkins=jenkins)
        env = isolated_env({**stack.env, "BAKERY_POLL_INTERVAL": "0.5",
                            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        base = ["--workspace", str(ws), "--catalog", str(catalog)]

        _step(f"baking release {args.release} of {', '.join(linux)} (bakery bake)")
        role_args = [a for name in linux for a in ("--role", name)]
        bake = _run([*_cli("bakery_main"), *base, "bake", *role_args, "--release", args.release,
                     "--jobs", str(len(linux))], env, ws)
        if bake.returncode != 0:
            print("demo: the bake failed (see above)", file=sys.stderr)
            return 1

        first = next(iter(linux))
        _step(f"scaling fast: an instance of {first} from its newest baked AMI (create-instance --from-ami latest)")
        launched = _run([*_cli("create_instance_main"), first, "--from-ami", "latest", *base], env, ws)
        if launched.returncode != 0:
            return 1
        instance_id = launched.stdout.strip().splitlines()[-1]
        result = runner.wait(instance_id, timeout=120)
        node = f"{first}-{instance_id}"
        registered = stack.goiardi.client().node_exists(node)
        print(f"first boot of {instance_id}: exit {result.get('exit_code')}; Chef node {node} "
              f"{'registered' if registered else 'NOT registered'}")

        _step("Jenkins: one post-deploy bake job per role (generate-jobs)")
        jobs_dir = ws / "jobs"
        _run([*_cli("generate_jobs_main"), "--catalog", str(catalog), "--workspace", str(ws),
              "--output-dir", str(jobs_dir)], env, ws)
        with JenkinsDouble({"demo": "demo-token"}) as jenkins:
            jenv = {**env, "JENKINS_URL": jenkins.url, "JENKINS_USER": "demo", "JENKINS_API_TOKEN": "demo-token"}
            sync = [*_cli("generate_jobs_main"), "--catalog", str(catalog), "--workspace", str(ws)]
            _run(sync, jenv, ws)
            print("(second sync: nothing changed, so nothing is written)")
            _run(sync, jenv, ws)

        _step("summary")
        amis = json.loads((ws / "artifacts" / "amis.json").read_text())
        for role, regions in sorted(amis["amis"].items()):
            print(f"  {role:<12} " + ", ".join(f"{r}: {a}" for r, a in sorted(regions.items())))
        print(f"  release         {amis['release']}")
        print(f"  JUnit reports   {ws / 'reports'}  (summary: {ws / 'reports' / 'summary.html'})")
        print(f"  artifacts       {ws / 'artifacts'}  (amis.json, amis.properties)")
        print(f"  job configs     {jobs_dir}")
        print(f"  scaled instance {instance_id}: Chef node {node} {'registered' if registered else 'missing'}")
        print(f"  took {time.monotonic() - t0:.0f} s; stopping the local services")
        return 0 if registered else 1


if __name__ == "__main__":
    sys.exit(main())
