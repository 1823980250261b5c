"""Command-line entry points: argument parsing only. The only module that reads argv and the environment.

``bakery`` and ``create-instance`` live here, ``generate-jobs`` in ``cli.generate_jobs``. Each command
builds one ``Settings`` from argv + environment and passes it down; nothing below reads the
environment.

Exit codes: 0 success, 1 the stage/bake failed, 2 bad usage or a bad catalogue (nothing done).
No traceback reaches a user for an expected failure, nor for a closed pipe (``bakery status | head``).

Imports: a Jenkins build runs one ``bakery`` process per stage, so what a process loads is paid on every
stage. This module imports only what parsing and every command need (no boto3, Jinja2, python-jenkins,
pychef, no stage module); each command imports what it uses itself, inside its function: ``bakery stage
NAME`` loads boto3, the catalogue's models and that one stage, ``bakery --help`` none of them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..catalog import REGION_RE, Catalog, check_role_name, load_catalog
from ..clock import Clock
from ..errors import BakeryError, CatalogError, UsageError, WorkspaceWriteError
from ..settings import DEFAULT_LOCK_WAIT, Settings

if TYPE_CHECKING:
    from ..aws import Aws
    from ..lifecycle import PruneReport
    from ..stages.base import Context
    from ..state import BakeState, Workspace
    from ..summary import RoleRow

# A process killed by SIGPIPE exits 128 + 13; a reader that closed the pipe early sees the same from us.
EXIT_BROKEN_PIPE = 141


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--workspace", metavar="DIR", default=default,
                        help="where .bakery/, reports/ and artifacts/ live (default: current directory)")
    parser.add_argument("--catalog", metavar="PATH", default=default,
                        help="roles catalogue (default: $BAKERY_CATALOG or ./bakery.yaml)")
    parser.add_argument("--chef-config", metavar="PATH", default=default,
                        help="knife config.rb/knife.rb with the bakery's Chef API identity")


def _bake_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-on-failure", action="store_true",
                   help="keep a failed bake's instance and its Chef identity for debugging (prints how to remove them)")


def build_parser() -> argparse.ArgumentParser:
    # The stage names (the stages' package runs a stage: create-instance and generate-jobs need it not)
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
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--role")
    g.add_argument("--bake-id", metavar="ID", help="a bake of any workspace, found by its bakery:bake-id tag "
                   "(the same as `bakery reap --bake-id ID`)")
    p.add_argument("--lock-wait", type=float, default=DEFAULT_LOCK_WAIT, metavar="SECONDS",
                   help=f"wait this long for another process cleaning the role (default {DEFAULT_LOCK_WAIT:.0f})")

    p = add("bake", "run every stage in one process, for several roles in parallel")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--role", action="append", dest="roles", metavar="ROLE")
    g.add_argument("--all", action="store_true", help="every role of the catalogue")
    p.add_argument("--release", required=True)
    p.add_argument("--jobs", type=int, default=4, metavar="N", help="roles baked at once (default 4)")
    _bake_options(p)
    p.add_argument("--force", action="store_true", help="rebake even when an AMI with the same bake key exists")
    p.add_argument("--dry-run", action="store_true",
                   help="show per role what a bake would do (reuse AMI X / bake because Y / refused because Z); "
                        "create and write nothing")

    p = add("validate", "check the catalogue and everything a bake needs, creating nothing (for pull requests)")
    p.add_argument("--role", action="append", dest="roles", metavar="ROLE", help="default: every role")
    p.add_argument("--offline", action="store_true", help="check the catalogue file only; ask neither AWS nor Chef")

    p = add("render", "write a role's instance-side scripts to DIR/ROLE/")
    p.add_argument("--role", required=True)
    p.add_argument("--output-dir", required=True, metavar="DIR")

    p = add("status", "show the state of this workspace's bakes")
    p.add_argument("--role")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("prune", "deregister a role's old AMIs and their snapshots, per region")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--role")
    g.add_argument("--all", action="store_true", help="every role of the catalogue (for a nightly job)")
    p.add_argument("--keep", type=int, metavar="N", help="AMIs kept per region (default: the role's `keep`)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; change nothing")

    p = add("reap", "remove what killed bakes left behind (safe in cron)")
    _reap_arguments(p)

    p = add("summary", "write reports/summary.html and reports/summary.md from this workspace's bakes "
                       "(with --from-aws: from the account alone)")
    p.add_argument("--release", help="only the roles baked for this release")
    p.add_argument("--from-aws", action="store_true",
                   help="with --release: build the summary from the account alone (the AMIs tagged with the "
                        "release and what /bakery/ROLE/latest published for it), not from this workspace; read-only")
    p.add_argument("--region", action="append", dest="regions", metavar="REGION",
                   help="with --from-aws: a region to read (default: every region of every catalogue role)")

    p = add("publish-runlist", "write s3://BUCKET/runlists/ROLE.json from the role's launch run list")
    p.add_argument("--role", required=True)

    p = add("iam-policy", "print the IAM policy the bakery's identity needs for this catalogue (JSON)")
    p.add_argument("--instance-role", metavar="ROLE",
                   help="print the inline policy of ROLE's instance role instead")

    p = add("setup", "create or check what bakes need in the account (buckets, validator key, alert topic); "
                     "plans first")
    p.add_argument("--validator-key", metavar="PATH", help="the Chef validator's PEM, uploaded encrypted to "
                   "chef.validation_key_s3 when that object does not exist")
    p.add_argument("--dry-run", action="store_true", help="show the plan and every call it would make; change nothing")

    p = add("schema", "write the catalogue's JSON Schema (for editors' YAML completion and checks)")
    p.add_argument("--output", metavar="FILE", help="write it to FILE (default: standard output)")
    return parser


def _reap_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--older-than", default="0", metavar="DURATION", help="e.g. 6h, 2d (default 0)")
    p.add_argument("--region", action="append", dest="regions", metavar="REGION",
                   help="default: every region of every catalogue role")
    p.add_argument("--bake-id", metavar="ID", help="only this bake (any workspace), whatever its expiry")
    p.add_argument("--no-chef", action="store_true", help="leave the Chef server alone")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")


class _Runtime:
    """The parsed command line with the settings built once from it and the environment."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]):
        self.args = args
        self.settings = Settings.from_env(env, catalog=args.catalog, chef_config=args.chef_config,
                                          lock_wait=getattr(args, "lock_wait", DEFAULT_LOCK_WAIT))
        self.workspace = args.workspace or os.getcwd()
        self._catalog: Catalog | None = None

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = load_catalog(self.settings.catalog_path)
        return self._catalog

    def ws(self) -> Workspace:
        # The workspace's records (generate-jobs and a launch have none)
        from ..state import Workspace

        return Workspace(self.workspace)

    def aws(self) -> Aws:
        # boto3 (see "Imports" above)
        from ..aws import Aws

        return Aws(endpoint_url=self.settings.endpoint_url)

    def context(self, role_name: str, cancel: threading.Event | None = None) -> Context:
        # The stages' context (boto3 with it)
        from ..stages.base import Context

        aws = self.aws()
        return Context(ws=self.ws(), catalog=self.catalog(), role=self.catalog().role(role_name), aws=aws,
                       clock=Clock(cancel, rounds=aws.rounds), settings=self.settings)


