"""An in-process HTTP double of the Jenkins endpoints python-jenkins (and Jenkins Job Builder) use.

No Jenkins server can be had here, so tests, the benchmark and the demo talk to this instead, on
127.0.0.1, through the real python-jenkins client. It is faithful where a client can tell:

- every response carries ``X-Jenkins`` (python-jenkins reads the version from it);
- basic auth with an API token: a wrong user or token gets 401 (``WWW-Authenticate``), no
  credentials at all get 403 "Authentication required" (as Jenkins does when anonymous users may
  not read), a user without configure rights gets 403 on writes;
- CSRF crumbs: ``crumbIssuer/api/json`` issues a crumb bound to the user and the HTTP session
  (``JSESSIONID`` cookie, as Jenkins >= 2.176 does); every POST must carry it in ``Jenkins-Crumb``
  or gets 403 "No valid crumb was included in the request". That is the strict setting (Jenkins
  also exempts API-token requests unless told not to): a client that works here works on both;
- ``createItem?name=`` with an XML body (job or folder) or ``mode=`` form (folder), 400 when the
  item exists, 404 when the folder does not; ``job/NAME/config.xml`` GET/POST; ``doDelete``
  (302 to the parent, like Jenkins); views: ``createView``, ``view/NAME/config.xml``, ``doDelete``,
  stored inside their folder's config as Jenkins does;
- ``api/json`` with ``tree=`` (nested, any depth, beyond which objects carry only ``_class``) and
  ``depth=`` for Jenkins, folders, jobs and views; nested folders (``job/a/job/b/...``);
- on every save the config is re-serialized the way Jenkins' XStream writes it: XML 1.1 header,
  two-space indentation, and ``plugin="name@version"`` on every element whose class comes from a
  plugin other than its parent's. A config read back is therefore *not* byte-equal to what was
  posted, exactly the trap a naive "compare and update" falls into.

Item names are case-insensitive (Jenkins keeps items in a CaseInsensitiveComparator map), and a
refusal is answered as Jenkins' ``Failure`` error page: HTTP 400, a generic page titled "Jenkins",
the reason in the ``X-Error`` header (written ISO-8859-1, as Jetty does). An exception that is no
``Failure`` (an unreadable config, a class mismatch, an injected 500) is core's "Oops!" page
(``jenkins/model/Jenkins/oops.jelly``): HTTP 500, "A problem occurred while processing the request"
and a logging id, NO X-Error and no exception text (that goes to the Jenkins log: ``exceptions``).

Posting ``config.xml`` REPLACES the item (core ``AbstractItem.updateByXml`` unmarshals with
``XmlFile.unmarshalNullingOut(this)``): what the posted XML leaves out is gone, an empty
``<properties/>`` empties the item's property list. Folders keep what people configure on them in
``properties`` (folder-properties ``com.mig82.folders.properties.FolderProperties``, cloudbees-folder's
``FolderCredentialsProvider$FolderCredentialsProperty`` store) and jobs keep plugin-added job
properties (rebuild, matrix-auth, throttle-concurrents): the double knows those classes, keeps them
and returns them, and replaces them exactly as Jenkins does when a post leaves them out.

Names are resolved as core's ``Jenkins.getItem(pathName, context)`` does (``get_item``: relative,
``..``, absolute, and the fall-back to the name as a full name from the top level), which is what
``ReverseBuildTrigger`` (``Items.fromNameList``) and the ``build`` step use.

Builds, where the post-deploy flow depends on them (core ``Queue``, ``ParametersAction``,
``CauseAction``, ``ParameterizedJobMixIn``, ``jenkins.triggers.ReverseBuildTrigger``, workflow-cps
``ReplayAction``): ``schedule`` queues a request, filling in parameter defaults as
``scheduleBuild2`` does and folding it into a waiting item of the same job with equal parameters
(only its cause is added); ``start_next`` starts the oldest waiting item when the job is not
building (no concurrent builds); ``finish`` ends a build and queues, WITHOUT parameters, every job
whose ReverseBuildTrigger watches it; ``replay`` queues a build with the same parameters but only a
user and a replay cause; ``upstream_builds`` gives a build's upstream causes in the form the pipeline
harness (tests/support/harness.groovy) models ``currentBuild.upstreamBuilds`` from.

For assertions: ``log`` records every request (method, path, query, status, user); ``ui_edit``
changes a job as a person in the web UI would (not logged as an API request); ``simulate_build``
adds the action a declarative Pipeline run stores in the job's config; ``fail_next`` injects an
error response. Stdlib only, so the demo can import it too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from devstack.httpd import LoopbackHTTPServer

JENKINS_VERSION = "2.462.3"
CRUMB_FIELD = "Jenkins-Crumb"
FOLDER_CLASS = "com.cloudbees.hudson.plugins.folder.Folder"

# Which plugin a class comes from (longest matching prefix wins); anything else is core.
PLUGINS: dict[str, str] = {
    "org.jenkinsci.plugins.workflow.job.": "workflow-job@1436.vfa_244484591f",
    "org.jenkinsci.plugins.workflow.cps.": "workflow-cps@3894.vd0f0248b_a_fc4",
    "org.jenkinsci.plugins.pipeline.modeldefinition.": "pipeline-model-definition@2.2214.vb_b_34b_2ea_9b_83",
    "hudson.plugins.git.": "git@5.2.2",
    "com.cloudbees.hudson.plugins.folder.": "cloudbees-folder@6.928.v7c780211d66e",
    "jenkins.branch.": "branch-api@2.1169.va_f810c56e895",
    "com.mig82.folders.": "folder-properties@1.2.1",
    "com.sonyericsson.rebuild.": "rebuild@332.va_1ee476d8f6d",
}
# Root tags that are not class names.
ROOT_CLASSES = {
    "flow-definition": "org.jenkinsci.plugins.workflow.job.WorkflowJob",
    "project": "hudson.model.FreeStyleProject",
    "matrix-project": "hudson.matrix.MatrixProject",
}
_FQCN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+\.[A-Z][A-Za-z0-9_$]*$")
_NAME_BAD = re.compile(r"[?*/\\%!@#$^&|<>\[\]:;]")


@dataclass(frozen=True)
class Request:
    """One request as the double saw it."""

    method: str
    path: str
    query: str
    status: int
    user: str | None


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    body: str
    remaining: int


class _Items(dict):  # type: ignore[type-arg]
    """Item names as Jenkins compares them: case-insensitively (Jenkins and folders keep their items
    in a map ordered by CaseInsensitiveComparator), so ``AMI-bake-web`` and ``ami-bake-web`` are one
    item; the name keeps the case it was created with."""

    def _key(self, name: object) -> object:
        if isinstance(name, str):
            for key in dict.keys(self):
                if key.lower() == name.lower():
                    return key
        return name

    def __getitem__(self, name: object) -> Any:
        return dict.__getitem__(self, self._key(name))

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, self._key(name))

    def get(self, name: object, default: Any = None) -> Any:
        return dict.get(self, self._key(name), default)

    def __setitem__(self, name: object, value: Any) -> None:
        dict.__setitem__(self, self._key(name), value)

    def __delitem__(self, name: object) -> None:
        dict.__delitem__(self, self._key(name))


@dataclass
class QueueItem:
    """A waiting build request: its job, its parameter values and every cause folded into it."""

    job: str
    parameters: dict[str, str]
    causes: list[dict[str, Any]]


@dataclass
class BuildRecord:
    job: str
    number: int
    parameters: dict[str, str]
    causes: list[dict[str, Any]]
    started: float
    result: str | None = None
    env_overrides: dict[str, str] = field(default_factory=dict)


def _parameter_definitions(config: str) -> dict[str, str]:
    """name -> default of the job's parameters (ParametersDefinitionProperty), in order."""
    root = ET.fromstring(config)
    found: dict[str, str] = {}
    for definitions in root.iter("parameterDefinitions"):
        for definition in definitions:
            name = definition.findtext("name")
            if name:
                choices = [c.text or "" for c in definition.iter("string")]
                default = definition.findtext("defaultValue")
                found[name] = default if default is not None else (choices[0] if choices else "")
    return found


