"""generate-jobs rendering: golden files, XML structure, escaping, --output-dir, catalogue errors.

Golden files: each tests/golden/jenkins/CASE/ holds a catalogue (bakery.yaml) beside the exact
config.xml files ``generate-jobs --output-dir`` must write for it (expected/). After an intended
template change, regenerate them with BAKERY_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakery_lib import __version__
from bakery_lib.catalog import parse_catalog
from bakery_lib.cli.generate_jobs import main
from bakery_lib.errors import CatalogError
from bakery_lib.jobs.normalize import normalized, parse_marker, same_config
from bakery_lib.jobs.render import render_items
from devstack.jenkins_double import jenkins_serialize
from devstack.samples import offline_catalog_data

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden" / "jenkins"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "bakery.yaml").exists())


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def base_catalogue(**jenkins: Any) -> dict[str, Any]:
    return offline_catalog_data(["web"], **{"upstream_jobs": None, **jenkins})


@pytest.mark.parametrize("case", CASES)
def test_golden_files(case: str, tmp_path: Path) -> None:
    code, out, err = run_cli("--catalog", str(GOLDEN / case / "bakery.yaml"), "--output-dir", str(tmp_path))
    assert code == 0, err
    assert "no Jenkins contacted" in out
    expected_dir = GOLDEN / case / "expected"
    if os.environ.get("BAKERY_UPDATE_GOLDEN"):
        import shutil

        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(tmp_path, expected_dir)
    got, expected = tree(tmp_path), tree(expected_dir)
    assert sorted(got) == sorted(expected), "a different set of config.xml files was written"
    for name, content in expected.items():
        assert got[name].decode() == content.decode(), f"{case}/{name} differs from the golden file"


def test_golden_cases_cover_folder_release_view_and_top_level() -> None:
    assert {"minimal", "full"} <= set(CASES)
    full = tree(GOLDEN / "full" / "expected")
    assert "platform/config.xml" in full and "platform/amis/config.xml" in full
    assert "platform/amis/bake-release/config.xml" in full
    assert "platform/amis/@views/AMI bakes/config.xml" in full
    assert set(tree(GOLDEN / "minimal" / "expected")) == {"ami-bake-web/config.xml", "ami-bake-reporting/config.xml"}


def _params(root: ET.Element) -> dict[str, ET.Element]:
    return {
        p.findtext("name"): p
        for p in root.find("properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions")  # type: ignore[union-attr]
    }


def test_role_job_structure_and_escaped_values_round_trip() -> None:
    data = yaml.safe_load((GOLDEN / "full" / "bakery.yaml").read_text(encoding="utf-8"))
    catalog = parse_catalog(data, "full.yaml")
    items = {i.full_name: i for i in render_items(catalog)}
    job = items["platform/amis/bake-web"]
    root = ET.fromstring(job.xml)  # valid XML despite <&>"' everywhere
    assert root.tag == "flow-definition"
    definition = root.find("definition")
    assert definition is not None and definition.get("class") == "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition"
    assert definition.findtext("scriptPath") == "ci/jenkins/Jenkinsfile"
    assert definition.findtext("lightweight") == "true"
    scm = definition.find("scm")
    assert scm is not None and scm.get("class") == "hudson.plugins.git.GitSCM"
    remote = scm.find("userRemoteConfigs/hudson.plugins.git.UserRemoteConfig")
    assert remote is not None
    assert remote.findtext("url") == data["jenkins"]["scm_url"] == "https://git.example.com/ops/bakery.git?x=<1>&y='2'"
    assert remote.findtext("credentialsId") == "git-ssh-ключ"
    assert scm.findtext("branches/hudson.plugins.git.BranchSpec/name") == "*/release/ünï<&>'\""

    params = _params(root)
    assert list(params) == ["ROLE", "RELEASE", "AGENT_LABEL", "BAKERY_VERSION", "CATALOG"]
    assert params["ROLE"].findtext("defaultValue") == "web"
    assert params["BAKERY_VERSION"].findtext("defaultValue") == "2.3.1+acme.1"  # jenkins.bakery_version
    assert params["CATALOG"].findtext("defaultValue") == "ops/amis/bakery.yaml"  # jenkins.catalog_path
    assert params["RELEASE"].findtext("defaultValue") in ("", None)
    assert params["AGENT_LABEL"].findtext("defaultValue") == "linux-docker.x_1"

    trigger = root.find(
        "properties/org.jenkinsci.plugins.workflow.job.properties.PipelineTriggersJobProperty/triggers/"
        "jenkins.triggers.ReverseBuildTrigger"
    )
    assert trigger is not None
    upstream = [s.strip() for s in (trigger.findtext("upstreamProjects") or "").split(",")]
    assert upstream == ["deploy <prod> & \"friends\"", "déploiement-'ops'", "../shared/deploy-ünï"]
    assert trigger.findtext("threshold/name") == "SUCCESS"
    assert trigger.findtext("threshold/completeBuild") == "true"
    assert root.find("properties/org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty") is not None
    assert root.findtext("properties/jenkins.model.BuildDiscarderProperty/strategy/numToKeep") == "12"
    marker = parse_marker(root.findtext("description"))
    assert marker is not None and (marker.kind, marker.prefix, marker.role) == ("role", "bake-", "web")


def test_release_job_folder_and_view() -> None:
    catalog = parse_catalog(yaml.safe_load((GOLDEN / "full" / "bakery.yaml").read_text(encoding="utf-8")), "full.yaml")
    items = render_items(catalog)
    kinds = [(i.kind, i.full_name) for i in items]
    # Creation order: outer folder, inner folder, jobs, view last (it lists the jobs).
    assert kinds[:2] == [("folder", "platform"), ("folder", "platform/amis")]
    assert kinds[-1] == ("view", "platform/amis/AMI bakes")
    by_name = {i.full_name: i for i in items}

    release = ET.fromstring(by_name["platform/amis/bake-release"].xml)
    assert release.findtext("definition/scriptPath") == "ci/jenkins/release.Jenkinsfile"
    params = _params(release)
    assert list(params) == ["RELEASE", "MODE", "JOBS", "ROLES", "JOB_PREFIX", "AGENT_LABEL", "BAKERY_VERSION",
                            "CATALOG"]
    assert params["ROLES"].findtext("defaultValue") == "api_v2 reporting web"
    assert [s.text for s in params["MODE"].iter("string")] == ["jobs", "bake"]
    assert release.find(".//jenkins.triggers.ReverseBuildTrigger") is None  # run on demand only
    assert parse_marker(release.findtext("description")).kind == "release"  # type: ignore[union-attr]

    folder = ET.fromstring(by_name["platform/amis"].xml)
    assert folder.tag == "com.cloudbees.hudson.plugins.folder.Folder"
    assert parse_marker(folder.findtext("description")).kind == "folder"  # type: ignore[union-attr]

    view = ET.fromstring(by_name["platform/amis/AMI bakes"].xml)
    assert view.findtext("name") == "AMI bakes"
    assert [s.text for s in view.findall("jobNames/string")] == [
        "bake-api_v2", "bake-release", "bake-reporting", "bake-web",
    ]


def test_minimal_catalogue_defaults() -> None:
    catalog = parse_catalog(yaml.safe_load((GOLDEN / "minimal" / "bakery.yaml").read_text()), "minimal.yaml")
    items = render_items(catalog)
    assert [(i.kind, i.full_name, i.role) for i in items] == [
        ("job", "ami-bake-reporting", "reporting"),
        ("job", "ami-bake-web", "web"),
    ]
    root = ET.fromstring(items[1].xml)
    assert root.findtext("definition/scm/branches/hudson.plugins.git.BranchSpec/name") == "*/main"
    assert root.findtext("definition/scriptPath") == "jenkins/Jenkinsfile"
    assert _params(root)["AGENT_LABEL"].findtext("defaultValue") == "bakery"
    assert root.find("definition/scm/userRemoteConfigs/hudson.plugins.git.UserRemoteConfig/credentialsId") is None


def test_no_upstream_jobs_means_no_trigger() -> None:
    catalog = parse_catalog(base_catalogue(upstream_jobs=[]), "c.yaml")
    root = ET.fromstring(render_items(catalog)[0].xml)
    assert root.find(".//jenkins.triggers.ReverseBuildTrigger") is None
    assert "when started" in (root.findtext("description") or "")


# Any text the catalogue accepts for these keys: printable, no control characters (and, for
# upstream job names, no comma, the separator of upstreamProjects).
_XML_HOSTILE = st.sampled_from(list("<&>\"'];]]>") + ["]]>", "&amp;", "<![CDATA[", "é", "ключ", "日本", "😀", "\u0085", "\u00a0"])
_TEXT = st.lists(st.one_of(_XML_HOSTILE, st.characters(min_codepoint=0x20, exclude_characters="\x7f,\ufffe\uffff",
                                                       exclude_categories=("Cs",))), min_size=1, max_size=12).map("".join)


# agent_label is one label name (the Jenkinsfiles refuse label expressions: `!bakery` reaches the controller)
_LABEL = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z").filter(lambda s: s.lower() not in ("built-in", "master"))


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scm_url=_TEXT, upstream=st.lists(_TEXT, min_size=1, max_size=3), label=_LABEL, creds=_TEXT)
def test_any_catalogue_text_stays_text_in_valid_xml(scm_url: str, upstream: list[str], label: str, creds: str) -> None:
    catalog = parse_catalog(
        base_catalogue(scm_url=scm_url, upstream_jobs=upstream, agent_label=label, scm_credentials_id=creds), "c.yaml"
    )
    xml = render_items(catalog)[0].xml
    root = ET.fromstring(xml)
    assert root.findtext("definition/scm/userRemoteConfigs/hudson.plugins.git.UserRemoteConfig/url") == scm_url
    assert root.findtext("definition/scm/userRemoteConfigs/hudson.plugins.git.UserRemoteConfig/credentialsId") == creds
    assert _params(root)["AGENT_LABEL"].findtext("defaultValue") == label
    assert root.findtext(".//jenkins.triggers.ReverseBuildTrigger/upstreamProjects") == ", ".join(upstream)
    # What Jenkins stores after saving it is the same job to the comparison (no endless "update").
    assert same_config(xml, jenkins_serialize(xml))


def test_normalization_ignores_only_jenkins_noise() -> None:
    xml = render_items(parse_catalog(base_catalogue(upstream_jobs=["deploy"]), "c.yaml"))[0].xml
    saved = jenkins_serialize(xml)
    assert saved != xml and 'plugin="workflow-job@' in saved and "version='1.1'" in saved
    assert same_config(xml, saved)
    reordered = xml.replace(
        '<strategy class="hudson.tasks.LogRotator">', '<strategy   class="hudson.tasks.LogRotator" >'
    ).replace("\n", "\r\n")
    assert same_config(xml, reordered)
    # A real change is one, wherever it is.
    assert not same_config(xml, saved.replace("<numToKeep>30<", "<numToKeep>31<"))
    assert not same_config(xml, saved.replace("*/main", "*/hotfix"))
    assert not same_config(xml, saved.replace("<lightweight>true", "<lightweight>false"))
    # Run-time actions (a declarative build's tracker) are not configuration.
    with_actions = saved.replace("<actions/>", "<actions><org.example.Tracker><x>1</x></org.example.Tracker></actions>")
    assert with_actions != saved and same_config(xml, with_actions)
    assert "plugin=" not in normalized(saved)


def test_output_dir_dry_run_writes_nothing(tmp_path: Path) -> None:
    code, out, _ = run_cli("--catalog", str(GOLDEN / "minimal" / "bakery.yaml"), "--output-dir", str(tmp_path / "o"),
                           "--dry-run")
    assert code == 0
    assert f"would write {tmp_path / 'o' / 'ami-bake-web' / 'config.xml'}" in out
    assert not (tmp_path / "o").exists()


def test_output_dir_with_delete_stale_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run_cli("--catalog", str(GOLDEN / "minimal" / "bakery.yaml"), "--output-dir", str(tmp_path),
                           "--delete-stale")
    assert code == 2 and "--delete-stale" in err


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("mutate", "key", "role"),
    [
        (lambda d: d["jenkins"].update(scm_urll="x"), "jenkins.scm_urll", None),
        (lambda d: d["jenkins"].pop("scm_url"), "jenkins.scm_url", None),
        (lambda d: d["jenkins"].update(release_job="ami-bake-web"), "jenkins.release_job", None),
        (lambda d: d["jenkins"].update(view="a/b"), "jenkins.view", None),
        (lambda d: d["jenkins"].update(agent_label="x\uffffy"), "jenkins.agent_label", None),
        (lambda d: d["roles"]["web"].update(platfrom="linux"), "platfrom", "web"),
    ],
)
def test_bad_catalogue_exits_2_naming_file_role_and_key(tmp_path: Path, mutate: Any, key: str, role: str | None) -> None:
    data = base_catalogue()
    mutate(data)
    path = _write(tmp_path, data)
    out_dir = tmp_path / "out"
    code, out, err = run_cli("--catalog", str(path), "--output-dir", str(out_dir))
    assert code == 2
    assert str(path) in err and repr(key) in err
    if role:
        assert repr(role) in err
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists()  # nothing done


def test_catalogue_from_environment_and_exit_codes_in_a_subprocess(tmp_path: Path) -> None:
    """As Jenkins runs it: a separate process, the catalogue from BAKERY_CATALOG."""
    env = {**os.environ, "BAKERY_CATALOG": str(GOLDEN / "minimal" / "bakery.yaml"), "PYTHONPATH": str(REPO)}
    code = "import sys; from bakery_lib.cli import generate_jobs_main as main; sys.exit(main())"
    ok = subprocess.run([sys.executable, "-c", code, "--output-dir", str(tmp_path / "o")], env=env,
                        capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "ami-bake-web" / "config.xml").is_file()
    env["BAKERY_CATALOG"] = str(tmp_path / "missing.yaml")
    bad = subprocess.run([sys.executable, "-c", code, "--output-dir", str(tmp_path / "p")], env=env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2
    assert "missing.yaml" in bad.stderr and "file not found" in bad.stderr and "Traceback" not in bad.stderr
    usage = subprocess.run([sys.executable, "-c", code, "--workers", "0"], env=env,
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert usage.returncode == 2 and "--workers" in usage.stderr


@pytest.mark.parametrize(("label", "allowed", "error"), [
    ("built-in", False, "built-in and master are the controller's own node"),
    ("Master", False, "built-in and master are the controller's own node"),
    ("bakery || built-in", False, "is not a Jenkins label name"),
    ("!bakery", False, "is not a Jenkins label name"),
    ("a..b", False, "no '..'"),
    ("built-in", True, None),
])
def test_agent_label_is_one_label_and_the_controller_only_when_allowed(label: str, allowed: bool,
                                                                       error: str | None) -> None:
    """Issue 23 item 6: the label a bake runs on, and BUILT_IN_NODE_ALLOWED defined only when allowed."""
    data = base_catalogue(agent_label=label)
    if allowed:
        data["jenkins"]["allow_built_in_node"] = True
    if error:
        with pytest.raises(CatalogError, match=re.escape(error)) as caught:
            parse_catalog(data, "c.yaml")
        assert "jenkins.agent_label" in str(caught.value)
        return
    for item in render_items(parse_catalog(data, "c.yaml")):
        if item.kind == "job":
            names = [p.findtext("name") for p in ET.fromstring(item.xml).iter("hudson.model.BooleanParameterDefinition")]
            assert names == ["BUILT_IN_NODE_ALLOWED"]
    plain = render_items(parse_catalog(base_catalogue(), "c.yaml"))
    assert all("BUILT_IN_NODE_ALLOWED" not in i.xml for i in plain)


def test_output_dir_is_written_atomically_without_an_fsync_per_file(tmp_path: Path, monkeypatch) -> None:
    """Issue 21 item 6: 600 fsyncs were most of rendering 300 jobs. The files are the catalogue rendered
    (a re-run makes them again): atomic (temp file + rename), not fsynced."""
    from bakery_lib.jobs.render import write_output_dir

    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    items = render_items(parse_catalog(base_catalogue(), "c.yaml"))
    paths = write_output_dir(items, tmp_path / "out")
    assert fsyncs == []
    assert [p.read_text() for p in paths] == [i.xml for i in items]
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_jobs_pin_the_bakery_that_generated_them_unless_the_catalogue_says(tmp_path: Path) -> None:
    """Without jenkins.bakery_version the jobs require the version running generate-jobs; the catalogue's
    path in the repository defaults to bakery.yaml."""
    catalog = parse_catalog(yaml.safe_load((GOLDEN / "minimal" / "bakery.yaml").read_text(encoding="utf-8")),
                            "minimal.yaml")
    job = next(i for i in render_items(catalog) if i.kind == "job")
    params = _params(ET.fromstring(job.xml))
    assert params["BAKERY_VERSION"].findtext("defaultValue") == __version__
    assert params["CATALOG"].findtext("defaultValue") == "bakery.yaml"
