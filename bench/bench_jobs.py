"""Benchmark: generate-jobs against Jenkins Job Builder, side by side, on the same 300 jobs.

    .venv/bin/python bench/bench_jobs.py [--roles 300] [--latency-ms 5] [--repeat 3] [--workers 4]

Both tools run as the command a person would run (``generate-jobs`` through
``bakery_lib.cli.generate_jobs.main`` in a fresh interpreter; ``jenkins-jobs``, JJB 6.x) against the same
in-process Jenkins double (devstack/jenkins_double.py) on 127.0.0.1, which counts every request. The
JJB YAML below describes the same Pipeline job per role as templates/jenkins/role-job.xml.j2
(parameters, reverse trigger, build discarder, no concurrent builds, git SCM, lightweight checkout).

Measured, for each tool:
- render: write every config.xml to a directory (``generate-jobs --output-dir`` vs
  ``jenkins-jobs test -o``), best wall time of --repeat runs, and best CPU time (user + system of the
  child process, from ``getrusage(RUSAGE_CHILDREN)``): on a loaded machine the wall time is mostly
  waiting for a core, the CPU time is what the tool itself costs;
- first sync into an empty Jenkins: wall time, requests, writes (POSTs);
- no-op sync right after: wall time, requests, writes (the goal is zero writes);
- UI edit: three jobs are changed on the server as a person in the web UI would, then each tool
  syncs again: how many of the three it put back.
--latency-ms adds that much to every request, as a Jenkins across a network would. It prints a
markdown table with the ratio generate-jobs / JJB for every figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bakery_lib.jobs.normalize import same_config  # noqa: E402
from devstack.jenkins_double import JenkinsDouble, deploy_job_xml  # noqa: E402
from devstack.samples import offline_catalog_data  # noqa: E402

USER, TOKEN = "bench", "bench-api-token"
EDITED = 3


@dataclass
class SyncResult:
    seconds: float
    requests: int
    writes: int
    code: int


def catalogue(path: Path, roles: list[str]) -> None:
    data = offline_catalog_data(roles)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def jjb_yaml(path: Path, roles: list[str]) -> None:
    """The same job per role, in Jenkins Job Builder's terms."""
    template = textwrap.dedent(
        """\
        - job-template:
            name: 'ami-bake-{role}'
            project-type: pipeline
            description: 'Bakes the AMI of Chef role {role} after every successful build of deploy-release.'
            concurrent: false
            properties:
              - build-discarder:
                  num-to-keep: 30
            parameters:
              - string:
                  name: ROLE
                  default: '{role}'
                  description: "Chef role to bake (this job's role)."
                  trim: true
              - string:
                  name: RELEASE
                  default: ''
                  description: 'Release to bake. Empty: the RELEASE of the newest upstream deploy that triggered this build.'
                  trim: true
              - string:
                  name: AGENT_LABEL
                  default: bakery
                  description: 'Label of the agents that may bake.'
                  trim: true
            triggers:
              - reverse:
                  jobs: deploy-release
                  result: success
            pipeline-scm:
              scm:
                - git:
                    url: https://git.example.com/ops/bakery.git
                    branches: ['*/main']
              script-path: jenkins/Jenkinsfile
              lightweight-checkout: true
        """
    )
    project = yaml.safe_dump([{"project": {"name": "bakes", "role": roles, "jobs": ["ami-bake-{role}"]}}])
    path.write_text(template + project, encoding="utf-8")


def jjb_ini(path: Path, url: str) -> None:
    path.write_text(
        f"[job_builder]\nignore_cache=False\nkeep_descriptions=False\nrecursive=False\nallow_duplicates=False\n"
        f"update=jobs\n\n[jenkins]\nurl={url}\nuser={USER}\npassword={TOKEN}\nquery_plugins_info=False\n",
        encoding="utf-8",
    )


def children_cpu() -> float:
    """User + system seconds of the child processes waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - start, proc


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one successful run of ``cmd``."""
    cpu = children_cpu()
    wall, proc = run(cmd, env, cwd)
    assert proc.returncode == 0, proc.stderr
    return wall, children_cpu() - cpu