@dataclass
class _Node:
    """A job, a folder or the Jenkins root. Folders and the root hold items and views."""

    kind: str  # "root" | "folder" | "job"
    name: str
    config: str = ""  # as Jenkins would store it (re-serialized); views of a folder live in self.views
    items: dict[str, _Node] = field(default_factory=_Items)
    views: dict[str, str] = field(default_factory=dict)  # view name -> stored view XML

    @property
    def is_group(self) -> bool:
        return self.kind in ("root", "folder")


def plugin_of(class_name: str) -> str | None:
    best = None
    for prefix, plugin in PLUGINS.items():
        if class_name.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, plugin)
    return best[1] if best else None


# What XStream can read, for the classes the bakery's templates use: class -> its fields. Jenkins reads a
# config.xml with XStream2's Robust converters: a field the class does not have is skipped (and reported
# by the "old data" monitor), an element naming a class that does not exist (a typo, or a plugin that is
# not installed) is dropped from its list, and the saved config no longer has them. Only an unknown ROOT
# class makes the whole config unreadable. Classes not listed here are taken as they are.
SCHEMA: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    "org.jenkinsci.plugins.workflow.job.WorkflowJob": "actions description displayName keepDependencies properties "
    "definition triggers disabled quietPeriod authToken concurrentBuild resumeBlocked",
    "hudson.model.FreeStyleProject": "actions description displayName keepDependencies properties scm canRoam "
    "disabled blockBuildWhenDownstreamBuilding blockBuildWhenUpstreamBuilding triggers concurrentBuild builders "
    "publishers buildWrappers assignedNode quietPeriod",
    "com.cloudbees.hudson.plugins.folder.Folder": "actions description displayName properties folderViews "
    "healthMetrics icon",
    "hudson.model.ParametersDefinitionProperty": "parameterDefinitions",
    "hudson.model.StringParameterDefinition": "name description defaultValue trim",
    "hudson.model.ChoiceParameterDefinition": "name description choices",
    "org.jenkinsci.plugins.workflow.job.properties.PipelineTriggersJobProperty": "triggers",
    "jenkins.triggers.ReverseBuildTrigger": "spec upstreamProjects threshold",
    "hudson.model.Result": "name ordinal color completeBuild",
    "jenkins.model.BuildDiscarderProperty": "strategy",
    "hudson.tasks.LogRotator": "daysToKeep numToKeep artifactDaysToKeep artifactNumToKeep removeLastBuild",
    "org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty": "abortPrevious",
    "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition": "scm scriptPath lightweight",
    "org.jenkinsci.plugins.workflow.cps.CpsFlowDefinition": "script sandbox",
    "hudson.plugins.git.GitSCM": "configVersion userRemoteConfigs branches doGenerateSubmoduleConfigurations "
    "submoduleCfg extensions gitTool browser",
    "hudson.plugins.git.UserRemoteConfig": "url credentialsId name refspec",
    "hudson.plugins.git.BranchSpec": "name",
    "hudson.model.ListView": "name description filterExecutors filterQueue properties jobNames jobFilters columns "
    "recurse includeRegex statusFilter",
}.items()}
# Fields whose value is an object of a fixed class (no class attribute needed).
FIELD_CLASSES = {"threshold": "hudson.model.Result"}
# Lists of objects, each element named by its class.
LISTS = {"properties", "triggers", "parameterDefinitions", "userRemoteConfigs", "branches"}
KNOWN_CLASSES = frozenset(SCHEMA) | {
    "org.jenkinsci.plugins.workflow.job.properties.DurabilityHintJobProperty",
    "com.cloudbees.hudson.plugins.folder.properties.FolderCredentialsProvider$FolderCredentialsProperty",
    # XStream writes a nested class's "$" as "_-": this is the element name of the folder's credentials store
    "com.cloudbees.hudson.plugins.folder.properties.FolderCredentialsProvider_-FolderCredentialsProperty",
    # folder-properties plugin: the folder's own settings (read by withFolderProperties)
    "com.mig82.folders.properties.FolderProperties", "com.mig82.folders.properties.StringProperty",
    # job properties of plugins the bakery does not know (rebuild, matrix-auth, throttle-concurrents)
    "com.sonyericsson.rebuild.RebuildSettings", "hudson.security.AuthorizationMatrixProperty",
    "hudson.plugins.throttleconcurrents.ThrottleJobProperty",
    "hudson.model.BooleanParameterDefinition", "hudson.triggers.TimerTrigger", "hudson.triggers.SCMTrigger",
}


def _drop_unreadable(el: ET.Element, cls: str | None, dropped: list[str]) -> None:
    """Remove what XStream would skip or drop when reading ``el`` (an object of class ``cls``)."""
    fields = SCHEMA.get(cls or "")
    for child in list(el):
        if fields is not None and child.tag not in fields:
            dropped.append(f"{cls}.{child.tag}")
            el.remove(child)
            continue
        if child.tag in LISTS:
            for entry in list(child):
                entry_cls = entry.get("class") or entry.tag
                if entry_cls not in KNOWN_CLASSES:
                    dropped.append(entry_cls)
                    child.remove(entry)
                else:
                    _drop_unreadable(entry, entry_cls, dropped)
        elif child.get("class") or child.tag in FIELD_CLASSES:
            _drop_unreadable(child, child.get("class") or FIELD_CLASSES[child.tag], dropped)


