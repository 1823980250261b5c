"""``python -m devstack``: the local playground, to try every bakery command by hand.

Starts, all on 127.0.0.1: moto server (AWS, seeded with a base image per platform, the run-list bucket
with the Chef validator key, the alert topic), goiardi (Chef server with authentication, cookbook
``roles`` uploaded), the instance runner (plays EC2's part: runs each launched instance's user data)
and the Jenkins double (what ``generate-jobs`` syncs to). Writes, under ``--workdir``:

- ``bakery.yaml``: the example catalogue (``--catalog``, default ``examples/bakery.yaml``) pointed at
  those services, every role kept (tags, volume sizes, timeouts, the Windows role);
- ``env.sh``: the environment to source in another shell (AWS, Chef, Jenkins credentials of the
  double, ``BAKERY_CATALOG``, a 1 s ``BAKERY_POLL_INTERVAL`` and the venv's bin on ``PATH``).

Then prints that environment and commands to paste, and serves until Ctrl-C (SIGINT) or SIGTERM, when
it stops every service it started and lists what the instances did.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from .jenkins_double import JenkinsDouble, deploy_job_xml
from .stack import JENKINS_TOKEN, JENKINS_USER, DevStack, env_script, playground_env

REPO = Path(__file__).resolve().parents[1]
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workdir", default="playground",
                        help="directory for the services, instances and written files (default: ./playground)")
    parser.add_argument("--catalog", default=str(REPO / "examples" / "bakery.yaml"),
                        help="the catalogue to point at the playground (default: examples/bakery.yaml)")
    parser.add_argument("--boot-delay", type=float, default=0.0, help="seconds each instance waits to boot")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with DevStack(workdir / "services") as stack, \
            stack.runner(workdir / "instances", boot_delay=args.boot_delay) as runner, \
            JenkinsDouble({JENKINS_USER: JENKINS_TOKEN}) as jenkins:
        catalog = stack.write_example_catalog(workdir / "bakery.yaml", args.catalog)
        # Said, not done silently: the copy points at the playground; the user's file is left as it is.
        changes = stack.example_rewrites(args.catalog)
        print(f"{catalog}: a copy of {args.catalog} pointed at the playground ({len(changes)} change(s); "
              f"{args.catalog} itself is not modified):")
        for line in changes:
            print(f"  {line}")
        jenkins.put_item("deploy-release", deploy_job_xml())  # the deploy job the catalogue's upstream_jobs names
        env = playground_env(stack, jenkins.url, catalog)
        env_file = workdir / "env.sh"
        env_file.write_text(env_script(env), encoding="utf-8")
        ws = shlex.quote(str(workdir / "workspace"))
        print(f"moto {stack.moto.url}  goiardi {stack.goiardi.url}  jenkins {jenkins.url}  "
              f"instances under {runner.workdir}\n\n"
              f"{env_file.read_text(encoding='utf-8')}\n"
              f"In another shell:\n"
              f"  . {shlex.quote(str(env_file))}\n"
              f"  bakery --workspace {ws} bake --all --release 1.0\n"
              f"  bakery --workspace {ws} status\n"
              f"  create-instance web --from-ami latest --workspace {ws}\n"
              f"  generate-jobs --workspace {ws}\n"
              f"ready (Ctrl-C stops every service)", flush=True)
        stop.wait()
        for iid, result in sorted(runner.results.items()):
            print(f"{iid}: {result.get('kind')} exit={result.get('exit_code')} {result.get('detail', '')}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
