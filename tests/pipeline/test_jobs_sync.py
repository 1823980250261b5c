"""generate-jobs syncing to Jenkins, through python-jenkins, against the Jenkins double.

What an operator relies on, asserted on what they would see: the job XML on the server, the
requests made (zero writes when nothing changed), the exit code and the message, the JUnit report.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakery_lib.catalog import load_catalog
from bakery_lib.cli.generate_jobs import main
from bakery_lib.jobs.normalize import normalized, parse_marker, same_config
from bakery_lib.jobs.render import render_items
from devstack.jenkins_double import JenkinsDouble
from devstack.samples import offline_catalog_data

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-api-token-1234567890"


@pytest.fixture(scope="module")
def server() -> Iterator[JenkinsDouble]:
    with JenkinsDouble({"admin": TOKEN}, readonly_users={"viewer": "viewer-token"}) as double:
        yield double


# The deploy job the catalogues' upstream_jobs name: generate-jobs refuses to make a bake job that
# a missing upstream would never trigger.
DEPLOY_JOB = ("<?xml version='1.1' encoding='UTF-8'?>\n<project><description>deploys a release</description>"
              "<properties/><builders/><publishers/></project>")


def bake_jobs(jenkins: JenkinsDouble) -> list[str]:
    """The items on Jenkins other than the deploy job every test starts with."""
    return [name for name in jenkins.job_names() if name != "deploy-release"]


@pytest.fixture
def jenkins(server: JenkinsDouble) -> JenkinsDouble:
    server.reset()
    server.put_item("deploy-release", DEPLOY_JOB)
    server.clear_log()
    return server


def catalogue(tmp_path: Path, roles: list[str], name: str = "bakery.yaml", **jenkins: Any) -> Path:
    if jenkins.get("folder") and "upstream_jobs" not in jenkins:
        jenkins["upstream_jobs"] = ["/deploy-release"]  # the deploy job is at the top level, not in the folder
    data = offline_catalog_data(roles, **jenkins)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


class Run:
    def __init__(self, code: int, out: str, err: str, report: Path):
        self.code, self.out, self.err, self.report = code, out, err, report

    @property
    def text(self) -> str:
        return self.out + self.err

    def cases(self) -> dict[str, ET.Element]:
        root = ET.parse(self.report).getroot()
        return {c.get("name"): c for c in root.iter("testcase")}  # type: ignore[misc]


def sync(jenkins: JenkinsDouble, cat: Path, *extra: str, user: str = "admin", token: str = TOKEN) -> Run:
    out, err = io.StringIO(), io.StringIO()
    workspace = cat.parent / "ws"
    args = ["--catalog", str(cat), "--workspace", str(workspace), "--jenkins-url", jenkins.url, *extra]
    if user:
        args += ["--user", user, "--token", token]
    code = main(args, stdout=out, stderr=err)
    run = Run(code, out.getvalue(), err.getvalue(), workspace / "reports" / "generate-jobs.xml")
    assert TOKEN not in run.text, "the API token must never be printed"
    assert "Traceback" not in run.text
    return run


def diff_lines(out: str) -> set[str]:
    """The +/- lines of the unified diffs in a dry run, indentation removed: {"-<name>x</name>", ...}."""
    found = set()
    for line in out.splitlines():
        text = line.strip()
        if text[:1] in "+-" and not text.startswith(("+++", "---")):
            found.add(text[0] + text[1:].strip())
    return found


def rendered(cat: Path) -> dict[str, str]:
    return {i.full_name: i.xml for i in render_items(load_catalog(cat)) if i.kind != "view"}


# --- the sync itself --------------------------------------------------------------------------


def test_first_sync_creates_then_a_second_sync_writes_nothing(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web", "worker", "db"])
    first = sync(jenkins, cat)
    assert first.code == 0, first.text
    assert "3 created, 0 updated, 0 deleted, 0 unchanged, 0 failed" in first.out
    assert sorted(bake_jobs(jenkins)) == ["ami-bake-db", "ami-bake-web", "ami-bake-worker"]
    assert sorted(r.path for r in jenkins.writes() if r.path.endswith("createItem")) == ["/createItem"] * 3
    for name, xml in rendered(cat).items():
        stored = jenkins.config(name)
        assert 'plugin="workflow-job@' in stored  # Jenkins re-serialized it ...
        assert same_config(xml, stored)  # ... and it is still the same job
        marker = parse_marker(ET.fromstring(stored).findtext("description"))
        assert marker is not None and marker.role == name.removeprefix("ami-bake-")
    assert {n: c.find("failure") for n, c in first.cases().items()} == dict.fromkeys(rendered(cat))

    jenkins.clear_log()
    second = sync(jenkins, cat)
    assert second.code == 0, second.text
    assert "0 created, 0 updated, 0 deleted, 3 unchanged, 0 failed" in second.out
    assert jenkins.writes() == []
    # One listing and one config.xml read per job; not even a crumb, since nothing is written.
    assert len(jenkins.requests("GET", "/api/json")) == 1
    assert len(jenkins.requests("GET", "config.xml")) == 3
    assert len(jenkins.log) == 4


def test_jenkins_resaves_and_builds_are_not_changes(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web"])
    assert sync(jenkins, cat).code == 0
    jenkins.simulate_build("ami-bake-web")  # declarative tracker actions land in config.xml
    jenkins.ui_edit("ami-bake-web", lambda xml: xml)  # saved again from the UI without a change
    assert "DeclarativeJobPropertyTrackerAction" in jenkins.config("ami-bake-web")
    jenkins.clear_log()
    run = sync(jenkins, cat)
    assert run.code == 0 and "1 unchanged" in run.out
    assert jenkins.writes() == []


def test_ui_edit_is_shown_by_dry_run_and_repaired(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web", "worker"])
    assert sync(jenkins, cat).code == 0
    jenkins.ui_edit("ami-bake-web", lambda xml: xml.replace("*/main", "*/hotfix").replace("<numToKeep>30<", "<numToKeep>5<"))

    jenkins.clear_log()
    dry = sync(jenkins, cat, "--dry-run")
    assert dry.code == 0, dry.text
    assert jenkins.writes() == []
    lines = dry.out.splitlines()
    assert "update     ami-bake-web" in lines and "unchanged  ami-bake-worker" in lines
    assert "    --- jenkins/ami-bake-web/config.xml" in lines
    assert "    +++ generated/ami-bake-web/config.xml" in lines
    assert {"-<name>*/hotfix</name>", "+<name>*/main</name>", "-<numToKeep>5</numToKeep>",
            "+<numToKeep>30</numToKeep>"} <= diff_lines(dry.out)
    assert "would create 0, update 1, delete 0; 1 unchanged" in dry.out
    assert "*/hotfix" in jenkins.config("ami-bake-web")

    fixed = sync(jenkins, cat)
    assert fixed.code == 0 and "updated ami-bake-web" in fixed.out and "1 updated" in fixed.out
    assert [r.path for r in jenkins.writes()] == ["/job/ami-bake-web/config.xml"]
    assert same_config(rendered(cat)["ami-bake-web"], jenkins.config("ami-bake-web"))

    jenkins.clear_log()
    assert sync(jenkins, cat).code == 0
    assert jenkins.writes() == []


def test_catalogue_change_updates_only_the_jobs_it_touches(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web", "worker"])
    assert sync(jenkins, cat).code == 0
    changed = catalogue(tmp_path, ["web", "worker", "db"], name="v2.yaml", upstream_jobs=["deploy-release", "deploy-db"])
    jenkins.put_item("deploy-db", DEPLOY_JOB)
    jenkins.clear_log()
    run = sync(jenkins, changed)
    assert run.code == 0 and "1 created, 2 updated" in run.out
    trigger = ET.fromstring(jenkins.config("ami-bake-web")).findtext(".//jenkins.triggers.ReverseBuildTrigger/upstreamProjects")
    assert trigger == "deploy-release, deploy-db"


def test_dry_run_against_an_empty_jenkins_changes_nothing(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web", "worker"], folder="amis")
    run = sync(jenkins, cat, "--dry-run")
    assert run.code == 0, run.text
    assert "create  amis  (folder does not exist)" in run.out
    assert "create  amis/ami-bake-web" in run.out
    assert jenkins.writes() == [] and bake_jobs(jenkins) == []
    assert run.cases()["amis/ami-bake-web"].findtext("system-out") == "would create: folder 'amis' is created first"


# --- deleting ---------------------------------------------------------------------------------


def test_delete_stale_deletes_only_marked_jobs_whose_role_left(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    assert sync(jenkins, catalogue(tmp_path, ["web", "worker", "db"])).code == 0
    # Beside ours: a hand-made job, another catalogue's managed job, a hand-made job named like a role job.
    jenkins.put_item("ami-bake-legacy", "<project><description>made by hand</description></project>")
    jenkins.put_item("other-db", "<project><description>[managed-by=ami-bakery kind=role prefix=other- role=db]"
                                 "</description></project>")
    jenkins.put_item("ami-bake-cache", "<project><description>not ours</description></project>")
    smaller = catalogue(tmp_path, ["web", "worker"], name="v2.yaml")

    kept = sync(jenkins, smaller)
    assert kept.code == 0
    assert "kept 1 managed job(s) whose role left the catalogue: ami-bake-db (give --delete-stale" in kept.out
    assert jenkins.exists("ami-bake-db")

    jenkins.clear_log()
    dry = sync(jenkins, smaller, "--delete-stale", "--dry-run")
    assert "delete     ami-bake-db  (managed job of role 'db', which left the catalogue)" in dry.out
    assert jenkins.writes() == []

    run = sync(jenkins, smaller, "--delete-stale")
    assert run.code == 0 and "deleted ami-bake-db" in run.out and "1 deleted" in run.out
    assert [r.path for r in jenkins.writes()] == ["/job/ami-bake-db/doDelete"]
    assert sorted(bake_jobs(jenkins)) == ["ami-bake-cache", "ami-bake-legacy", "ami-bake-web", "ami-bake-worker", "other-db"]


def test_unmanaged_job_of_the_same_name_is_never_overwritten(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    handmade = "<project><description>Alice's bake job</description><disabled>true</disabled></project>"
    jenkins.put_item("ami-bake-web", handmade)
    before = jenkins.config("ami-bake-web")
    cat = catalogue(tmp_path, ["web", "worker"])
    run = sync(jenkins, cat)
    assert run.code == 1
    assert "FAILED to sync ami-bake-web: a job of that name exists on Jenkins but is not managed by the bakery" in run.out
    assert "--adopt" in run.err and "ami-bake-web" in run.err
    assert jenkins.config("ami-bake-web") == before
    assert jenkins.exists("ami-bake-worker")  # the rest still synced
    assert run.cases()["ami-bake-web"].find("failure") is not None

    # A handmade freestyle job cannot become a Pipeline by posting a new config (Jenkins refuses with
    # an "Oops!" page that says nothing): said before any request.
    adopted = sync(jenkins, cat, "--adopt")
    assert adopted.code == 1 and ("it is a hudson.model.FreeStyleProject on Jenkins, and Jenkins cannot change "
                                  "an item's type") in adopted.text
    assert not [r for r in jenkins.writes() if "ami-bake-web" in r.path]
    jenkins.put_item("ami-bake-web", "<flow-definition><description>Alice's</description></flow-definition>")
    adopted = sync(jenkins, cat, "--adopt")
    assert adopted.code == 0, adopted.text
    assert parse_marker(ET.fromstring(jenkins.config("ami-bake-web")).findtext("description")) is not None


# --- folders and views ------------------------------------------------------------------------


def test_nested_folder_view_and_release_job(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    jenkins.put_folder("team", "the team's own folder")  # exists, not ours: left as it is
    cat = catalogue(tmp_path, ["web", "worker"], folder="team/amis", release_job="ami-bake-release",
                    view="Bakes — ünïcode")
    run = sync(jenkins, cat)
    assert run.code == 0, run.text
    assert sorted(bake_jobs(jenkins)) == [
        "team", "team/amis", "team/amis/ami-bake-release", "team/amis/ami-bake-web", "team/amis/ami-bake-worker",
    ]
    assert ET.fromstring(jenkins.config("team")).findtext("description") == "the team's own folder"
    view = ET.fromstring(jenkins.view_config("team/amis", "Bakes — ünïcode"))
    assert [s.text for s in view.findall("jobNames/string")] == ["ami-bake-release", "ami-bake-web", "ami-bake-worker"]
    created = [r.path for r in jenkins.writes()]
    assert created[0] == "/job/team/createItem"  # the folder before the jobs in it
    assert created[-1] == "/job/team/job/amis/createView"  # the view after the jobs it lists

    jenkins.clear_log()
    again = sync(jenkins, cat)
    assert again.code == 0 and jenkins.writes() == [], again.out
    assert "6 unchanged" in again.out  # 2 folders, 3 jobs, 1 view


def test_folder_repair_keeps_views_people_added(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web"], folder="amis", view="Bakes")
    assert sync(jenkins, cat).code == 0

    def edit(xml: str) -> str:  # someone adds their own view and a note to the description
        root = ET.fromstring(xml)
        description = root.find("description")
        description.text = "my notes\n" + (description.text or "")  # type: ignore[union-attr]
        ET.SubElement(root.find("folderViews/views"), "hudson.model.ListView").append(ET.fromstring("<name>Mine</name>"))  # type: ignore[arg-type]
        return ET.tostring(root, encoding="unicode")

    jenkins.ui_edit("amis", edit)
    jenkins.ui_edit("amis/ami-bake-web", lambda x: x.replace("<lightweight>true", "<lightweight>false"))
    run = sync(jenkins, cat)
    assert run.code == 0 and "updated amis (" in run.out and "updated amis/ami-bake-web (" in run.out
    folder = ET.fromstring(jenkins.config("amis"))
    assert "my notes" not in (folder.findtext("description") or "")
    assert sorted(v.findtext("name") for v in folder.find("folderViews/views")) == ["All", "Bakes", "Mine"]  # type: ignore[union-attr]


def test_view_edited_in_the_ui_is_repaired(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web", "worker"], view="AMI bakes")
    assert sync(jenkins, cat).code == 0
    parent = jenkins.root
    parent.views["AMI bakes"] = parent.views["AMI bakes"].replace("<string>ami-bake-worker</string>", "")
    run = sync(jenkins, cat, "--dry-run")
    assert "update     view AMI bakes" in run.out
    assert diff_lines(run.out) == {"+<string>ami-bake-worker</string>"}
    assert sync(jenkins, cat).code == 0
    assert "<string>ami-bake-worker</string>" in jenkins.view_config("", "AMI bakes")


def test_a_job_where_the_folder_should_be_is_a_clear_error(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    jenkins.put_item("team", "<project><description>a job</description></project>")
    run = sync(jenkins, catalogue(tmp_path, ["web"], folder="team/amis"))
    assert run.code == 1
    assert "'team' exists on Jenkins but is not a folder (it is a hudson.model.FreeStyleProject)" in run.text
    assert jenkins.writes() == []


def test_folder_that_vanishes_during_the_sync(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    jenkins.put_folder("amis")
    jenkins.fail_next("POST", "/job/amis/createItem", 404, "Not Found", count=2)
    run = sync(jenkins, catalogue(tmp_path, ["web", "worker"], folder="amis"), "--workers", "1")
    assert run.code == 1
    assert "create amis/ami-bake-web: folder 'amis' does not exist on Jenkins" in run.text
    assert "2 item(s) failed" in run.err


# --- failures: which, and why -----------------------------------------------------------------


def test_one_failed_update_fails_the_run_and_says_which_and_why(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    cat = catalogue(tmp_path, ["web", "worker"])
    assert sync(jenkins, cat).code == 0
    for job in ("ami-bake-web", "ami-bake-worker"):
        jenkins.ui_edit(job, lambda x: x.replace("*/main", "*/other"))
    jenkins.fail_next("POST", "/job/ami-bake-web/config.xml", 500)  # Jenkins' "Oops!" page: no X-Error
    run = sync(jenkins, cat)
    assert run.code == 1
    assert "FAILED to update ami-bake-web: update ami-bake-web: Jenkins at" in run.out
    assert "failed (HTTP 500) \u2014 see its log (Logging ID=" in run.out and "HTTP 500: Jenkins" not in run.text
    assert "updated ami-bake-worker" in run.out and "1 updated" in run.out and "1 failed" in run.out
    assert "generate-jobs: 1 item(s) failed: ami-bake-web:" in run.err
    cases = run.cases()
    assert cases["ami-bake-web"].find("failure") is not None
    assert cases["ami-bake-worker"].find("failure") is None
    # The next run repairs what failed.
    assert sync(jenkins, cat).code == 0 and "*/other" not in jenkins.config("ami-bake-web")


def test_bad_token_is_a_clear_401(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    run = sync(jenkins, catalogue(tmp_path, ["web"]), token="wrong-" + TOKEN[:4])
    assert run.code == 1
    assert "refused the credentials of user 'admin' (HTTP 401)" in run.err and "JENKINS_API_TOKEN" in run.err
    assert bake_jobs(jenkins) == []
    assert run.cases()["connect to Jenkins"].find("failure") is not None


def test_anonymous_access_refused(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    run = sync(jenkins, catalogue(tmp_path, ["web"]), user="")
    assert run.code == 1 and "does not allow anonymous access (HTTP 403)" in run.err


def test_user_without_rights_gets_403_per_job(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    run = sync(jenkins, catalogue(tmp_path, ["web"]), user="viewer", token="viewer-token")
    assert run.code == 1
    assert "user 'viewer' is not allowed to do this" in run.out
    assert "viewer is missing the Job/Configure permission" in run.out
    assert bake_jobs(jenkins) == []


def test_broken_crumb_issuer_stops_before_any_write(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    jenkins.crumb_issuer_status = 500
    run = sync(jenkins, catalogue(tmp_path, ["web", "worker"]))
    assert run.code == 1
    assert "could not get a CSRF crumb from" in run.err and "crumbIssuer/api/json (HTTP 500)" in run.err
    assert jenkins.writes() == []


def test_rejected_crumb_is_named(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    jenkins.reject_crumbs = True
    run = sync(jenkins, catalogue(tmp_path, ["web"]))
    assert run.code == 1
    assert "refused the request for want of a valid CSRF crumb (HTTP 403" in run.out
    assert bake_jobs(jenkins) == []


def test_unreachable_jenkins(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, err = io.StringIO(), io.StringIO()
    code = main(["--catalog", str(catalogue(tmp_path, ["web"])), "--workspace", str(tmp_path),
                 "--jenkins-url", f"http://admin:{TOKEN}@127.0.0.1:{port}/", "--user", "admin", "--token", TOKEN],
                stdout=out, stderr=err)
    assert code == 1
    assert f"cannot reach Jenkins at http://127.0.0.1:{port}/ (connection refused)" in err.getvalue()
    assert TOKEN not in out.getvalue() + err.getvalue()
    report = (tmp_path / "reports" / "generate-jobs.xml").read_text()
    assert "connection refused" in report and TOKEN not in report


def test_wrong_context_path(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--catalog", str(catalogue(tmp_path, ["web"])), "--workspace", str(tmp_path),
                 "--jenkins-url", jenkins.url + "jenkins", "--user", "admin", "--token", TOKEN], stdout=out, stderr=err)
    assert code == 1 and "must be the Jenkins root URL, with its context path" in err.getvalue()


def test_usage_errors_exit_2(jenkins: JenkinsDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("JENKINS_URL", "JENKINS_USER", "JENKINS_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    cat = str(catalogue(tmp_path, ["web"]))
    err = io.StringIO()
    assert main(["--catalog", cat], stdout=io.StringIO(), stderr=err) == 2
    assert "give --jenkins-url URL or set JENKINS_URL" in err.getvalue()
    err = io.StringIO()
    assert main(["--catalog", cat, "--jenkins-url", jenkins.url, "--user", "admin"], stdout=io.StringIO(), stderr=err) == 2
    assert "JENKINS_API_TOKEN" in err.getvalue()
    assert jenkins.log == []


def test_environment_flags_override_and_exit_codes_in_a_subprocess(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    """As a Jenkins job or a user's script runs it: env vars, a real process, its exit code."""
    cat = catalogue(tmp_path, ["web", "worker"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "JENKINS_URL": jenkins.url, "JENKINS_USER": "admin",
           "JENKINS_API_TOKEN": "not-the-token", "BAKERY_CATALOG": str(cat)}
    code = "import sys; from bakery_lib.cli import generate_jobs_main as main; sys.exit(main())"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                              cwd=tmp_path, timeout=60)

    bad = run()
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr and "Traceback" not in bad.stderr
    good = run("--token", TOKEN, "--workers", "2")  # the flag overrides JENKINS_API_TOKEN
    assert good.returncode == 0, good.stderr
    assert "2 created" in good.stdout and TOKEN not in good.stdout + good.stderr
    assert (tmp_path / "reports" / "generate-jobs.xml").is_file()  # workspace defaults to the cwd