def jenkins_read(xml: str) -> tuple[str, list[str]]:
    """The config as Jenkins keeps it after reading ``xml`` (what it drops removed), and what was dropped.
    Raises _HttpError 500 for an unknown root class, as Jenkins' "Unable to read" does."""
    root = ET.fromstring(xml)
    cls = ROOT_CLASSES.get(root.tag, root.tag)
    if cls not in KNOWN_CLASSES and not _FQCN.match(cls):
        raise _oops(f"java.io.IOException: Unable to read: com.thoughtworks.xstream.mapper."
                    f"CannotResolveClassException: {root.tag}")
    dropped: list[str] = []
    _drop_unreadable(root, cls, dropped)
    return jenkins_serialize(ET.tostring(root, encoding="unicode")), dropped


def jenkins_serialize(xml: str) -> str:
    """Parse ``xml`` and write it back as Jenkins would store it. Raises ET.ParseError."""
    root = ET.fromstring(xml)
    _add_plugin_attributes(root, owner=None, is_root=True)
    ET.indent(root, space="  ")
    # Text is escaped (">" -> "&gt;"), so " />" can only be the end of an empty tag: XStream writes "<x/>".
    body = ET.tostring(root, encoding="unicode", short_empty_elements=True).replace(" />", "/>")
    # XStream escapes quotes in text too; ET does not. Harmless for parsers, visible to byte compares.
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + body + "\n"


def _element_class(el: ET.Element, is_root: bool) -> str | None:
    if "class" in el.attrib:
        return el.attrib["class"]
    if is_root and el.tag in ROOT_CLASSES:
        return ROOT_CLASSES[el.tag]
    if _FQCN.match(el.tag):
        return el.tag
    return None


def _add_plugin_attributes(el: ET.Element, owner: str | None, is_root: bool = False) -> None:
    cls = _element_class(el, is_root)
    if cls is not None and "reference" not in el.attrib:  # XStream back-references carry no plugin
        plugin = plugin_of(cls)
        if plugin and plugin != owner:
            el.set("plugin", plugin)
        owner = plugin
    for child in el:
        _add_plugin_attributes(child, owner)


def _class_of_config(xml: str) -> str:
    root = ET.fromstring(xml)
    return _element_class(root, True) or root.tag


def _description_of(xml: str) -> str:
    try:
        el = ET.fromstring(xml).find("description")
    except ET.ParseError:
        return ""
    return (el.text or "") if el is not None else ""


# ---------------------------------------------------------------------------------------------
# ?tree= parsing and filtering, as Jenkins' Stapler export does it.


def parse_tree(spec: str) -> dict[str, Any]:
    """``jobs[name,url,jobs[name]],views[name]`` -> {"jobs": {"name": None, ...}, "views": {...}}."""
    pos = 0

    def parse_list() -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(spec):
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(spec, pos)
            if not m:
                raise ValueError(f"bad tree spec at {pos}: {spec!r}")
            name = m.group(0)
            pos = m.end()
            sub: dict[str, Any] | None = None
            if pos < len(spec) and spec[pos] in "[{":
                if spec[pos] == "[":
                    pos += 1
                    sub = parse_list()
                    if pos >= len(spec) or spec[pos] != "]":
                        raise ValueError(f"unbalanced tree spec: {spec!r}")
                    pos += 1
                if pos < len(spec) and spec[pos] == "{":  # range like {0,10}: ignored
                    pos = spec.index("}", pos) + 1
            out[name] = sub
            if pos < len(spec) and spec[pos] == ",":
                pos += 1
                continue
            break
        return out

    result = parse_list()
    if pos != len(spec):
        raise ValueError(f"bad tree spec: {spec!r}")
    return result


def filter_tree(obj: Any, tree: dict[str, Any] | None) -> Any:
    if isinstance(obj, list):
        return [filter_tree(o, tree) for o in obj]
    if not isinstance(obj, dict):
        return obj
    out = {"_class": obj["_class"]} if "_class" in obj else {}
    for key, sub in (tree or {}).items():
        if key in obj:
            value = obj[key]
            if callable(value):
                value = value()
            if sub is None and isinstance(value, (dict, list)):
                # A nested object asked for without fields: Jenkins gives only its _class.
                out[key] = filter_tree(value, {})
            else:
                out[key] = filter_tree(value, sub)
    return out