def _install_signal_handlers(cancel: threading.Event, after: str = "cleaning up") -> None:
    def handler(signum: int, _frame: object) -> None:
        print(f"bakery: received {signal.Signals(signum).name}; stopping and {after}", file=sys.stderr, flush=True)
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_stage(rt: _Runtime) -> int:
    # This command's own (see "Imports" above); the stage's module is loaded by run_stage
    from ..lifecycle.heartbeat import Heartbeat
    from ..stages import run_stage
    from ..stages.base import default_log

    role = check_role_name(rt.args.role)
    if rt.args.release is not None and rt.args.stage != "preflight":
        raise UsageError("--release is given to preflight only; later stages read it from the state")
    ctx = rt.context(role, threading.Event())
    # One stage does not clean up after itself (Jenkins' post { always } does): say what to run.
    how = f"bakery --workspace {ctx.ws.root} cleanup --role {role}"
    cancel = ctx.clock.cancel
    _install_signal_handlers(cancel, f"leaving this bake as it is; to remove what it created run: {how}")
    ctx.force = rt.args.force
    heartbeat = Heartbeat(ctx.aws, log=default_log, interval=rt.settings.heartbeat_interval)
    heartbeat.track(ctx)
    with ctx.ws.lock(role), heartbeat:
        # A long stage (bootstrap, wait-image) beats while it runs (every heartbeat interval).
        # The result is printed once, below (stdout, or stderr on failure), not also as a log line.
        result = run_stage(ctx, rt.args.stage, release=rt.args.release, announce=False)
    if result.exit_code:
        print(f"bakery: stage {result.stage} failed for role {result.role}: {result.message}", file=sys.stderr)
        if cancel.is_set():
            print(f"bakery: interrupted; to remove what this bake created run: {how}", file=sys.stderr)
    else:
        print(f"{result.role} {result.stage}: {result.message}")
    return result.exit_code