def test_many_jobs_with_parallel_workers(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    roles = [f"role{i:02d}" for i in range(40)]
    cat = catalogue(tmp_path, roles)
    jenkins.latency = 0.005
    try:
        run = sync(jenkins, cat, "--workers", "8")
        assert run.code == 0 and "40 created" in run.out
        jenkins.clear_log()
        again = sync(jenkins, cat, "--workers", "8")
        assert again.code == 0 and "40 unchanged" in again.out and jenkins.writes() == []
    finally:
        jenkins.latency = 0.0
    for name, xml in rendered(cat).items():
        assert normalized(xml) == normalized(jenkins.config(name))


# --- issue 15: Jenkins' own rules -------------------------------------------------------------------


def test_refusal_names_jenkins_reason_from_x_error(jenkins: JenkinsDouble) -> None:
    """Jenkins' error page is a generic "Jenkins" page; the reason is in the X-Error header."""
    from bakery_lib.jobs.manager import JenkinsError, JenkinsManager

    manager = JenkinsManager(jenkins.url, "admin", TOKEN)
    manager.check_crumb()
    with pytest.raises(JenkinsError) as refused:
        manager.create("", "bad?name", DEPLOY_JOB)
    assert refused.value.status == 400 and "is an unsafe character" in str(refused.value)
    with pytest.raises(JenkinsError) as exists:
        manager.create("", "DEPLOY-release", DEPLOY_JOB)
    assert "already exists" in str(exists.value)


def test_job_names_are_compared_ignoring_case_as_jenkins_does(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    hand_made = DEPLOY_JOB.replace("deploys a release", "made by hand")
    jenkins.put_item("AMI-bake-web", hand_made)
    jenkins.clear_log()
    run = sync(jenkins, catalogue(tmp_path, ["web", "worker"]))
    assert run.code == 1
    assert "Jenkins has a job 'AMI-bake-web', which is the same name to Jenkins (item names ignore case)" in run.err
    assert "made by hand" in jenkins.config("AMI-bake-web")
    assert not any("AMI-bake-web" in r.path or "ami-bake-web" in r.path for r in jenkins.writes())
    assert "ami-bake-worker" in bake_jobs(jenkins)  # the other role is synced all the same


def test_missing_upstream_job_is_an_error_not_a_silent_never_triggered_job(jenkins: JenkinsDouble,
                                                                          tmp_path: Path) -> None:
    run = sync(jenkins, catalogue(tmp_path, ["web"], upstream_jobs=["deploy-relase"]))
    assert run.code == 1
    assert "upstream job(s) 'deploy-relase' (catalogue jenkins.upstream_jobs) do not exist on Jenkins" in run.err
    assert bake_jobs(jenkins) == [] and jenkins.writes() == []
    in_folder = catalogue(tmp_path, ["web"], name="folder.yaml", folder="amis", upstream_jobs=["deploy-relase"])
    run = sync(jenkins, in_folder)
    assert run.code == 1 and "relative to folder 'amis', then as a full name from the top level" in run.err
    fixed = catalogue(tmp_path, ["web"], name="fixed.yaml", folder="amis", upstream_jobs=["deploy-release"])
    assert sync(jenkins, fixed).code == 0 and "amis/ami-bake-web" in bake_jobs(jenkins)


def test_sync_prints_the_deploy_pipeline_line_only_when_it_is_the_hand_over(jenkins: JenkinsDouble,
                                                                             tmp_path: Path) -> None:
    """Issue 23 item 7: with upstream_jobs the trigger already starts the bake; the `build job:` line
    printed beside it had people add both, and every deploy baked twice."""
    triggered = sync(jenkins, catalogue(tmp_path, ["web"]))  # the sample catalogue has upstream_jobs
    assert triggered.code == 0
    assert "build job: '" not in triggered.out  # no snippet to copy
    assert "hand-over in use: the upstream trigger (jenkins.upstream_jobs: deploy-release)" in triggered.out
    data = offline_catalog_data(["web"], upstream_jobs=None)
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data))
    run = sync(jenkins, plain)
    assert run.code == 0 and "hand-over in use: the deploy pipeline's `build` step" in run.out
    assert ("build job: 'ami-bake-web', wait: false, parameters: [string(name: 'RELEASE', value: params.RELEASE)]"
            in run.out)
    # the double agrees: a job without upstream_jobs is queued by no deploy
    jenkins.schedule("deploy-release")
    jenkins.finish(jenkins.start_next("deploy-release"))  # type: ignore[arg-type]
    assert jenkins.queue == []