def best(times: list[float]) -> float:
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roles", type=int, default=300)
    ap.add_argument("--latency-ms", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    roles = [f"role{i:03d}" for i in range(args.roles)]
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    cat, jobs_yaml, ini = work / "bakery.yaml", work / "jobs.yaml", work / "jenkins_jobs.ini"
    catalogue(cat, roles)
    jjb_yaml(jobs_yaml, roles)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(work / "cache"),
           "JENKINS_USER": USER, "JENKINS_API_TOKEN": TOKEN}
    env.pop("JENKINS_URL", None)
    bindir = Path(sys.executable).parent
    ours = [sys.executable, "-c", "import sys; from bakery_lib.cli import generate_jobs_main as main; sys.exit(main())",
            "--catalog", str(cat), "--workspace", str(work)]
    jjb = [str(bindir / "jenkins-jobs"), "--conf", str(ini)]

    # -- render ----------------------------------------------------------------------------------
    ours_render, jjb_render, ours_cpu, jjb_cpu = [], [], [], []
    for i in range(args.repeat):
        t, c = run_timed([*ours, "--output-dir", str(work / f"ours-{i}")], env, work)
        ours_render.append(t)
        ours_cpu.append(c)
        t, c = run_timed([*jjb, "test", "-o", str(work / f"jjb-{i}"), str(jobs_yaml)], env, work)
        jjb_render.append(t)
        jjb_cpu.append(c)
    n_ours = len(list((work / "ours-0").rglob("config.xml")))
    n_jjb = len([p for p in (work / "jjb-0").iterdir()])
    assert n_ours == n_jjb == args.roles, (n_ours, n_jjb)

    # In-process render cost of ours alone (no interpreter start-up), for reference.
    from bakery_lib.catalog import load_catalog
    from bakery_lib.jobs.render import render_items

    c = load_catalog(cat)
    t0 = time.perf_counter()
    items = render_items(c)
    ours_inproc = time.perf_counter() - t0
    intended = {i.full_name: i.xml for i in items}

    # -- syncs -----------------------------------------------------------------------------------
    results: dict[str, dict[str, SyncResult]] = {}
    repaired: dict[str, int] = {}
    with JenkinsDouble({USER: TOKEN}) as double:
        double.latency = args.latency_ms / 1000
        jjb_ini(ini, double.url)
        for tool, cmd in (("ours", [*ours, "--jenkins-url", double.url, "--workers", str(args.workers)]),
                          ("jjb", [*jjb, "update", "--workers", str(args.workers), str(jobs_yaml)])):
            double.reset()
            double.put_item("deploy-release", deploy_job_xml())  # the upstream job the catalogue names
            tool_results: dict[str, SyncResult] = {}
            for phase in ("first", "noop"):
                double.clear_log()
                t, p = run(cmd, env, work)
                assert p.returncode == 0, f"{tool} {phase}: {p.stdout}\n{p.stderr}"
                tool_results[phase] = SyncResult(t, len(double.log), len(double.writes()), p.returncode)
            assert len(double.job_names()) == args.roles + 1  # and the deploy job
            # An edit made in the web UI on a few jobs, then one more sync.
            edited = [f"ami-bake-{r}" for r in roles[:EDITED]]
            for name in edited:
                double.ui_edit(name, lambda x: x.replace("*/main", "*/hotfix"))
            double.clear_log()
            t, p = run(cmd, env, work)
            assert p.returncode == 0, p.stderr
            tool_results["edit"] = SyncResult(t, len(double.log), len(double.writes()), p.returncode)
            if tool == "ours":
                repaired[tool] = sum(same_config(intended[n], double.config(n)) for n in edited)
            else:
                repaired[tool] = sum("*/hotfix" not in double.config(n) for n in edited)
            results[tool] = tool_results

    # -- report ----------------------------------------------------------------------------------
    o, j = results["ours"], results["jjb"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else ("0 vs 0" if a == 0 else "n/a")

    rows = [
        (f"render all config.xml (wall, best of {args.repeat})", f"{best(ours_render):.2f} s",
         f"{best(jjb_render):.2f} s", ratio(best(ours_render), best(jjb_render))),
        (f"render all config.xml (CPU, best of {args.repeat})", f"{best(ours_cpu):.2f} s",
         f"{best(jjb_cpu):.2f} s", ratio(best(ours_cpu), best(jjb_cpu))),
        ("first sync: wall time", f"{o['first'].seconds:.2f} s", f"{j['first'].seconds:.2f} s",
         ratio(o["first"].seconds, j["first"].seconds)),
        ("first sync: requests (writes)", f"{o['first'].requests} ({o['first'].writes})",
         f"{j['first'].requests} ({j['first'].writes})", ratio(o["first"].requests, j["first"].requests)),
        ("no-op sync: wall time", f"{o['noop'].seconds:.2f} s", f"{j['noop'].seconds:.2f} s",
         ratio(o["noop"].seconds, j["noop"].seconds)),
        ("no-op sync: requests (writes)", f"{o['noop'].requests} ({o['noop'].writes})",
         f"{j['noop'].requests} ({j['noop'].writes})", ratio(o["noop"].requests, j["noop"].requests)),
        (f"UI edit of {EDITED} jobs: repaired", f"{repaired['ours']}/{EDITED}", f"{repaired['jjb']}/{EDITED}", "-"),
        ("UI edit: requests (writes)", f"{o['edit'].requests} ({o['edit'].writes})",
         f"{j['edit'].requests} ({j['edit'].writes})", "-"),
    ]
    print(f"\n{args.roles} roles, Jenkins double with {args.latency_ms:g} ms per request, {args.workers} workers each; "
          f"generate-jobs in-process render alone: {ours_inproc * 1000:.0f} ms\n")
    print("| measure | generate-jobs | JJB 6.x | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