def _role_of_bake(ws: Workspace, bake_id: str) -> str | None:
    """The role whose bake in this workspace is ``bake_id``, if any."""
    for role in ws.roles_with_state():
        state = ws.load(role)
        if state is not None and state.bake_id == bake_id:
            return role
    return None


def cmd_cleanup(rt: _Runtime) -> int:
    # This command's own (see "Imports" above)
    from ..cleanup import cleanup
    from ..reports import write_junit

    role = rt.args.role
    if rt.args.bake_id is not None:
        role = _role_of_bake(rt.ws(), rt.args.bake_id)
        if role is None:  # a bake of another workspace: found by its tags
            return _reap(rt, regions=None, older_than=0.0, bake_id=rt.args.bake_id, no_chef=False, dry_run=False)
    role = check_role_name(role)
    if rt.args.lock_wait < 0:
        raise UsageError("--lock-wait takes a number of seconds, 0 or more")
    ctx = rt.context(role)
    how = f"bakery --workspace {ctx.ws.root} cleanup --role {role}"
    stopped = _stop_removals_on_signal(ctx, how)
    t0 = time.monotonic()
    with ctx.ws.lock(role, wait=rt.args.lock_wait, on_wait=lambda m: print(f"bakery: {m}", file=sys.stderr,
                                                                         flush=True)):
        ctx.state = ctx.ws.load(role)
        report = cleanup(ctx)
    text = report.text()
    write_junit(ctx.ws, role, "cleanup", time.monotonic() - t0, output=text, failure=text if report.errors else None)
    if stopped:
        left = f"To remove what is left run: {how}" if report.errors else "Nothing is left."
        print(f"bakery: cleanup of role {role} stopped by {stopped[0]} after the removal in progress: {text}. "
              f"{left}", file=sys.stderr, flush=True)
        return 1
    if report.errors:
        print(f"bakery: cleanup of role {role} incomplete: {text}", file=sys.stderr)
        return 1
    print(f"{role} cleanup: {text}")
    return 0