class JenkinsDouble(LoopbackHTTPServer):
    """The double. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        readonly_users: dict[str, str] | None = None,
        version: str = JENKINS_VERSION,
        csrf: bool = True,
    ):
        self.version = version
        self.csrf = csrf
        self._tokens = dict(users if users is not None else {"admin": "admin-api-token"})
        self._readonly = dict(readonly_users or {})
        self._secret = secrets.token_bytes(16)
        self._sessions: set[str] = set()  # live HTTP sessions: Jetty keeps them server side
        self._lock = threading.RLock()
        self.root = _Node("root", "")
        self.root.views["all"] = jenkins_serialize(
            "<hudson.model.AllView><name>all</name><filterExecutors>false</filterExecutors>"
            "<filterQueue>false</filterQueue><properties class='hudson.model.View$PropertyList'/>"
            "</hudson.model.AllView>"
        )
        self.log: list[Request] = []
        self._faults: list[_Fault] = []
        self.crumb_issuer_status = 200  # set to e.g. 500 to break the crumb issuer
        self.reject_crumbs = False  # every POST fails as if the crumb header had been stripped
        self.latency = 0.0  # seconds added to every request (a remote Jenkins is never instant)
        self.queue: list[QueueItem] = []
        self.dropped: list[str] = []  # fields and classes Jenkins' XStream would have dropped on save
        self.exceptions: list[str] = []  # what Jenkins would have logged behind each "Oops!" page
        self.builds: dict[str, list[BuildRecord]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, port: int = 0) -> JenkinsDouble:
        """Serve on 127.0.0.1:``port`` (0: any free port, see ``url``) from a background thread."""
        handler = type("Handler", (_Handler,), {"double": self})
        self._serve(handler, name="jenkins-double", port=port)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    # -- state for tests ---------------------------------------------------------------------------

    def add_user(self, name: str, token: str, *, readonly: bool = False) -> None:
        (self._readonly if readonly else self._tokens)[name] = token

    def expire_sessions(self) -> None:
        """End every HTTP session, as Jenkins does after a session's idle timeout or a restart.

        A crumb is bound to its session (``DefaultCrumbIssuer`` hashes the session id since 2.176.2),
        so every crumb issued so far stops being valid; a client must ask the crumb issuer again.
        """
        with self._lock:
            self._sessions.clear()

    def reset(self) -> None:
        """Forget every job, folder and view and the request log."""
        with self._lock:
            self.root.items.clear()
            self.root.views = {k: v for k, v in self.root.views.items() if k == "all"}
            self.log.clear()
            self._faults.clear()
            self.crumb_issuer_status = 200
            self.reject_crumbs = False
            self.queue.clear()
            self.builds.clear()
            self.dropped.clear()
            self.exceptions.clear()

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def requests(self, method: str | None = None, path_contains: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and path_contains in r.path]

    def writes(self) -> list[Request]:
        """Every request that could change something (Jenkins changes state only on POST)."""
        return self.requests("POST")

    def fail_next(self, method: str, path_contains: str, status: int = 500, body: str = "", count: int = 1) -> None:
        """The next ``count`` matching requests get ``status`` (after auth, before doing anything). A 500
        without a ``body`` is Jenkins' "Oops!" page, as an exception in Jenkins renders it."""
        with self._lock:
            self._faults.append(_Fault(method, path_contains, status, body, count))

    def exists(self, full_name: str) -> bool:
        with self._lock:
            return self._find(full_name) is not None

    def config(self, full_name: str) -> str:
        """The config as Jenkins stores it (for a folder: with its views)."""
        with self._lock:
            node = self._find(full_name)
            if node is None:
                raise KeyError(full_name)
            return self._config_of(node)

    def view_config(self, parent: str, name: str) -> str:
        with self._lock:
            node = self._find(parent) if parent else self.root
            if node is None or name not in node.views:
                raise KeyError(f"{parent}/{name}")
            return node.views[name]

    def job_names(self) -> list[str]:
        """Full names of every item (jobs and folders), depth first."""
        out: list[str] = []

        def walk(node: _Node, prefix: str) -> None:
            for name, child in node.items.items():
                out.append(prefix + name)
                if child.is_group:
                    walk(child, prefix + name + "/")

        with self._lock:
            walk(self.root, "")
        return out

    def put_item(self, full_name: str, xml: str) -> None:
        """Create or replace an item directly, as if made in the web UI (not logged)."""
        with self._lock:
            parent, name = self._split(full_name)
            group = self._find(parent) if parent else self.root
            if group is None or not group.is_group:
                raise KeyError(f"no folder {parent!r}")
            stored = jenkins_serialize(xml)
            cls = _class_of_config(stored)
            if cls == FOLDER_CLASS:
                node = group.items.get(name) or _Node("folder", name)
                self._store_folder_config(node, stored)
                group.items[name] = node
            else:
                group.items[name] = _Node("job", name, stored)

    def put_folder(self, full_name: str, description: str = "") -> None:
        self.put_item(full_name, folder_xml(description))

    def ui_edit(self, full_name: str, edit: Callable[[str], str]) -> None:
        """Change an item's config as a person saving the configure page would (not logged)."""
        with self._lock:
            self.put_item(full_name, edit(self.config(full_name)))

    def simulate_build(self, full_name: str) -> None:
        """What a declarative Pipeline build leaves in its job's config.xml: tracker actions."""

        def add_actions(xml: str) -> str:
            root = ET.fromstring(xml)
            actions = root.find("actions")
            if actions is None:
                actions = ET.Element("actions")
                root.insert(0, actions)
            if actions.find("org.jenkinsci.plugins.pipeline.modeldefinition.actions.DeclarativeJobAction") is None:
                ET.SubElement(actions, "org.jenkinsci.plugins.pipeline.modeldefinition.actions.DeclarativeJobAction")
                tracker = ET.SubElement(
                    actions, "org.jenkinsci.plugins.pipeline.modeldefinition.actions.DeclarativeJobPropertyTrackerAction"
                )
                for tag in ("jobProperties", "triggers", "parameters", "options"):
                    ET.SubElement(tracker, tag)
            return ET.tostring(root, encoding="unicode")

        self.ui_edit(full_name, add_actions)

    # -- builds: queue, ReverseBuildTrigger, Replay ------------------------------------------------

    def schedule(self, full_name: str, parameters: dict[str, str] | None = None,
                 cause: dict[str, Any] | None = None) -> QueueItem:
        """Queue a build as ``ParameterizedJobMixIn.scheduleBuild2`` and ``Queue.schedule2`` do.

        Without parameters (ReverseBuildTrigger, timer, SCM) a parameterized job gets its defaults.
        An item of the same job already waiting in the queue with equal parameters absorbs the request
        (ParametersAction.shouldSchedule says no, CauseAction.foldIntoExisting adds the cause): no new
        build. Running builds never absorb anything.
        """
        with self._lock:
            node = self._find(full_name)
            if node is None or node.kind != "job":
                raise KeyError(f"no job {full_name!r}")
            definitions = _parameter_definitions(node.config)
            values = dict(definitions)
            values.update({k: v for k, v in (parameters or {}).items() if k in definitions})
            causes = [cause or {"_class": "hudson.model.Cause$UserIdCause"}]
            for item in self.queue:
                if item.job.lower() == full_name.lower() and item.parameters == values:
                    item.causes.extend(causes)
                    return item
            item = QueueItem(full_name, values, causes)
            self.queue.append(item)
            return item

    def start_next(self, full_name: str) -> BuildRecord | None:
        """The job's executor takes the oldest waiting item (one build at a time: no concurrent builds)."""
        with self._lock:
            if any(b.result is None for b in self.builds.get(full_name, [])):
                return None
            item = next((i for i in self.queue if i.job.lower() == full_name.lower()), None)
            if item is None:
                return None
            self.queue.remove(item)
            history = self.builds.setdefault(full_name, [])
            build = BuildRecord(full_name, len(history) + 1, item.parameters, item.causes, time.time())
            history.append(build)
            return build

    def finish(self, build: BuildRecord, result: str = "SUCCESS", env_overrides: dict[str, str] | None = None) -> None:
        """End a build; jobs whose ReverseBuildTrigger watches it (threshold SUCCESS) are queued without
        parameters, each with an UpstreamCause naming this build."""
        with self._lock:
            build.result = result
            build.env_overrides = dict(env_overrides or {})
            if result != "SUCCESS":
                return
            for downstream in self._watchers(build.job):
                self.schedule(downstream, None, {"_class": "hudson.model.Cause$UpstreamCause",
                                                 "upstreamProject": build.job, "upstreamBuild": build.number})

    def replay(self, build: BuildRecord) -> QueueItem:
        """workflow-cps ReplayAction: a new build with the same parameters; its causes are the user and
        the replay, NOT the original build's causes (an upstream cause is lost)."""
        with self._lock:
            item = QueueItem(build.job, dict(build.parameters),
                             [{"_class": "hudson.model.Cause$UserIdCause"},
                              {"_class": "org.jenkinsci.plugins.workflow.cps.replay.ReplayCause",
                               "originalNumber": build.number}])
            self.queue.append(item)
            return item

    def upstream_builds(self, build: BuildRecord) -> list[dict[str, Any]]:
        """The build's UpstreamCauses as the pipeline harness takes them (tests/support/harness.groovy): kind, number,
        parameters, env overrides and start time of each upstream build."""
        found = []
        for cause in build.causes:
            if cause.get("_class") != "hudson.model.Cause$UpstreamCause":
                continue
            up = self.builds[cause["upstreamProject"]][int(cause["upstreamBuild"]) - 1]
            kind = "pipeline" if _class_of_config(self.config(up.job)).endswith("WorkflowJob") else "freestyle"
            found.append({"fullProjectName": up.job, "number": up.number, "kind": kind,
                          "parameters": up.parameters, "envOverrides": up.env_overrides,
                          "environment": {"JOB_NAME": up.job, "BUILD_NUMBER": str(up.number)},
                          "startTimeInMillis": int(up.started * 1000), "result": up.result})
        return found

    def get_item(self, name: str, folder: str = "") -> str | None:
        """The full name of the item ``name`` names, seen from ``folder``, as core's
        ``Jenkins.getItem(String pathName, ItemGroup context)`` resolves it (and with it
        ReverseBuildTrigger through ``Items.fromNameList``, and the ``build`` step), or None:

        - a leading ``/``: ``getItemByFullName`` (the name from the top level);
        - else token by token (``StringTokenizer``: empty tokens skipped) from the folder: ``.`` stays,
          ``..`` goes to the parent, and from the top level gives up; a name is looked up in the group
          so far (case-insensitively), a missing one gives up; a name under a job gives None at once;
        - given up (or ending on the top level itself): the classic interpretation,
          ``getItemByFullName(pathName)``, i.e. the name as a full name from the top level. So
          ``deploy-release`` seen from folder ``amis`` is the top-level ``deploy-release`` when the folder
          has none; ``../..`` above the top level finds nothing (``..`` is no item name).
        """
        with self._lock:
            if name.startswith("/"):
                return self._by_full_name(name)
            node: _Node | None = self._find(folder) if folder else self.root
            path = [p for p in folder.split("/") if p]
            for token in [t for t in name.split("/") if t]:
                if token == ".":
                    continue
                if token == "..":
                    if node is not None and node is not self.root:
                        path.pop()
                        node = self._find("/".join(path)) if path else self.root
                        continue
                    node = None
                    break
                assert node is not None
                if not node.is_group:
                    return None
                child = node.items.get(token)
                if child is None:
                    node = None
                    break
                node = child
                path.append(child.name)
            if node is not None and node is not self.root:
                return "/".join(path)
            return self._by_full_name(name)

    def _by_full_name(self, name: str) -> str | None:
        """``Jenkins.getItemByFullName``: every token a name, from the top level (``..`` is no name)."""
        node = self.root
        path = []
        for token in [t for t in name.split("/") if t]:
            child = node.items.get(token) if node.is_group else None
            if child is None:
                return None
            node = child
            path.append(child.name)
        return "/".join(path) if path else None

    def _watchers(self, upstream: str) -> list[str]:
        """Jobs with a ReverseBuildTrigger naming ``upstream`` (resolved from their folder as Jenkins does)."""
        watchers = []
        for name in self.job_names():
            node = self._find(name)
            if node is None or node.kind != "job":
                continue
            spec = ET.fromstring(node.config).findtext(".//jenkins.triggers.ReverseBuildTrigger/upstreamProjects")
            folder = name.rpartition("/")[0]
            for entry in (spec or "").split(","):
                found = self.get_item(entry.strip(), folder) if entry.strip() else None
                if found is not None and found.lower() == upstream.lower():
                    watchers.append(name)
        return watchers

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _split(full_name: str) -> tuple[str, str]:
        parent, _, name = full_name.rpartition("/")
        return parent, name

    def _find(self, full_name: str) -> _Node | None:
        node = self.root
        for part in full_name.split("/"):
            if not node.is_group or part not in node.items:
                return None
            node = node.items[part]
        return node

    def _config_of(self, node: _Node) -> str:
        if node.kind != "folder":
            return node.config
        root = ET.fromstring(node.config)
        holder = root.find("folderViews")
        if holder is None:
            holder = ET.SubElement(root, "folderViews", {"class": f"{FOLDER_CLASS[:-6]}views.DefaultFolderViewHolder"})
        views = holder.find("views")
        if views is None:
            views = ET.SubElement(holder, "views")
        for child in list(views):
            views.remove(child)
        for xml in node.views.values():
            views.append(ET.fromstring(xml))
        return jenkins_serialize(ET.tostring(root, encoding="unicode"))

    def _store_folder_config(self, node: _Node, stored: str) -> None:
        """A folder's views are part of its config.xml: posting the config replaces them."""
        root = ET.fromstring(stored)
        views = root.find("folderViews/views")
        node.views = {}
        if views is not None:
            for view in list(views):
                name = view.findtext("name") or "All"
                node.views[name] = jenkins_serialize(ET.tostring(view, encoding="unicode"))
                views.remove(view)
        if not node.views:
            node.views["All"] = jenkins_serialize(_ALL_VIEW)
        node.config = jenkins_serialize(ET.tostring(root, encoding="unicode"))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.path_contains in path and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _crumb(self, user: str, session: str) -> str:
        return hmac.new(self._secret, f"{user}\0{session}".encode(), hashlib.sha256).hexdigest()


