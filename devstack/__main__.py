"""``python -m devstack --workdir DIR``: run the local stack until SIGINT/SIGTERM.

Starts moto + goiardi (seeded) and an instance runner, writes ``DIR/bakery.yaml`` (a catalogue with
the given roles pointing at them) and ``DIR/env.sh`` (``export`` lines for the bakery CLI), prints
``ready``, then serves until stopped. For a demo or a manual session in another shell:
``. DIR/env.sh && bakery --catalog DIR/bakery.yaml stage preflight --role web --release 1``.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from .moto import AWS_LEAKS
from .stack import DevStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="directory for servers, instances and written files")
    parser.add_argument("--roles", default="web,worker", help="comma-separated Linux roles for bakery.yaml")
    parser.add_argument("--boot-delay", type=float, default=0.0, help="seconds each instance waits to boot")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with DevStack(workdir) as stack, stack.runner(boot_delay=args.boot_delay) as runner:
        catalog = stack.write_catalog(workdir / "bakery.yaml", roles=[r for r in args.roles.split(",") if r])
        env_file = workdir / "env.sh"
        env_file.write_text(
            f"unset {' '.join(AWS_LEAKS)}\n"  # no real profile or session token may creep in
            + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(stack.env.items()))
        )
        print(f"ready: catalogue {catalog}, environment {env_file}, instances under {runner.workdir}", flush=True)
        stop.wait()
        for iid, result in sorted(runner.results.items()):
            print(f"{iid}: {result.get('kind')} exit={result.get('exit_code')} {result.get('detail', '')}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