def _stop_removals_on_signal(ctx: Context, how: str) -> list[str]:
    """SIGTERM/SIGINT during ``bakery cleanup``: finish the AWS request in progress, then attempt no other.

    Jenkins kills a build's processes by its cookie (every process of the workspace), so a second abort,
    or `post`'s own timeout, reaches `bakery cleanup` too, and gives up on it 20 s later. Dying there
    would say nothing of what is left; instead every later AWS request fails as "not attempted", so each
    remaining removal is reported with its command, and the caller prints what is left and exits 1.
    Returns the list the signal's name is put into when one came."""
    received: list[str] = []

    class _NoPause(Clock):  # stopped: retrying a refused request would only use up Jenkins' 20 s
        def pause(self, seconds: float) -> bool:
            return False

        def sleep(self, seconds: float) -> None:
            return None

    def handler(signum: int, _frame: object) -> None:
        if not received:
            received.append(signal.Signals(signum).name)
            ctx.clock = _NoPause(rounds=ctx.clock.rounds)
            print(f"bakery: received {received[0]}; finishing the removal in progress, then stopping "
                  f"(what is left is listed; to remove it later run: {how})", file=sys.stderr, flush=True)

    aws_call = ctx.aws.call

    def call(service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        if received:
            raise BakeryError(f"not attempted: bakery cleanup was stopped by {received[0]}")
        return aws_call(service, region, operation, **params)

    chef = ctx.chef

    def gated_chef() -> Any:
        if received:
            raise BakeryError(f"not attempted: bakery cleanup was stopped by {received[0]}")
        return chef()

    # This process's one AWS client and its Chef client: every request of the teardown passes here.
    ctx.aws.call = call  # type: ignore[method-assign]
    ctx.chef = gated_chef  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return received


def _bake(settings: Settings, ws: Workspace, catalog: Catalog, roles: list[str], release: str, *, jobs: int = 4,
          keep_on_failure: bool = False, force: bool = False) -> int:
    """The bake runner as both ``bakery bake`` and ``create-instance --bake`` call it."""
    # The bake's own (see "Imports" above)
    from ..aws import Aws
    from ..bake import bake_many, summary_lines
    from ..stages.preflight import check_release
    from ..summary import write_summary

    for r in roles:
        catalog.role(check_role_name(r))
    check_release(release)
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    cancel = threading.Event()
    _install_signal_handlers(cancel)
    aws = Aws(endpoint_url=settings.endpoint_url)
    write_errors: list[str] = []
    outcomes = bake_many(ws, catalog, roles, release, aws, cancel, jobs=jobs, keep_on_failure=keep_on_failure,
                         force=force, settings=settings, write_errors=write_errors)
    print("\n".join(summary_lines(outcomes)))
    # What the run cost against the account's API rate limits (polls and look-ups are shared by roles).
    print(f"AWS API calls: {aws.counter.total} ({aws.counter.total / len(outcomes):.1f} per role)")
    if all(o.refused for o in outcomes):
        # Every role was refused (another process is baking it): its summary is that process's to write.
        print("summary: not written (every role was refused; the process baking them writes it)")
    else:
        try:
            html, md = write_summary(ws, outcomes, release=release, tagged=_tagged_rows(aws, catalog, release))
            print(f"summary: {html} and {md}")
        except WorkspaceWriteError as exc:
            write_errors.append(f"summary not written: {exc}")
    for problem in write_errors:
        print(f"bakery: {problem}", file=sys.stderr)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"bakery: {len(failed)} of {len(outcomes)} role(s) failed: {', '.join(o.role for o in failed)}",
              file=sys.stderr)
        return max(o.exit_code for o in failed)
    return 1 if write_errors else 0


def _tagged_rows(aws: Aws, catalog: Catalog, release: str) -> list[RoleRow]:
    """The release's bakes of other workspaces and processes, from their AMIs' tags (one call per region)."""
    # The summary's (see "Imports" above)
    from ..summary import rows_from_images

    images: list[dict] = []
    for region in sorted({r.region for r in catalog.roles.values()}):
        try:
            found = aws.describe_images(region, Owners=["self"], Filters=[
                {"Name": "tag:bakery:release", "Values": [release]},
                {"Name": "tag:bakery:created-by", "Values": ["bakery"]}])
        except BakeryError as exc:  # the summary is a report: it never fails the bake
            print(f"bakery: the summary lacks other runs' bakes in {region}: {exc}", file=sys.stderr)
            continue
        images += [{**i, "Region": region} for i in found if i.get("State") in ("available", "failed")]
    return rows_from_images(images)