_ALL_VIEW = (
    "<hudson.model.AllView><owner class='com.cloudbees.hudson.plugins.folder.Folder' reference='../../../..'/>"
    "<name>All</name><filterExecutors>false</filterExecutors><filterQueue>false</filterQueue>"
    "<properties class='hudson.model.View$PropertyList'/></hudson.model.AllView>"
)


def deploy_job_xml(description: str = "deploys a release of the application") -> str:
    """A freestyle deploy job with a RELEASE parameter: the upstream job of the example catalogue, as an
    estate that runs the bakery already has it."""
    return ("<?xml version='1.1' encoding='UTF-8'?>\n<project><description>" + html.escape(description) +
            "</description><keepDependencies>false</keepDependencies><properties>"
            "<hudson.model.ParametersDefinitionProperty><parameterDefinitions>"
            "<hudson.model.StringParameterDefinition><name>RELEASE</name><defaultValue></defaultValue>"
            "<trim>true</trim></hudson.model.StringParameterDefinition></parameterDefinitions>"
            "</hudson.model.ParametersDefinitionProperty></properties><canRoam>true</canRoam>"
            "<disabled>false</disabled><triggers/><concurrentBuild>false</concurrentBuild><builders/>"
            "<publishers/><buildWrappers/></project>\n")


