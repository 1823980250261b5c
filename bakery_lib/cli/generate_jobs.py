"""``generate-jobs``: render one bake job per role and sync them to Jenkins (or write them to files).

    generate-jobs [--catalog PATH] [--workspace DIR] [--output-dir DIR]
                  [--jenkins-url URL] [--user U] [--token T]
                  [--delete-stale] [--adopt] [--dry-run] [--workers N]

With ``--output-dir`` it writes ``DIR/JOBNAME/config.xml`` (folders as ``DIR/FOLDER/config.xml``,
the view as ``DIR/[FOLDER/]@views/NAME/config.xml``) and touches no server. Otherwise it syncs to
the Jenkins at ``--jenkins-url`` or ``JENKINS_URL`` as ``JENKINS_USER`` with ``JENKINS_API_TOKEN``
(flags override the environment) and writes ``reports/generate-jobs.xml`` under the workspace.

Exit codes: 0 done (or nothing to do); 1 Jenkins could not be reached or used, or some item could
not be synced (each named with the reason); 2 bad usage or a bad catalogue (nothing was done).
This module only parses arguments and the environment; ``bakery_lib.cli`` calls ``main``.

``--output-dir`` only renders: the sync's modules (python-jenkins, requests, the plan) are imported
by the functions that sync, so writing the files does not load them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..catalog import DEFAULT_CATALOG, Catalog, load_catalog
from ..errors import UsageError
from ..jobs.render import Item, render_items, write_output_dir

if TYPE_CHECKING:
    from ..jobs.execute import Outcome
    from ..jobs.manager import JenkinsManager
    from ..jobs.plan import Plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate-jobs",
        description="Render one post-deploy AMI bake job per role of the catalogue and sync them to Jenkins.",
    )
    p.add_argument("--catalog", metavar="PATH", help="roles catalogue (default: $BAKERY_CATALOG or bakery.yaml)")
    p.add_argument("--workspace", metavar="DIR", default=None,
                   help="where reports/generate-jobs.xml is written (default: the current directory)")
    p.add_argument("--output-dir", metavar="DIR", help="only write DIR/JOBNAME/config.xml; no Jenkins is contacted")
    p.add_argument("--jenkins-url", metavar="URL", help="Jenkins root URL (default: $JENKINS_URL)")
    p.add_argument("--user", metavar="USER", help="Jenkins user (default: $JENKINS_USER)")
    p.add_argument("--token", metavar="TOKEN",
                   help="the user's API token (default: $JENKINS_API_TOKEN, which keeps it out of the process list)")
    p.add_argument("--delete-stale", action="store_true",
                   help="delete managed jobs whose role left the catalogue (never a job without the bakery's marker)")
    p.add_argument("--adopt", action="store_true",
                   help="take over existing jobs of the same names that lack the bakery's marker")
    p.add_argument("--dry-run", action="store_true", help="print the plan, with a diff per update, and change nothing")
    p.add_argument("--workers", metavar="N", type=_positive, default=4, help="parallel requests (default: 4)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"{value} is out of range 1..64")
    return value


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``environ`` is the caller's environment (``bakery_lib.cli`` passes ``os.environ``); this module
    reads no environment of its own."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = build_parser().parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # argparse already printed the usage message
        return int(exc.code or 0)
    try:
        return _run(args, dict(environ or {}), out, err)
    except UsageError as exc:  # CatalogError included: names the file, the role and the key
        err.write(f"generate-jobs: {exc}\n")
        return exc.exit_code
    except OSError as exc:  # e.g. the output directory or the report cannot be written
        err.write(f"generate-jobs: {exc}\n")
        return 1


def _run(args: argparse.Namespace, environ: dict[str, str], out: TextIO, err: TextIO) -> int:
    catalog = load_catalog(args.catalog or environ.get("BAKERY_CATALOG") or DEFAULT_CATALOG)
    items = render_items(catalog)

    if args.output_dir:
        if args.delete_stale or args.adopt:
            raise UsageError("--delete-stale and --adopt need a Jenkins to sync to; --output-dir only writes files")
        root = Path(args.output_dir)
        if args.dry_run:
            for item in items:
                out.write(f"would write {item.output_path(root)}\n")
            return 0
        paths = write_output_dir(items, root)
        out.write(f"generate-jobs: wrote {len(paths)} config.xml files under {root} (no Jenkins contacted)\n")
        out.write(deploy_snippet(catalog))
        return 0

    return _sync(args, _connection(args, environ), catalog, items, out, err)


def _connection(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str | None, str | None]:
    """(url, user, token) from the flags, else the environment; bad usage raises UsageError."""
    # The sync's (see the module docstring)
    from ..jobs.manager import display_url

    url = args.jenkins_url or environ.get("JENKINS_URL")
    if not url:
        raise UsageError(
            "no Jenkins to sync to: give --jenkins-url URL or set JENKINS_URL (or --output-dir DIR to only write the configs)"
        )
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"Jenkins URL {display_url(url)!r} must start with http:// or https://")
    user = args.user if args.user is not None else environ.get("JENKINS_USER")
    token = args.token if args.token is not None else environ.get("JENKINS_API_TOKEN")
    if bool(user) != bool(token):
        missing = "JENKINS_API_TOKEN (or --token)" if user else "JENKINS_USER (or --user)"
        raise UsageError(f"a Jenkins user needs its API token and the other way round: set {missing}")
    return url, user or None, token or None


def deploy_snippet(catalog: Catalog) -> str:
    """How each deploy hands over to its bake (jenkins/README.md), naming the one hand-over in use.

    With ``upstream_jobs`` the trigger starts the bakes: printing the ``build job:`` lines as well would
    have people add both, and every deploy would bake twice. Without it, the deploy pipeline's own
    ``build`` step (which also passes the release) is the hand-over, and these are its lines."""
    jenkins = catalog.jenkins
    if jenkins.upstream_jobs:
        upstream = ", ".join(jenkins.upstream_jobs)
        return (f"hand-over in use: the upstream trigger (jenkins.upstream_jobs: {upstream}) starts each bake after "
                "a successful deploy; do not also add `build job:` lines for these jobs to the deploy pipeline "
                "(every deploy would bake twice). To hand the release over with `build` instead, remove "
                "jenkins.upstream_jobs (see jenkins/README.md)\n")
    folder = f"/{jenkins.folder}/" if jenkins.folder else ""
    lines = [f"    build job: '{folder}{jenkins.job_prefix}{role}', wait: false, "
             "parameters: [string(name: 'RELEASE', value: params.RELEASE)]\n" for role in catalog.roles]
    return ("hand-over in use: the deploy pipeline's `build` step (no jenkins.upstream_jobs); "
            "to bake each deployed release, end the deploy pipeline with (see jenkins/README.md):\n"
            + "".join(lines))


def _sync(args: argparse.Namespace, connection: tuple[str, str | None, str | None], catalog: Catalog,
          items: tuple[Item, ...], out: TextIO, err: TextIO) -> int:
    # The sync's (see the module docstring)
    from ..jobs.execute import Outcome
    from ..jobs.manager import JenkinsError, JenkinsManager
    from ..jobs.plan import Action, decide, read_remote
    from ..jobs.report import REPORT_NAME, summary, write_junit

    url, user, token = connection
    jenkins = catalog.jenkins
    workspace = Path(args.workspace or ".")
    report = workspace / "reports" / REPORT_NAME
    manager = JenkinsManager(url, user, token)
    start = time.monotonic()
    try:
        state = read_remote(manager, items, target=jenkins.folder or "", adopt=args.adopt, workers=args.workers,
                            upstream_jobs=jenkins.upstream_jobs)
        plan = decide(items, state, prefix=jenkins.job_prefix, roles=list(catalog.roles),
                      release_job=jenkins.release_job, delete_stale=args.delete_stale, adopt=args.adopt)
        if plan.writes and not args.dry_run:
            manager.check_crumb()
    except JenkinsError as exc:
        err.write(f"generate-jobs: {exc}\n")
        failure = Action("error", "job", "", "connect to Jenkins", reason=str(exc))
        write_junit(report, [Outcome(failure, False, str(exc))], url=manager.shown_url,
                    seconds=time.monotonic() - start)
        return 1
    outcomes = _carry_out(plan, manager, args, out)
    seconds = time.monotonic() - start
    write_junit(report, outcomes, plan=plan, dry_run=args.dry_run, url=manager.shown_url, seconds=seconds)
    out.write(summary(outcomes, url=manager.shown_url, seconds=seconds, dry_run=args.dry_run,
                      stale_kept=len(plan.stale_kept)) + "\n")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        names = "; ".join(f"{o.action.label}: {o.message}" for o in failed[:10])
        more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
        verb = "cannot be synced" if args.dry_run else "failed"
        err.write(f"generate-jobs: {len(failed)} item(s) {verb}: {names}{more}. Details in {report}\n")
        return 1
    if not args.dry_run:
        out.write(deploy_snippet(catalog))
    return 0


def _carry_out(plan: Plan, manager: JenkinsManager, args: argparse.Namespace, out: TextIO) -> list[Outcome]:
    # The sync's (see the module docstring)
    from ..jobs.execute import Outcome, execute, show_outcome, show_plan

    if args.dry_run:
        show_plan(plan, out)
        return [Outcome(a, a.op != "error", a.reason if a.op == "error" else "") for a in plan.actions]
    outcomes = execute(plan, manager, workers=args.workers, on_outcome=lambda o: show_outcome(o, out))
    if plan.stale_kept:
        out.write(
            f"kept {len(plan.stale_kept)} managed job(s) whose role left the catalogue: "
            f"{', '.join(plan.stale_kept)} (give --delete-stale to delete them)\n"
        )
    return outcomes
