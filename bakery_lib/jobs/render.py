"""Render the Jenkins items of a catalogue: one bake job per role, plus folder, release job and view.

Reads the catalogue's ``jenkins`` settings and roles; returns ``Item``s (frozen), each the exact
config.xml generate-jobs wants on Jenkins. Templates are ``templates/jenkins/*.xml.j2``, rendered
through the bakery's one Jinja2 environment (autoescape on), so any catalogue value, ``<&>"'``
and non-ASCII included, stays text inside valid XML. Nothing here talks to Jenkins.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..catalog import Catalog, JenkinsSettings, RoleSpec
from ..errors import CatalogError
from ..fsutil import atomic_write_text
from ..render import environment
from .normalize import FOLDER_RUNTIME_ELEMENTS, RUNTIME_ELEMENTS, Marker

DEFAULT_AGENT_LABEL = "bakery"
# Characters Jenkins refuses in item and view names.
_JENKINS_NAME_BAD = re.compile(r"[?*/\\%!@#$^&|<>\[\]:;]")
# Directory under --output-dir for views: '@' cannot occur in a job or folder name of ours.
VIEWS_DIR = "@views"


@dataclass(frozen=True)
class Item:
    """One thing generate-jobs manages on Jenkins."""

    kind: str  # "folder" | "job" | "view"
    parent: str  # folder path the item lives in, "" for the top level
    name: str
    xml: str
    role: str | None = None  # the role of a per-role job

    @property
    def full_name(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name

    @property
    def label(self) -> str:
        """How messages, the plan and the JUnit report name the item."""
        return f"view {self.full_name}" if self.kind == "view" else self.full_name

    @property
    def ignore(self) -> tuple[str, ...]:
        """Top-level elements not compared (Jenkins or people change them outside generate-jobs)."""
        return FOLDER_RUNTIME_ELEMENTS if self.kind == "folder" else RUNTIME_ELEMENTS

    def output_path(self, root: Path) -> Path:
        if self.kind == "view":
            return root.joinpath(*[p for p in self.parent.split("/") if p], VIEWS_DIR, self.name, "config.xml")
        return root.joinpath(*self.full_name.split("/"), "config.xml")


def render_items(catalog: Catalog) -> tuple[Item, ...]:
    """Every item of the catalogue, in the order they must be created: folders, jobs, view."""
    jenkins = catalog.jenkins
    _check_settings(catalog)
    env = environment()
    folder = jenkins.folder or ""
    items: list[Item] = []

    if folder:
        template = env.get_template("jenkins/folder.xml.j2")
        parts = folder.split("/")
        for depth in range(1, len(parts) + 1):
            description = _describe(
                "Folder of the AMI Bakery's bake jobs.", Marker("folder", jenkins.job_prefix)
            )
            items.append(Item("folder", "/".join(parts[: depth - 1]), parts[depth - 1], template.render(description=description)))

    role_template = env.get_template("jenkins/role-job.xml.j2")
    common = {
        "jenkins": jenkins,
        "agent_label": jenkins.agent_label or DEFAULT_AGENT_LABEL,
        "branch_spec": branch_spec(jenkins.scm_branch),
        "bakery_version": pinned_version(jenkins),
    }
    for name in sorted(catalog.roles):
        role = catalog.roles[name]
        xml = role_template.render(
            role=role,
            description=_role_description(role, jenkins),
            upstream_projects=", ".join(jenkins.upstream_jobs),
            script_path=jenkins.script_path,
            **common,
        )
        items.append(Item("job", folder, jenkins.job_name(name), xml, role=name))

    if jenkins.release_job:
        xml = env.get_template("jenkins/release-job.xml.j2").render(
            description=_describe(
                "Bakes every role of a release, through the per-role jobs or with `bakery bake`.",
                Marker("release", jenkins.job_prefix),
            ),
            roles=sorted(catalog.roles),
            script_path=release_script_path(jenkins.script_path),
            **common,
        )
        items.append(Item("job", folder, jenkins.release_job, xml))

    if jenkins.view:
        job_names = [i.name for i in items if i.kind == "job"]
        xml = env.get_template("jenkins/view.xml.j2").render(
            view_name=jenkins.view,
            description=_describe("The AMI Bakery's bake jobs.", Marker("view", jenkins.job_prefix)),
            job_names=sorted(job_names, key=str.casefold),
        )
        items.append(Item("view", folder, jenkins.view, xml))
    return tuple(items)


def pinned_version(jenkins: JenkinsSettings) -> str:
    """The bakery version the jobs require on their agent: the catalogue's, else the one rendering them."""
    return jenkins.bakery_version or __version__