def test_jenkins_keeps_every_element_the_templates_write(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    """Jenkins (XStream) silently drops a field its class does not have and an element of an unknown
    class: a misspelled template element would be lost on save and every sync would "update" the job."""
    cat = catalogue(tmp_path, ["web", "worker"], folder="amis", release_job="ami-bake-release", view="Bakes")
    assert sync(jenkins, cat).code == 0
    assert jenkins.dropped == []
    again = sync(jenkins, cat)
    assert again.code == 0 and "0 created, 0 updated, 0 deleted" in again.out

    from bakery_lib.jobs.manager import JenkinsManager

    rendered = next(i for i in render_items(load_catalog(cat)) if i.name == "ami-bake-web").xml
    for typo in (("<upstreamProjects>", "<upstreamProject>", "</upstreamProjects>", "</upstreamProject>"),
                 ("<jenkins.triggers.ReverseBuildTrigger>", "<jenkins.triggers.ReverseBuildTriger>",
                  "</jenkins.triggers.ReverseBuildTrigger>", "</jenkins.triggers.ReverseBuildTriger>")):
        misspelled = rendered.replace(typo[0], typo[1]).replace(typo[2], typo[3])
        JenkinsManager(jenkins.url, "admin", TOKEN).update("amis/ami-bake-web", misspelled)
        assert not same_config(misspelled, jenkins.config("amis/ami-bake-web")), typo[1]
        assert jenkins.dropped, typo[1]
        jenkins.dropped.clear()


# --- what people configure on the folder and the jobs survives every sync (issue 23, item 1) ----------

FOLDER_PROPERTIES = (
    "<com.mig82.folders.properties.FolderProperties><properties><com.mig82.folders.properties.StringProperty>"
    "<key>CHEF_SERVER_URL</key><value>https://chef.example.com/organizations/acme</value>"
    "</com.mig82.folders.properties.StringProperty></properties></com.mig82.folders.properties.FolderProperties>")
FOLDER_CREDENTIALS = (
    "<com.cloudbees.hudson.plugins.folder.properties.FolderCredentialsProvider_-FolderCredentialsProperty>"
    "<domainCredentialsMap class='hudson.util.CopyOnWriteMap$Hash'><entry><com.cloudbees.plugins.credentials.domains"
    ".Domain><specifications/></com.cloudbees.plugins.credentials.domains.Domain><java.util.concurrent."
    "CopyOnWriteArrayList><org.jenkinsci.plugins.plaincredentials.impl.FileCredentialsImpl><id>bakery-chef-client-key"
    "</id><fileName>bakery.pem</fileName></org.jenkinsci.plugins.plaincredentials.impl.FileCredentialsImpl>"
    "</java.util.concurrent.CopyOnWriteArrayList></entry></domainCredentialsMap>"
    "</com.cloudbees.hudson.plugins.folder.properties.FolderCredentialsProvider_-FolderCredentialsProperty>")
REBUILD = "<com.sonyericsson.rebuild.RebuildSettings><autoRebuild>false</autoRebuild></com.sonyericsson.rebuild.RebuildSettings>"


def _add_property(xml: str, prop: str) -> str:
    root = ET.fromstring(xml)
    props = root.find("properties")
    assert props is not None
    props.append(ET.fromstring(prop))
    return ET.tostring(root, encoding="unicode")


def test_folder_properties_credentials_and_plugin_job_properties_survive_every_sync(
        jenkins: JenkinsDouble, tmp_path: Path) -> None:
    """The README's own step 3 puts CHEF_SERVER_URL on the folder and step 4 may keep the Chef key in the
    folder's credentials store: a sync used to post the folder with an empty <properties/>, which
    Jenkins' updateByXml takes as "no properties" (both gone), and dropped plugin-added job properties."""
    cat = catalogue(tmp_path, ["web"], folder="amis", view="Bakes")
    assert sync(jenkins, cat).code == 0
    jenkins.ui_edit("amis", lambda x: _add_property(_add_property(x, FOLDER_PROPERTIES), FOLDER_CREDENTIALS))
    jenkins.ui_edit("amis/ami-bake-web", lambda x: _add_property(x, REBUILD).replace("<quietPeriod>", "<quietPeriod>"))
    jenkins.clear_log()

    quiet = sync(jenkins, cat)  # only unmanaged things changed: nothing to do, nothing written
    assert quiet.code == 0 and "0 created, 0 updated" in quiet.out and jenkins.writes() == []

    # now something managed changed too: the update repairs it and keeps the rest
    jenkins.ui_edit("amis", lambda x: x.replace("Folder of the AMI Bakery", "My folder"))
    jenkins.ui_edit("amis/ami-bake-web", lambda x: x.replace("<lightweight>true", "<lightweight>false"))
    run = sync(jenkins, cat)
    assert run.code == 0 and "updated amis (" in run.out and "updated amis/ami-bake-web (" in run.out
    folder = ET.fromstring(jenkins.config("amis"))
    assert folder.findtext("description", "").startswith("Folder of the AMI Bakery")
    assert folder.findtext(".//com.mig82.folders.properties.StringProperty/value") == \
        "https://chef.example.com/organizations/acme"
    assert folder.findtext(".//org.jenkinsci.plugins.plaincredentials.impl.FileCredentialsImpl/id") == \
        "bakery-chef-client-key"
    job = ET.fromstring(jenkins.config("amis/ami-bake-web"))
    assert job.find("properties/com.sonyericsson.rebuild.RebuildSettings") is not None
    assert job.findtext("definition/lightweight") == "true"
    assert jenkins.dropped == []
    assert "0 updated" in sync(jenkins, cat).out  # and it stays that way


def test_a_managed_job_property_removed_from_the_catalogue_goes(jenkins: JenkinsDouble, tmp_path: Path) -> None:
    """Managed per element: the upstream trigger is the bakery's, so dropping upstream_jobs removes it,
    while a plugin's property next to it stays."""
    assert sync(jenkins, catalogue(tmp_path, ["web"], upstream_jobs=["deploy-release"])).code == 0
    jenkins.ui_edit("ami-bake-web", lambda x: _add_property(x, REBUILD))
    data = offline_catalog_data(["web"], upstream_jobs=None)
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data))
    assert sync(jenkins, plain).code == 0
    job = ET.fromstring(jenkins.config("ami-bake-web"))
    assert job.find(".//jenkins.triggers.ReverseBuildTrigger") is None
    assert job.find("properties/com.sonyericsson.rebuild.RebuildSettings") is not None