def _plan(rt: _Runtime, roles: list[str], release: str, *, validate: bool) -> int:
    # The dry run's own (see "Imports" above)
    from ..dryrun import plan_lines, plan_many

    catalog = rt.catalog()
    for r in roles:
        catalog.role(check_role_name(r))
    jobs = getattr(rt.args, "jobs", 4)
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    plans = plan_many(rt.ws(), catalog, roles, release, rt.aws(), jobs=jobs, force=getattr(rt.args, "force", False),
                      validate=validate, settings=rt.settings)
    print("\n".join(plan_lines(plans)))
    return max((p.exit_code for p in plans), default=0)


def cmd_validate(rt: _Runtime) -> int:
    catalog = rt.catalog()  # a bad catalogue: exit 2 here, naming file, role and key
    roles = list(dict.fromkeys(rt.args.roles)) if rt.args.roles else sorted(catalog.roles)
    if rt.args.offline:
        for r in roles:
            catalog.role(check_role_name(r))
        print(f"catalogue {catalog.path}: {len(roles)} role(s) valid: {', '.join(roles)}")
        return 0
    return _plan(rt, roles, "0", validate=True)


def cmd_bake(rt: _Runtime) -> int:
    catalog = rt.catalog()
    roles = sorted(catalog.roles) if rt.args.all else list(dict.fromkeys(rt.args.roles))
    if rt.args.dry_run:
        # Checks the release as the bake would (see "Imports" above)
        from ..stages.preflight import check_release

        return _plan(rt, roles, check_release(rt.args.release), validate=False)
    return _bake(rt.settings, rt.ws(), catalog, roles, rt.args.release, jobs=rt.args.jobs,
                 keep_on_failure=rt.args.keep_on_failure, force=rt.args.force)


def cmd_render(rt: _Runtime) -> int:
    # Jinja2 (see "Imports" above)
    from ..userdata import render_role_scripts

    role = rt.catalog().role(rt.args.role)
    for p in render_role_scripts(role, Path(rt.args.output_dir)):
        print(p)
    return 0


def _status_word(state: BakeState) -> str:
    """As the summary shows it: a bake that failed (or was abandoned) and was cleaned up is failed (cleaned)."""
    if state.outcome in ("succeeded", "reused"):
        return state.outcome
    failed = any(rec.status == "failed" for rec in state.stages.values())
    if state.closed:
        return "failed (cleaned)" if failed or state.outcome == "cleaned" else (state.outcome or "closed")
    return "failed" if failed else "open"


def _print_state(role: str, s: BakeState) -> None:
    # The stage names (see build_parser)
    from ..stages import ORDER

    print(f"{role}: bake {s.bake_id}, release {s.release}, {_status_word(s)}")
    print(f"  base AMI {s.base_ami}; instance {s.instance_id or '-'}"
          f"{' (terminated)' if s.instance_terminated else ''}; image {s.image_id or '-'} ({s.image_state or '-'})")
    # Pipeline order, then anything else recorded (e.g. by a newer bakery) in the order it was written.
    names = [n for n in ORDER if n in s.stages] + [n for n in s.stages if n not in ORDER]
    for name in names:
        rec = s.stages[name]
        took = f"{rec.duration:.1f} s" if rec.duration is not None else ""
        first = rec.message.splitlines()[0][:100] if rec.message else ""
        print(f"  {name:<16} {rec.status:<10} {took:>9}  {first}")