def folder_xml(description: str = "") -> str:
    """A folder config as Jenkins writes a new folder (used for form-mode creation and by tests)."""
    root = ET.Element("com.cloudbees.hudson.plugins.folder.Folder")
    ET.SubElement(root, "actions")
    ET.SubElement(root, "description").text = description
    ET.SubElement(root, "properties")
    holder = ET.SubElement(root, "folderViews", {"class": "com.cloudbees.hudson.plugins.folder.views.DefaultFolderViewHolder"})
    views = ET.SubElement(holder, "views")
    views.append(ET.fromstring(_ALL_VIEW))
    ET.SubElement(holder, "tabBar", {"class": "hudson.views.DefaultViewsTabBar"})
    ET.SubElement(root, "healthMetrics")
    ET.SubElement(root, "icon", {"class": "com.cloudbees.hudson.plugins.folder.icons.StockFolderIcon"})
    return ET.tostring(root, encoding="unicode")


Response = tuple[int, str, bytes, dict[str, str]]  # status, content type, body, headers


@dataclass(frozen=True)
class _Call:
    """One request, resolved: the item (or root) it addresses, the view if any, and the URL tail."""

    method: str
    node: _Node
    item_path: list[str]
    view: str | None
    rest: str
    base: str
    query: dict[str, list[str]]
    body: bytes
    user: str | None


class _HttpError(Exception):
    def __init__(self, status: int, body: str = "", headers: dict[str, str] | None = None, exception: str = ""):
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.exception = exception  # what Jenkins would write to its log (the double keeps it in .exceptions)


def _oops(exception: str) -> _HttpError:
    """An exception Jenkins did not turn into a Failure: HTTP 500 and core's "Oops!" page
    (jenkins/model/Jenkins/oops.jelly), which says only that a problem occurred and gives a logging id
    to find the stack trace in the Jenkins log. No X-Error header, no exception text on the page."""
    logging_id = secrets.token_hex(16)
    page = ("<!DOCTYPE html><html><head><title>Jenkins</title></head><body><div id=\"main-panel\">"
            "<h1>Oops!</h1><p>A problem occurred while processing the request.</p>"
            f"<p>Logging ID={logging_id}</p></div></body></html>")
    return _HttpError(500, page, exception=exception)


def _failure(message: str) -> _HttpError:
    """A refusal as Jenkins answers it (hudson.model.Failure rendered by the "error" view): HTTP 400, a
    generic HTML page titled "Jenkins", and the reason in the X-Error header."""
    page = ("<!DOCTYPE html><html><head><title>Jenkins</title></head><body><div id=\"main-panel\">"
            f"<h1>Error</h1><p>{html.escape(message)}</p></div></body></html>")
    return _HttpError(400, page, {"X-Error": message})


