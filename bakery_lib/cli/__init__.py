"""Command-line entry points: argument parsing only. The only module that reads argv and the environment.

Exit codes: 0 success, 1 the stage/bake failed, 2 bad usage or a bad catalogue (nothing done).
No traceback reaches a user for an expected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..errors import BakeryError, UsageError


def _poll_interval(env: dict[str, str]) -> float:
    raw = env.get("BAKERY_POLL_INTERVAL", "15")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"BAKERY_POLL_INTERVAL={raw!r} is not a number of seconds") from None
    if not 0.01 <= value <= 600:
        raise UsageError(f"BAKERY_POLL_INTERVAL={raw!r} must be between 0.01 and 600 seconds")
    return value


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--workspace", metavar="DIR", default=default,
                        help="where .bakery/, reports/ and artifacts/ live (default: current directory)")
    parser.add_argument("--catalog", metavar="PATH", default=default,
                        help="roles catalogue (default: $BAKERY_CATALOG or ./bakery.yaml)")
    parser.add_argument("--chef-config", metavar="PATH", default=default,
                        help="knife config.rb/knife.rb with the bakery's Chef API identity")


def build_parser() -> argparse.ArgumentParser:
    from ..stages import ORDER

    parser = argparse.ArgumentParser(prog="bakery", description="Bake fully configured AMIs per Chef role.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, top=False)
        return p

    p = add("stage", "run one bake stage for one role (one Jenkinsfile stage)")
    p.add_argument("stage", choices=ORDER, metavar="STAGE", help="one of: " + ", ".join(ORDER))
    p.add_argument("--role", required=True)
    p.add_argument("--release", help="the release being baked (preflight only; stored in the state)")
    p.add_argument("--force", action="store_true",
                   help="preflight only: bake even when an AMI with the same bake key exists")

    p = add("cleanup", "remove whatever this workspace's bake of ROLE still owns (idempotent)")
    p.add_argument("--role", required=True)

    p = add("bake", "run every stage in one process, for several roles in parallel")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--role", action="append", dest="roles", metavar="ROLE")
    g.add_argument("--all", action="store_true", help="every role of the catalogue")
    p.add_argument("--release", required=True)
    p.add_argument("--jobs", type=int, default=4, metavar="N", help="roles baked at once (default 4)")
    p.add_argument("--keep-on-failure", action="store_true",
                   help="keep a failed bake's instance for debugging (prints how to remove it)")
    p.add_argument("--force", action="store_true", help="rebake even when an AMI with the same bake key exists")

    p = add("render", "write a role's instance-side scripts to DIR/ROLE/")
    p.add_argument("--role", required=True)
    p.add_argument("--output-dir", required=True, metavar="DIR")

    p = add("status", "show the state of this workspace's bakes")
    p.add_argument("--role")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("prune", "deregister a role's old AMIs and their snapshots, per region")
    p.add_argument("--role", required=True)
    p.add_argument("--keep", type=int, metavar="N", help="AMIs kept per region (default: the role's `keep`)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; change nothing")

    p = add("reap", "remove what killed bakes left behind (safe in cron)")
    p.add_argument("--older-than", default="0", metavar="DURATION", help="e.g. 6h, 2d (default 0)")
    p.add_argument("--region", action="append", dest="regions", metavar="REGION",
                   help="default: every region of every catalogue role")
    p.add_argument("--no-chef", action="store_true", help="leave the Chef server alone")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")

    p = add("summary", "write reports/summary.html and reports/summary.md from this workspace's bakes")
    p.add_argument("--release")

    p = add("publish-runlist", "write s3://BUCKET/runlists/ROLE.json from the role's launch run list")
    p.add_argument("--role", required=True)
    return parser


class _Runtime:
    def __init__(self, args: argparse.Namespace, env: dict[str, str]):
        self.args = args
        self.env = env
        self.workspace = args.workspace or os.getcwd()
        self._catalog = None

    def catalog(self):
        from ..catalog import load_catalog

        if self._catalog is None:
            self._catalog = load_catalog(self.args.catalog or self.env.get("BAKERY_CATALOG") or "bakery.yaml")
        return self._catalog

    def ws(self):
        from ..state import Workspace

        return Workspace(self.workspace)

    def aws(self):
        from ..aws import Aws

        return Aws(endpoint_url=self.env.get("AWS_ENDPOINT_URL") or None)

    def context(self, role_name: str, cancel: threading.Event | None = None):
        from ..aws import Clock
        from ..stages.base import Context

        role = self.catalog().role(role_name)
        return Context(ws=self.ws(), catalog=self.catalog(), role=role, aws=self.aws(), clock=Clock(cancel),
                       env=self.env, chef_config=self.args.chef_config, poll_interval=_poll_interval(self.env))


def _install_signal_handlers(cancel: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        print(f"bakery: received {signal.Signals(signum).name}; stopping and cleaning up", file=sys.stderr, flush=True)
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_stage(rt: _Runtime) -> int:
    from ..catalog import check_role_name
    from ..stages import run_stage

    check_role_name(rt.args.role)
    if rt.args.release is not None and rt.args.stage != "preflight":
        raise UsageError("--release is given to preflight only; later stages read it from the state")
    cancel = threading.Event()
    _install_signal_handlers(cancel)
    ctx = rt.context(rt.args.role, cancel)
    ctx.force = rt.args.force
    with ctx.ws.lock(rt.args.role):
        result = run_stage(ctx, rt.args.stage, release=rt.args.release)
    if result.exit_code:
        print(f"bakery: stage {result.stage} failed for role {result.role}: {result.message}", file=sys.stderr)
    else:
        print(f"{result.role} {result.stage}: {result.message}")
    return result.exit_code


def cmd_cleanup(rt: _Runtime) -> int:
    from ..catalog import check_role_name
    from ..cleanup import cleanup
    from ..reports import write_junit

    check_role_name(rt.args.role)
    ctx = rt.context(rt.args.role)
    t0 = time.monotonic()
    with ctx.ws.lock(rt.args.role):
        ctx.state = ctx.ws.load(rt.args.role)
        report = cleanup(ctx)
    text = report.text()
    write_junit(ctx.ws, rt.args.role, "cleanup", time.monotonic() - t0, output=text,
                failure=text if report.errors else None)
    if report.errors:
        print(f"bakery: cleanup of role {rt.args.role} incomplete: {text}", file=sys.stderr)
        return 1
    print(f"{rt.args.role} cleanup: {text}")
    return 0


def cmd_bake(rt: _Runtime) -> int:
    from ..bake import bake_many, summary_lines
    from ..catalog import check_role_name
    from ..stages.preflight import check_release

    catalog = rt.catalog()
    roles = sorted(catalog.roles) if rt.args.all else list(dict.fromkeys(rt.args.roles))
    for r in roles:
        check_role_name(r)
        catalog.role(r)
    check_release(rt.args.release)
    if rt.args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    cancel = threading.Event()
    _install_signal_handlers(cancel)
    aws = rt.aws()
    outcomes = bake_many(
        rt.ws(), catalog, roles, rt.args.release, aws, cancel, jobs=rt.args.jobs,
        keep_on_failure=rt.args.keep_on_failure, force=rt.args.force, env=rt.env,
        chef_config=rt.args.chef_config, poll_interval=_poll_interval(rt.env),
    )
    from ..summary import write_summary

    html, md = write_summary(rt.ws(), outcomes, release=rt.args.release)
    print("\n".join(summary_lines(outcomes)))
    # What the run cost against the account's API rate limits (polls and look-ups are shared by roles).
    print(f"AWS API calls: {aws.counter.total} ({aws.counter.total / len(outcomes):.1f} per role)")
    print(f"summary: {html} and {md}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"bakery: {len(failed)} of {len(outcomes)} role(s) failed: {', '.join(o.role for o in failed)}",
              file=sys.stderr)
        return max(o.exit_code for o in failed)
    return 0


def cmd_render(rt: _Runtime) -> int:
    from ..userdata import render_role_scripts

    role = rt.catalog().role(rt.args.role)
    paths = render_role_scripts(role, Path(rt.args.output_dir))
    for p in paths:
        print(p)
    return 0


def cmd_status(rt: _Runtime) -> int:
    from ..catalog import check_role_name

    ws = rt.ws()
    roles = [check_role_name(rt.args.role)] if rt.args.role is not None else ws.roles_with_state()
    states = {r: ws.load(r) for r in roles}
    if rt.args.json:
        print(json.dumps({r: (s.to_json() if s else None) for r, s in states.items()}, indent=2, sort_keys=True))
        return 0
    if not states:
        print(f"no bakes in {ws.root}")
    for r, s in states.items():
        if s is None:
            print(f"{r}: no bake in {ws.root}")
            continue
        status = s.outcome or ("open" if not s.closed else "closed")
        print(f"{r}: bake {s.bake_id}, release {s.release}, {status}")
        print(f"  base AMI {s.base_ami}; instance {s.instance_id or '-'}"
              f"{' (terminated)' if s.instance_terminated else ''}; image {s.image_id or '-'} ({s.image_state or '-'})")
        for name, rec in s.stages.items():
            took = f"{rec.duration:.1f} s" if rec.duration is not None else ""
            print(f"  {name:<16} {rec.status:<10} {took:>9}  {rec.message.splitlines()[0][:100] if rec.message else ''}")
    return 0


def cmd_prune(rt: _Runtime) -> int:
    from ..catalog import check_role_name
    from ..lifecycle import prune
    from ..stages.base import default_log

    role = rt.catalog().role(check_role_name(rt.args.role))
    keep = rt.args.keep if rt.args.keep is not None else role.keep
    report = prune(rt.aws(), role, keep, dry_run=rt.args.dry_run, log=default_log)
    print(report.text())
    return report.exit_code


def cmd_reap(rt: _Runtime) -> int:
    from ..catalog import REGION_RE
    from ..chef import ChefClient
    from ..lifecycle import parse_duration, reap
    from ..stages.base import default_log

    older = parse_duration(rt.args.older_than)
    for region in rt.args.regions or []:
        if not REGION_RE.match(region):
            raise UsageError(f"--region {region!r} is not an AWS region name")
    regions = rt.args.regions or sorted({r for ro in rt.catalog().roles.values() for r in ro.regions})
    ws = rt.ws()
    states = [s for r in ws.roles_with_state() if (s := ws.load(r)) is not None]
    chef = chef_error = None
    if not rt.args.no_chef:
        try:
            chef = ChefClient.from_env(rt.env, rt.args.chef_config)
        except BakeryError as exc:
            chef_error = str(exc)
    report = reap(rt.aws(), regions, chef, older_than=older, workspace_states=states, now=time.time(),
                  dry_run=rt.args.dry_run, log=default_log, chef_error=chef_error)
    print(report.text())
    return report.exit_code


def cmd_summary(rt: _Runtime) -> int:
    from ..summary import write_summary

    for path in write_summary(rt.ws(), release=rt.args.release):
        print(path)
    return 0


def cmd_publish_runlist(rt: _Runtime) -> int:
    from ..stages.publish import publish_runlist

    ctx = rt.context(rt.args.role)
    print(publish_runlist(ctx))
    return 0


COMMANDS: dict[str, Callable[[_Runtime], int]] = {
    "stage": cmd_stage,
    "cleanup": cmd_cleanup,
    "bake": cmd_bake,
    "render": cmd_render,
    "status": cmd_status,
    "publish-runlist": cmd_publish_runlist,
    "prune": cmd_prune,
    "reap": cmd_reap,
    "summary": cmd_summary,
}


def _guard(fn: Callable[[], int], prog: str) -> int:
    try:
        return fn()
    except BakeryError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 1


def bakery_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rt = _Runtime(args, dict(os.environ))
    return _guard(lambda: COMMANDS[args.command](rt), "bakery")


def create_instance_main(argv: Sequence[str] | None = None) -> int:
    from ..launcher import main

    return _guard(lambda: main(argv, dict(os.environ)), "create-instance")


def generate_jobs_main(argv: Sequence[str] | None = None) -> int:
    from .generate_jobs import main

    return _guard(lambda: main(list(argv) if argv is not None else None), "generate-jobs")


if __name__ == "__main__":
    sys.exit(bakery_main())