# --- upstream names resolved as Jenkins.getItem does (issue 23, item 3) ----------------------------------


@pytest.mark.parametrize(("upstream", "found"), [
    ("deploy-release", True),  # not in folder amis: Jenkins falls back to the full name
    ("DEPLOY-RELEASE", True),  # item names ignore case
    ("../deploy-release", True),
    ("/deploy-release", True),
    ("./../deploy-release", True),
    ("../../deploy-release", False),  # above the top level: `..` then is no item name, nothing is found
    ("team/deploy-web", True),  # not under amis: the full name from the top level
    ("deploy-release/x", False),  # below a job
])
def test_upstream_names_resolve_as_jenkins_resolves_them(jenkins: JenkinsDouble, tmp_path: Path,
                                                         upstream: str, found: bool) -> None:
    jenkins.put_folder("team")
    jenkins.put_item("team/deploy-web", DEPLOY_JOB)
    cat = catalogue(tmp_path, ["web"], folder="amis", upstream_jobs=[upstream])
    run = sync(jenkins, cat)
    assert (run.code == 0) is found, run.text
    if found:  # and the double's ReverseBuildTrigger (Jenkins.getItem) agrees: the bake is queued
        target = jenkins.get_item(upstream, "amis")
        assert target is not None
        jenkins.schedule(target)
        jenkins.finish(jenkins.start_next(target))  # type: ignore[arg-type]
        assert [i.job for i in jenkins.queue] == ["amis/ami-bake-web"]
    else:
        assert "do not exist on Jenkins" in run.err and "Jenkins.getItem" in run.err
        assert jenkins.get_item(upstream, "amis") is None


def test_a_crumb_of_an_ended_session_is_refused_and_the_sync_asks_for_a_new_one(jenkins: JenkinsDouble) -> None:
    """Jenkins binds a crumb to the HTTP session; sessions end (idle timeout, restart). A write refused
    for its crumb did nothing, so the manager asks the issuer once more and resends; the double refuses
    the old crumb exactly as Jenkins would."""
    from bakery_lib.jobs.manager import JenkinsManager

    manager = JenkinsManager(jenkins.url, "admin", TOKEN)
    manager.check_crumb()
    manager.create("", "first", DEPLOY_JOB)
    jenkins.expire_sessions()
    manager.create("", "second", DEPLOY_JOB)
    assert {"first", "second"} <= set(jenkins.root.items)
    refused = [r for r in jenkins.writes() if r.status == 403]
    assert len(refused) == 1 and "second" in refused[0].path + refused[0].query
    assert len([r for r in jenkins.requests("GET") if "crumbIssuer" in r.path]) == 2