class _Handler(BaseHTTPRequestHandler):
    double: JenkinsDouble
    protocol_version = "HTTP/1.1"
    server_version = "Jetty(10.0.20)"

    def setup(self) -> None:
        super().setup()
        # As Jetty does: without TCP_NODELAY, a response written as headers then body waits for the
        # client's delayed ACK (40 ms) on every keep-alive request.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log is self.double.log; stderr stays quiet in tests

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    # -- plumbing ----------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        d = self.double
        split = urlsplit(self.path)
        path, query = split.path, split.query
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._set_cookie: str | None = None
        user: str | None = None
        status = 500
        try:
            if d.latency:
                time.sleep(d.latency)
            user = self._authenticate()
            fault = d._take_fault(method, path)
            if fault is not None:
                if fault.status == 500 and not fault.body:
                    raise _oops("injected")
                raise _HttpError(fault.status, fault.body or f"injected HTTP {fault.status}")
            status, ctype, payload, headers = self._route(method, path, parse_qs(query), body, user)
        except _HttpError as err:
            status, ctype, payload, headers = err.status, "text/html;charset=utf-8", err.body.encode(), err.headers
            if err.exception:
                with d._lock:
                    d.exceptions.append(err.exception)
        except Exception as exc:  # a bug in the double must show up as a 500, like Jenkins' oops page
            status, ctype, payload, headers = 500, "text/plain;charset=utf-8", f"double error: {exc!r}".encode(), {}
        with d._lock:
            d.log.append(Request(method, unquote(path), query, status, user))
        self.send_response(status)
        self.send_header("X-Jenkins", d.version)
        self.send_header("X-Jenkins-Session", "a1b2c3d4")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if self._set_cookie:
            self.send_header("Set-Cookie", self._set_cookie)
        for k, v in headers.items():
            # Jetty writes header values as ISO-8859-1: what does not fit becomes "?"
            self.send_header(k, v.encode("latin-1", "replace").decode("latin-1"))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _authenticate(self) -> str | None:
        d = self.double
        header = self.headers.get("Authorization", "")
        if not header:
            raise _HttpError(
                403,
                "<html><body>Authentication required</body></html>",
                {"X-You-Are-Authenticated-As": "anonymous", "X-Required-Permission": "hudson.model.Hudson.Read"},
            )
        try:
            scheme, _, value = header.partition(" ")
            user, _, token = base64.b64decode(value).decode("utf-8").partition(":")
            if scheme.lower() != "basic":
                raise ValueError(scheme)
        except Exception:
            raise _HttpError(401, "bad Authorization header", {"WWW-Authenticate": 'Basic realm="Jenkins"'}) from None
        expected = d._tokens.get(user) or d._readonly.get(user)
        if expected is None or not hmac.compare_digest(expected, token):
            raise _HttpError(
                401,
                f"<html><body>Invalid password/token for user: {user}</body></html>",
                {"WWW-Authenticate": 'Basic realm="Jenkins"'},
            )
        return user

    def _session(self) -> str:
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        for key, morsel in cookie.items():
            if key.startswith("JSESSIONID.") and morsel.value in self.double._sessions:
                return morsel.value
        # No session, or one that has ended: Jetty starts a new one.
        session = secrets.token_hex(12)
        with self.double._lock:
            self.double._sessions.add(session)
        self._set_cookie = f"JSESSIONID.a1b2c3d4={session}; Path=/; HttpOnly"
        return session

    def _check_write(self, user: str | None) -> None:
        d = self.double
        if user in d._readonly:
            raise _HttpError(403, f"{user} is missing the Job/Configure permission")
        if not d.csrf:
            return
        crumb = self.headers.get(CRUMB_FIELD, "")
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        with d._lock:
            sessions = [m.value for k, m in cookie.items() if k.startswith("JSESSIONID.") and m.value in d._sessions]
        valid = any(hmac.compare_digest(d._crumb(user or "", s), crumb) for s in sessions)
        if d.reject_crumbs or not valid:
            raise _HttpError(
                403,
                "<html><head><title>Error 403 No valid crumb was included in the request</title></head>"
                "<body><h2>HTTP ERROR 403 No valid crumb was included in the request</h2></body></html>",
            )

    # -- routing ---------------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, user: str | None
    ) -> Response:
        call = self._locate(method, path, query, body, user)
        if method == "POST":
            self._check_write(user)
        route = ROUTES.get(call.rest)
        if route is None or (route.root_only and call.node is not self.double.root):
            raise _HttpError(404, "Not Found")
        if route.methods and method not in route.methods:
            raise _HttpError(route.wrong_method, "Method Not Allowed" if route.wrong_method == 405 else "Not Found")
        return route.handler(self, call)

    def _locate(self, method: str, path: str, query: dict[str, list[str]], body: bytes, user: str | None) -> _Call:
        """Resolve ``job/NAME/job/NAME/.../view/NAME/REST`` from the root (404 for a missing item or view)."""
        d = self.double
        parts = [unquote(p) for p in path.split("/") if p]
        node = d.root
        item_path: list[str] = []
        while len(parts) >= 2 and parts[0] == "job":
            with d._lock:
                child = node.items.get(parts[1]) if node.is_group else None
            if child is None:
                raise _HttpError(404, "Not Found")
            node = child
            item_path.append(parts[1])
            parts = parts[2:]
        view: str | None = None
        if len(parts) >= 2 and parts[0] == "view":
            if not node.is_group or parts[1] not in node.views:
                raise _HttpError(404, "Not Found")
            view = parts[1]
            parts = parts[2:]
        base = d.url + "".join(f"job/{quote(p)}/" for p in item_path)
        return _Call(method, node, item_path, view, "/".join(parts), base, query, body, user)

    # -- the routes (ROUTES below maps each URL tail to one of these) ------------------------------

    def _crumb_issuer(self, call: _Call) -> Response:
        d = self.double
        if d.crumb_issuer_status != 200:
            raise _HttpError(d.crumb_issuer_status, "crumb issuer failed")
        crumb = d._crumb(call.user or "", self._session())
        return self._json(
            {"_class": "hudson.security.csrf.DefaultCrumbIssuer", "crumb": crumb, "crumbRequestField": CRUMB_FIELD}
        )

    def _api_json(self, call: _Call) -> Response:
        if call.view is not None:
            obj = self._view_json(call.node, call.view, call.base)
        else:
            obj = self._node_json(call.node, call.base)
        return self._json(self._shape(obj, call.query))

    def _plugin_manager(self, call: _Call) -> Response:
        plugins = [
            {"shortName": p.split("@")[0], "version": p.split("@")[1], "longName": p.split("@")[0], "active": True,
             "enabled": True, "hasUpdate": False, "pinned": False, "bundled": False, "deleted": False,
             "downgradable": False, "supportsDynamicLoad": "MAYBE", "url": "", "dependencies": []}
            for p in PLUGINS.values()
        ]
        return self._json({"_class": "hudson.LocalPluginManager", "plugins": plugins})

    def _me(self, call: _Call) -> Response:
        return self._json({"_class": "hudson.model.User", "id": call.user, "fullName": call.user})

    def _create_item_route(self, call: _Call) -> Response:
        return self._create_item(call.node, call.item_path, call.query, call.body)

    def _create_view_route(self, call: _Call) -> Response:
        return self._create_view(call.node, call.query, call.body)

    def _config_route(self, call: _Call) -> Response:
        if call.view is not None:
            return self._view_config(call.node, call.view, call.method, call.body)
        if call.node is self.double.root:
            raise _HttpError(404, "Not Found")
        return self._item_config(call.node, call.method, call.body)

    def _do_delete(self, call: _Call) -> Response:
        d = self.double
        parent_url = d.url + "".join(f"job/{quote(p)}/" for p in call.item_path[:-1])
        with d._lock:
            if call.view is not None:
                del call.node.views[call.view]
                return 302, "text/html", b"", {"Location": call.base}
            if call.node is d.root:
                raise _HttpError(405, "Method Not Allowed")
            parent = d._find("/".join(call.item_path[:-1])) if len(call.item_path) > 1 else d.root
            assert parent is not None
            del parent.items[call.item_path[-1]]
        return 302, "text/html", b"", {"Location": parent_url}

    def _home(self, call: _Call) -> Response:
        return 200, "text/html;charset=utf-8", b"<html><body>Jenkins</body></html>", {}

    def _json(self, obj: Any) -> Response:
        return 200, "application/json;charset=utf-8", json.dumps(obj).encode(), {}

    def _shape(self, obj: dict[str, Any], query: dict[str, list[str]]) -> Any:
        if "tree" in query:
            try:
                return filter_tree(obj, parse_tree(query["tree"][0]))
            except ValueError as exc:
                raise _HttpError(400, str(exc)) from None
        # depth=0: the object's own fields; nested objects reduced to their summary fields.
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if callable(value):
                value = value()
            if isinstance(value, list):
                value = [{k: v for k, v in o.items() if k in ("_class", "name", "url", "color")} for o in value]
            out[key] = value
        return out

    def _node_json(self, node: _Node, url: str) -> dict[str, Any]:
        d = self.double
        with d._lock:
            if node is d.root:
                obj: dict[str, Any] = {
                    "_class": "hudson.model.Hudson", "description": None, "mode": "NORMAL", "nodeName": "",
                    "nodeDescription": "the Jenkins controller", "numExecutors": 0, "quietingDown": False,
                    "useCrumbs": d.csrf, "useSecurity": True, "url": d.url,
                }
            else:
                cls = FOLDER_CLASS if node.kind == "folder" else _class_of_config(node.config)
                obj = {
                    "_class": cls, "name": node.name, "url": url, "description": _description_of(node.config),
                    "displayName": node.name, "fullName": url[len(d.url):].replace("job/", "").strip("/"),
                }
                if node.kind == "job":
                    obj.update({"color": "notbuilt", "buildable": True, "inQueue": False, "nextBuildNumber": 1})
            if node.is_group:
                children = list(node.items.values())
                # Lazily expanded, so a deep tree query costs only what it asks for.
                obj["jobs"] = lambda: [self._node_json(c, f"{url}job/{quote(c.name)}/") for c in children]
                views = list(node.views)
                obj["views"] = lambda: [self._view_json(node, v, url) for v in views]
        return obj

    def _view_json(self, node: _Node, name: str, url: str) -> dict[str, Any]:
        xml = node.views[name]
        root = ET.fromstring(xml)
        return {
            "_class": _element_class(root, True) or root.tag,
            "name": name,
            "url": f"{url}view/{quote(name)}/",
            "description": root.findtext("description"),
        }

    def _create_item(
        self, group: _Node, item_path: list[str], query: dict[str, list[str]], body: bytes
    ) -> Response:
        """``createItem?name=N``: ``mode=`` the folder class makes an empty folder, else the XML body is the item."""
        if not group.is_group:
            raise _HttpError(404, "Not Found")
        ctype = self.headers.get("Content-Type", "")
        form = parse_qs(body.decode("utf-8", "replace")) if "form-urlencoded" in ctype else {}
        name = (query.get("name") or form.get("name") or [""])[0]
        mode = (query.get("mode") or form.get("mode") or [""])[0]
        if not name or _NAME_BAD.search(name) or name in (".", ".."):
            raise _failure(f"\u2018{name}\u2019 is an unsafe character" if name else "No name is specified")
        with self.double._lock:
            if name in group.items:
                raise _failure(f"A job already exists with the name \u2018{name}\u2019")
            if mode == FOLDER_CLASS:
                return self._create_empty_folder(group, item_path, name)
            if mode:
                raise _failure(f"No such job type: {mode}")
            if "xml" not in ctype:
                raise _HttpError(400, "No mode given and no XML body")
            group.items[name] = self._item_from_xml(name, body)
        return 200, "text/html;charset=utf-8", b"", {}

    def _create_empty_folder(self, group: _Node, item_path: list[str], name: str) -> Response:
        d = self.double
        node = _Node("folder", name)
        d._store_folder_config(node, jenkins_serialize(folder_xml()))
        group.items[name] = node
        location = d.url + "".join(f"job/{quote(p)}/" for p in [*item_path, name])
        return 302, "text/html", b"", {"Location": location}

    def _item_from_xml(self, name: str, body: bytes) -> _Node:
        d = self.double
        try:
            stored, dropped = jenkins_read(body.decode("utf-8"))
        except (ET.ParseError, UnicodeDecodeError) as exc:
            raise _oops(f"java.io.IOException: Failed to parse XML for {name}: {exc}") from None
        d.dropped.extend(dropped)
        if _class_of_config(stored) != FOLDER_CLASS:
            return _Node("job", name, stored)
        node = _Node("folder", name)
        d._store_folder_config(node, stored)
        return node

    def _item_config(self, node: _Node, method: str, body: bytes) -> Response:
        d = self.double
        if method == "GET":
            with d._lock:
                return 200, "application/xml;charset=UTF-8", d._config_of(node).encode("utf-8"), {}
        try:
            stored, dropped = jenkins_read(body.decode("utf-8"))
        except (ET.ParseError, UnicodeDecodeError) as exc:
            raise _oops(f"java.io.IOException: Unable to read config.xml: {exc}") from None
        d.dropped.extend(dropped)
        with d._lock:
            old_cls = FOLDER_CLASS if node.kind == "folder" else _class_of_config(node.config)
            new_cls = _class_of_config(stored)
            if new_cls != old_cls:
                raise _oops(f"java.io.IOException: Expecting class {old_cls} but got {new_cls} instead")
            if node.kind == "folder":
                d._store_folder_config(node, stored)
            else:
                node.config = stored
        return 200, "text/html;charset=utf-8", b"", {}

    def _create_view(self, group: _Node, query: dict[str, list[str]], body: bytes) -> Response:
        d = self.double
        name = (query.get("name") or [""])[0]
        if not group.is_group:
            raise _HttpError(404, "Not Found")
        if not name or _NAME_BAD.search(name):
            raise _HttpError(400, f"Unsafe or missing view name: {name!r}")
        try:
            root = ET.fromstring(body.decode("utf-8"))
        except (ET.ParseError, UnicodeDecodeError) as exc:
            raise _HttpError(400, f"Failed to parse view XML: {exc}") from None
        with d._lock:
            if name in group.views:
                raise _failure(f"A view already exists with the name \u2018{name}\u2019")
            name_el = root.find("name")
            if name_el is None:
                name_el = ET.SubElement(root, "name")
            name_el.text = name  # Jenkins names the view from the query, whatever the XML says
            group.views[name] = jenkins_serialize(ET.tostring(root, encoding="unicode"))
        return 200, "text/html;charset=utf-8", b"", {}

    def _view_config(self, group: _Node, name: str, method: str, body: bytes) -> Response:
        d = self.double
        with d._lock:
            if method == "GET":
                return 200, "application/xml;charset=UTF-8", group.views[name].encode("utf-8"), {}
            try:
                root = ET.fromstring(body.decode("utf-8"))
            except (ET.ParseError, UnicodeDecodeError) as exc:
                raise _oops(f"java.io.IOException: Unable to read view config: {exc}") from None
            name_el = root.find("name")
            if name_el is None:
                name_el = ET.SubElement(root, "name")
            name_el.text = name
            group.views[name] = jenkins_serialize(ET.tostring(root, encoding="unicode"))
        return 200, "text/html;charset=utf-8", b"", {}