def cmd_status(rt: _Runtime) -> int:
    ws = rt.ws()
    roles = [check_role_name(rt.args.role)] if rt.args.role is not None else ws.roles_with_state()
    states = {r: ws.load(r) for r in roles}
    if rt.args.role is not None and states[rt.args.role] is None:
        try:
            known = rt.args.role in rt.catalog().roles
        except UsageError:
            known = False
        if not known:
            raise UsageError(f"role {rt.args.role!r}: no bake of it in {ws.root}, and no such role in the "
                             f"catalogue {rt.settings.catalog_path}")
    if rt.args.json:
        print(json.dumps({r: (s.to_json() if s else None) for r, s in states.items()}, indent=2, sort_keys=True))
        return 0
    if not states:
        print(f"no bakes in {ws.root}")
    for r, s in states.items():
        if s is None:
            print(f"{r}: no bake in {ws.root}")
        else:
            _print_state(r, s)
    return 0


def cmd_prune(rt: _Runtime) -> int:
    # This command's own (see "Imports" above)
    from ..lifecycle import prune
    from ..stages.base import default_log

    catalog = rt.catalog()
    names = sorted(catalog.roles) if rt.args.all else [check_role_name(rt.args.role)]
    aws = rt.aws()
    reports: list[PruneReport] = []
    for name in names:
        role = catalog.role(name)
        keep = rt.args.keep if rt.args.keep is not None else role.keep
        reports.append(prune(aws, role, keep, dry_run=rt.args.dry_run, log=default_log,
                             poll_interval=rt.settings.poll_interval))
        print(reports[-1].text(), flush=True)
    return max((r.exit_code for r in reports), default=0)


def _reap(rt: _Runtime, *, regions: list[str] | None, older_than: float, bake_id: str | None, no_chef: bool,
          dry_run: bool) -> int:
    # This command's own (see "Imports" above)
    from ..lifecycle import reap
    from ..stages.base import default_log

    for region in regions or []:
        if not REGION_RE.match(region):
            raise UsageError(f"--region {region!r} is not an AWS region name")
    # The bake ids' form, with the workspace's records
    from ..state import BAKE_ID_RE

    if bake_id is not None and not BAKE_ID_RE.match(bake_id):
        raise UsageError(f"--bake-id {bake_id!r} is not a bake id (YYYYMMDDHHMMSS-xxxxxx, from the bakery:bake-id tag)")
    buckets = _record_buckets(rt, regions_given=bool(regions))
    regions = regions or sorted({r for ro in rt.catalog().roles.values() for r in ro.regions})
    ws = rt.ws()
    states = [s for r in ws.roles_with_state() if (s := ws.load(r)) is not None]
    chef = chef_error = None
    if not no_chef:
        # Imported here on purpose: it loads pychef (and its shim), which only reap needs of the commands here.
        from ..chef import ChefClient

        try:
            chef = ChefClient.from_env(rt.settings.chef_env, rt.settings.chef_config)
        except BakeryError as exc:
            chef_error = str(exc)
    report = reap(rt.aws(), regions, chef, older_than=older_than, workspace_states=states, now=time.time(),
                  dry_run=dry_run, log=default_log, chef_error=chef_error, bake_id=bake_id,
                  poll_interval=rt.settings.poll_interval, buckets=buckets)
    print(report.text())
    return report.exit_code


def _record_buckets(rt: _Runtime, *, regions_given: bool) -> dict[str, str]:
    """Role -> the bucket of its bake records, from the catalogue. ``reap --region`` runs without one: then
    a reaped bake's records are kept, saying why (their bucket is unknown)."""
    try:
        catalog = rt.catalog()
    except CatalogError:
        if regions_given:
            return {}
        raise
    return {name: role.runlist_bucket for name, role in catalog.roles.items()}


def cmd_reap(rt: _Runtime) -> int:
    # This command's own (see "Imports" above)
    from ..lifecycle import parse_duration

    a = rt.args
    return _reap(rt, regions=a.regions, older_than=parse_duration(a.older_than), bake_id=a.bake_id,
                 no_chef=a.no_chef, dry_run=a.dry_run)