def branch_spec(branch: str) -> str:
    """The git plugin's branch specifier: a plain branch name matches it on any remote."""
    if branch.startswith(("refs/", "*/", "origin/")):
        return branch
    return f"*/{branch}"


def release_script_path(script_path: str) -> str:
    """release.Jenkinsfile sits beside the per-role Jenkinsfile."""
    return posixpath.join(posixpath.dirname(script_path), "release.Jenkinsfile")


def _describe(summary: str, marker: Marker) -> str:
    return (
        f"{summary}\n"
        "Generated by the AMI Bakery's generate-jobs from the roles catalogue: change the catalogue, "
        "not this page (changes made here are replaced on the next sync).\n"
        f"{marker.text()}"
    )


def _role_description(role: RoleSpec, jenkins: JenkinsSettings) -> str:
    upstream = ", ".join(jenkins.upstream_jobs)
    when = f"after every successful build of {upstream}" if upstream else "when started"
    summary = (
        f"Bakes the AMI of Chef role {role.name} ({role.platform}, {role.region}) {when}: "
        f"run list {', '.join(role.run_list_ami)}."
    )
    return _describe(summary, Marker("role", jenkins.job_prefix, role.name))


# Characters no XML document can carry, escaped or not (the catalogue already refuses C0 controls).
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _check_settings(catalog: Catalog) -> None:
    """What job generation needs beyond what the catalogue loader checks (exit 2, nothing done)."""
    jenkins = catalog.jenkins
    for key, value in vars(jenkins).items():
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str) and (m := _NOT_XML.search(text)):
                raise CatalogError(
                    catalog.path, f"contains U+{ord(m.group(0)):04X}, which XML cannot carry", key=f"jenkins.{key}"
                )
    if not jenkins.scm_url:
        raise CatalogError(
            catalog.path, "missing (the git URL of your repository: the one holding this catalogue at "
            f"jenkins.catalog_path ({jenkins.catalog_path}) and the Jenkinsfile at jenkins.script_path)", key="jenkins.scm_url"
        )
    names = {jenkins.job_name(r): r for r in catalog.roles}
    if jenkins.release_job and jenkins.release_job in names:
        raise CatalogError(
            catalog.path,
            f"{jenkins.release_job!r} is also the job of role {names[jenkins.release_job]!r}",
            key="jenkins.release_job",
        )
    if jenkins.view is not None and (_JENKINS_NAME_BAD.search(jenkins.view) or jenkins.view.strip() != jenkins.view):
        raise CatalogError(
            catalog.path,
            f"{jenkins.view!r} is not a valid Jenkins view name (no ?*/\\%!@#$^&|<>[]:; or surrounding spaces)",
            key="jenkins.view",
        )


def write_output_dir(items: tuple[Item, ...], root: Path) -> list[Path]:
    """Write each item's config.xml under ``root``, atomically (temp file and rename: a reader never sees
    half a file) but without fsync: the files are the catalogue rendered, made again by running the
    command again, so a crash costs nothing a re-run does not give back, while an fsync per file (and
    per directory) was most of the time of rendering 300 jobs."""
    return [atomic_write_text(item.output_path(root), item.xml, durable=False) for item in items]