@dataclass(frozen=True)
class _Route:
    handler: Callable[[_Handler, _Call], Response]
    methods: frozenset[str] = frozenset()  # empty: any method
    root_only: bool = False
    wrong_method: int = 404  # what another method gets (Stapler: 404 for a web method it has not; 405 for api)


ROUTES: dict[str, _Route] = {
    "crumbIssuer/api/json": _Route(_Handler._crumb_issuer, frozenset({"GET"}), root_only=True),
    "api/json": _Route(_Handler._api_json, frozenset({"GET"}), wrong_method=405),
    "api/json/": _Route(_Handler._api_json, frozenset({"GET"}), wrong_method=405),
    "pluginManager/api/json": _Route(_Handler._plugin_manager, root_only=True),
    "me/api/json": _Route(_Handler._me, root_only=True),
    "createItem": _Route(_Handler._create_item_route, frozenset({"POST"})),
    "createView": _Route(_Handler._create_view_route, frozenset({"POST"})),
    "config.xml": _Route(_Handler._config_route),
    "doDelete": _Route(_Handler._do_delete, frozenset({"POST"})),
    "": _Route(_Handler._home, frozenset({"GET", "HEAD"})),
}


def _serve_forever() -> None:
    """``python devstack/jenkins_double.py [--port N] [--user U] [--token T]``: a double to poke at by hand."""
    import argparse

    ap = argparse.ArgumentParser(description="Run the Jenkins double on 127.0.0.1 until Ctrl-C.")
    ap.add_argument("--port", type=int, default=0, help="default: any free port")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--token", default="admin-api-token")
    args = ap.parse_args()
    double = JenkinsDouble({args.user: args.token}).start(args.port)
    print(f"Jenkins double at {double.url} (user {args.user}, token {args.token}); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()


if __name__ == "__main__":
    _serve_forever()