def cmd_summary(rt: _Runtime) -> int:
    a = rt.args
    if a.from_aws:
        paths = _summary_from_aws(rt)
    elif a.regions:
        raise UsageError("--region is for --from-aws (the workspace summary reads this workspace only)")
    else:
        # Jinja2 (see "Imports" above)
        from ..summary import write_summary

        try:
            paths = write_summary(rt.ws(), release=a.release)
        except UsageError as exc:
            if not a.release:
                raise
            raise UsageError(f"{exc}; to read release {a.release} from the account instead: bakery summary "
                             f"--release {a.release} --from-aws") from None
    for path in paths:
        print(path)
    return 0


def _summary_from_aws(rt: _Runtime) -> tuple[Path, Path]:
    # This command's own (see "Imports" above)
    from ..stages.preflight import check_release
    from ..summary_release import write_release_summary

    release = rt.args.release
    if not release:
        raise UsageError("--from-aws needs --release V (the release whose AMIs to find)")
    check_release(release)
    for region in rt.args.regions or []:
        if not REGION_RE.match(region):
            raise UsageError(f"--region {region!r} is not an AWS region name")
    regions = rt.args.regions
    if not regions:
        try:
            catalog = rt.catalog()
        except UsageError as exc:
            raise UsageError(f"{exc} (or give --region REGION: a summary from AWS needs only the regions)") from None
        regions = sorted({r for ro in catalog.roles.values() for r in ro.regions})
    return write_release_summary(rt.ws(), rt.aws(), regions, release,
                                 log=lambda m: print(f"bakery: {m}", file=sys.stderr, flush=True))


def cmd_publish_runlist(rt: _Runtime) -> int:
    # The publish stage's (see "Imports" above)
    from ..stages.publish import publish_runlist

    print(publish_runlist(rt.context(rt.args.role)))
    return 0


def cmd_setup(rt: _Runtime) -> int:
    # This command's own (see "Imports" above)
    from .. import setup as account_setup

    catalog = rt.catalog()
    aws = rt.aws()
    key = Path(rt.args.validator_key) if rt.args.validator_key else None
    steps = account_setup.plan(aws, catalog, key)
    print("\n".join(account_setup.plan_lines(steps)))
    if not rt.args.dry_run:
        account_setup.apply(aws, steps, print)
    print("the bakery identity's IAM policy (attach it to the role or user the bakery runs as):")
    print(account_setup.policy_text(catalog))
    return 0


def cmd_schema(rt: _Runtime) -> int:
    # pydantic, by the catalogue's models (see "Imports" above)
    from ..catalog import schema_text
    from ..fsutil import atomic_write_text

    text = schema_text()
    if rt.args.output:
        print(atomic_write_text(Path(rt.args.output), text))
    else:
        sys.stdout.write(text)
    return 0


def cmd_iam_policy(rt: _Runtime) -> int:
    # This command's own (see "Imports" above)
    from ..iam_policy import bakery_policy, instance_policy

    catalog = rt.catalog()
    if rt.args.instance_role:
        role = catalog.role(rt.args.instance_role)
        policy = instance_policy(role, role.alert_topic_arn.split(":")[4])
    else:
        policy = bakery_policy(catalog)
    sys.stdout.write(json.dumps(policy, indent=2) + "\n")
    return 0


COMMANDS: dict[str, Callable[[_Runtime], int]] = {
    "stage": cmd_stage,
    "cleanup": cmd_cleanup,
    "bake": cmd_bake,
    "validate": cmd_validate,
    "render": cmd_render,
    "status": cmd_status,
    "publish-runlist": cmd_publish_runlist,
    "prune": cmd_prune,
    "reap": cmd_reap,
    "summary": cmd_summary,
    "schema": cmd_schema,
    "iam-policy": cmd_iam_policy,
    "setup": cmd_setup,
}


def _guard(fn: Callable[[], int], prog: str) -> int:
    try:
        try:
            return fn()
        finally:
            # Inside the guard, also after argparse's --help/usage exit: a closed pipe is seen here,
            # not reported by the interpreter at exit.
            sys.stdout.flush()
    except BakeryError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`bakery status | head -1`): stop quietly, as a Unix tool does. Python
        # would otherwise report the failed flush of stdout at exit, so point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def check_workspace(path: str | None) -> str:
    """The workspace directory, refused (exit 2, nothing done) when it, or what would hold it, is not a directory."""
    root = Path(path or os.getcwd())
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is" if probe == root else f"would be inside {probe}, which is"
        raise UsageError(f"--workspace {root}: {what} not a directory (give a directory: .bakery/, reports/ and "
                         "artifacts/ are written there)")
    return str(root)


def _bakery(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.workspace = check_workspace(args.workspace)
    return COMMANDS[args.command](_Runtime(args, os.environ))


def bakery_main(argv: Sequence[str] | None = None) -> int:
    return _guard(lambda: _bakery(argv), "bakery")


# --- create-instance ---------------------------------------------------------------------------------


def build_create_instance_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="create-instance", description="Launch an instance of a role, or bake its AMI.")
    p.add_argument("role")
    p.add_argument("--bake", action="store_true", help="bake the role's AMI instead (needs --release)")
    p.add_argument("--release", help="with --bake: the release to bake; with --from-ami latest: newest AMI of this release")
    p.add_argument("--from-ami", metavar="latest|AMI_ID", help="launch from a baked AMI of the role")
    p.add_argument("--wait", action="store_true", help="wait until the instance says how its first run went "
                   "(from the base AMI: the bakery:bootstrap tag, up to bootstrap_timeout; from a baked AMI: running)")
    p.add_argument("--workspace", metavar="DIR")
    p.add_argument("--catalog", metavar="PATH")
    p.add_argument("--chef-config", metavar="PATH")
    _bake_options(p)
    return p


def _create_instance(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    # This command's own (see "Imports" above)
    from ..aws import Aws
    from ..launcher import launch_instance, wait_launched
    from ..stages.base import RoleContext
    from ..stages.preflight import check_release
    from ..state import Workspace

    role_name = check_role_name(args.role)
    args.workspace = check_workspace(args.workspace)
    settings = Settings.from_env(env, catalog=args.catalog, chef_config=args.chef_config)
    if args.bake:
        if args.wait:
            raise UsageError("--wait is for a launch (a bake always waits)")
        if args.from_ami:
            raise UsageError("--bake and --from-ami cannot be combined")
        return _bake(settings, Workspace(args.workspace or os.getcwd()), load_catalog(settings.catalog_path),
                     [role_name], check_release(args.release), keep_on_failure=args.keep_on_failure)
    if args.release and not args.from_ami:
        raise UsageError(f"--release {args.release} needs --bake (bake that release) or --from-ami latest (launch "
                         f"the newest AMI of that release); a plain launch installs role {role_name} from its base AMI")
    if args.keep_on_failure:
        raise UsageError("--keep-on-failure is for --bake")
    catalog = load_catalog(settings.catalog_path)
    ctx = RoleContext(catalog=catalog, role=catalog.role(role_name), aws=Aws(endpoint_url=settings.endpoint_url),
                      settings=settings)
    instance = launch_instance(ctx, from_ami=args.from_ami, release=args.release)
    print(instance["InstanceId"], flush=True)
    if args.wait:
        print(wait_launched(ctx, instance["InstanceId"], from_ami=bool(args.from_ami)))
    return 0


def create_instance_main(argv: Sequence[str] | None = None) -> int:
    return _guard(lambda: _create_instance(build_create_instance_parser().parse_args(argv), os.environ),
                  "create-instance")


def generate_jobs_main(argv: Sequence[str] | None = None) -> int:
    # Its own parser and imports (cli.generate_jobs); see "Imports" above
    from .generate_jobs import main as generate_jobs_cli

    return _guard(lambda: generate_jobs_cli(list(argv) if argv is not None else None, environ=os.environ),
                  "generate-jobs")


if __name__ == "__main__":
    sys.exit(bakery_main())
