"""The one place that talks to Jenkins (through python-jenkins): ``JenkinsManager``.

Every Jenkins call of generate-jobs goes through this class, which turns python-jenkins' and
requests' exceptions into ``JenkinsError`` with a message a person can act on: Jenkins unreachable,
credentials refused (401), not allowed (403), anonymous access refused, CSRF crumb problems, a
missing folder. Messages name the Jenkins URL without credentials and never contain the token.

Requests are kept to what a sync needs: one listing of the target folder (with descriptions, so the
managed marker of every job is known without fetching its config), one GET of config.xml per managed
job that exists (the only way to see an edit made in the web UI), a crumb only when something is to
be changed, and one POST per create, update or delete, made directly rather than through python-jenkins' helpers that add existence checks
(two extra GETs per create) the listing has already answered.
"""

from __future__ import annotations

import html
import json
import re
import threading
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import jenkins
import requests

from ..errors import BakeryError

DEFAULT_TIMEOUT = 30.0
XML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
LISTING_TREE = "_class,description,jobs[name,_class,description,jobs[name]{0,1}],views[name,_class,description]"


class JenkinsError(BakeryError):
    """A Jenkins request failed. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class NotFound(JenkinsError):
    """HTTP 404: the item (or the folder it should be in) does not exist."""


def display_url(url: str) -> str:
    """The URL without any user:password@ part, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def folder_url(parent: str) -> str:
    """``a/b`` -> ``job/a/job/b/`` (relative to the Jenkins root)."""
    return "".join(f"job/{quote(p, safe='')}/" for p in parent.split("/") if p)


class JenkinsManager:
    """python-jenkins behind a small API of the operations generate-jobs needs.

    Safe to use from several threads: each thread gets its own python-jenkins client (its own HTTP
    session and crumb, which Jenkins binds to the session), so nothing is shared between them.
    """

    def __init__(self, url: str, user: str | None, token: str | None, *, timeout: float = DEFAULT_TIMEOUT):
        self.url = url if url.endswith("/") else url + "/"
        self.user = user
        self._token = token
        self.timeout = timeout
        self.shown_url = display_url(self.url)
        self._local = threading.local()

    # -- plumbing ----------------------------------------------------------------------------------

    def _client(self) -> jenkins.Jenkins:
        client = getattr(self._local, "client", None)
        if client is None:
            client = jenkins.Jenkins(self.url, self.user, self._token, timeout=self.timeout)
            self._local.client = client
        return client

    def _open(self, method: str, path: str, what: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> str:
        client = self._client()
        req = requests.Request(method, self.url + path, data=data, headers=headers or {})
        # Jenkins wants a crumb only on requests that change something; reads go without one, so
        # a sync with nothing to change never asks the crumb issuer.
        if method == "GET":
            return self._call(what, lambda: client.jenkins_open(req, add_crumb=False))
        try:
            return self._call(what, lambda: client.jenkins_open(req, add_crumb=True))
        except JenkinsError as exc:
            if exc.status != 403 or "CSRF crumb" not in str(exc):
                raise
        # Jenkins binds a crumb to the HTTP session, and sessions end (idle timeout, a restart of the
        # controller): a refused crumb means nothing was done, so ask for a new one once and resend.
        client.crumb = None
        client._session.cookies.clear()
        return self._call(what, lambda: client.jenkins_open(req, add_crumb=True))

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except jenkins.NotFoundException:
            raise NotFound(f"{what}: not found on Jenkins at {self.shown_url} (HTTP 404)", 404) from None
        except jenkins.TimeoutException:
            raise JenkinsError(
                f"{what}: Jenkins at {self.shown_url} did not answer within {self.timeout:g} s", None
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise JenkinsError(
                f"cannot reach Jenkins at {self.shown_url} ({_reason(exc)}): check --jenkins-url or "
                "JENKINS_URL and that Jenkins is running",
                None,
            ) from None
        except requests.exceptions.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else None
            reason = response.headers.get("X-Error") if response is not None else None
            raise self._http_error(what, status, reason or (response.text if response is not None else ""),
                                   explained=bool(reason)) from None
        except jenkins.JenkinsException as exc:
            text = str(exc)
            m = re.search(r"\[(\d{3})\]", text)
            status = int(m.group(1)) if m else None
            body = text.split("\n", 1)[1] if "\n" in text else ""
            raise self._http_error(what, status, body if status else text) from None

    def _http_error(self, what: str, status: int | None, body: str, *, explained: bool = False) -> JenkinsError:
        """``explained``: Jenkins gave its reason (X-Error, a ``Failure``); else ``body`` is its page."""
        detail = self._redact(_first_line(body))
        if status == 401:
            return JenkinsError(
                f"Jenkins at {self.shown_url} refused the credentials of user {self.user!r} (HTTP 401): "
                "check JENKINS_USER and JENKINS_API_TOKEN (or --user/--token); the token is made on the "
                "user's Security page in Jenkins",
                401,
            )
        if status == 403 and "crumb" in body.lower():
            return JenkinsError(
                f"{what}: Jenkins at {self.shown_url} refused the request for want of a valid CSRF crumb "
                f"(HTTP 403: {detail}); a proxy in between may be dropping the Jenkins-Crumb header or the "
                "session cookie",
                403,
            )
        if status == 403 and not self.user:
            return JenkinsError(
                f"Jenkins at {self.shown_url} does not allow anonymous access (HTTP 403): set JENKINS_USER "
                "and JENKINS_API_TOKEN (or --user/--token)",
                403,
            )
        if status == 403:
            return JenkinsError(
                f"{what}: user {self.user!r} is not allowed to do this on Jenkins at {self.shown_url} "
                f"(HTTP 403: {detail}); it needs Job/Create, Job/Configure, Job/Delete and View/Configure "
                "on the folder",
                403,
            )
        if status == 500 and not explained:
            # An exception inside Jenkins: its "Oops!" page says nothing but a logging id; the stack
            # trace is in the Jenkins log.
            m = re.search(r"Logging ID=([0-9A-Za-z-]+)", body)
            logged = f" (Logging ID={m.group(1)})" if m else ""
            return JenkinsError(f"{what}: Jenkins at {self.shown_url} failed (HTTP 500) \u2014 see its log{logged}", 500)
        shown = f"HTTP {status}" if status else "error"
        return JenkinsError(f"{what}: Jenkins at {self.shown_url} answered {shown}: {detail}", status)

    def _redact(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return text

    # -- reads -------------------------------------------------------------------------------------

    def check_crumb(self) -> None:
        """Get a CSRF crumb (one request), before the first change.

        Done once before any write so that a broken crumb issuer (or credentials that only fail
        there) gives one clear message, and nothing half-done, instead of one failure per job.
        """
        client = self._client()
        probe = requests.Request("GET", self.url)
        try:
            self._call("get a CSRF crumb", lambda: client.maybe_add_crumb(probe))
        except JenkinsError as exc:
            if exc.status in (401,) or (exc.status == 403 and not self.user) or exc.status is None:
                raise
            raise JenkinsError(
                f"could not get a CSRF crumb from {self.shown_url}crumbIssuer/api/json "
                f"(HTTP {exc.status}): Jenkins must issue crumbs to this user for any change to be made",
                exc.status,
            ) from None

    def list_folder(self, path: str) -> dict[str, Any] | None:
        """``api/json`` of a folder ("" = the top level): its jobs and views with their descriptions.

        None when there is no such item. One request, whatever the number of jobs.
        """
        where = f"folder {path!r}" if path else "the top level"
        try:
            text = self._open("GET", f"{folder_url(path)}api/json?tree={quote(LISTING_TREE, safe=',[]{}_')}", f"list {where}")
        except NotFound:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise JenkinsError(f"list {where}: Jenkins at {self.shown_url} did not answer with JSON") from None

    def get_config(self, full_name: str) -> str:
        parent, _, name = full_name.rpartition("/")
        return self._open("GET", f"{folder_url(parent)}job/{quote(name, safe='')}/config.xml", f"read {full_name}")

    def get_view_config(self, parent: str, name: str) -> str:
        return self._open("GET", f"{folder_url(parent)}view/{quote(name, safe='')}/config.xml", f"read view {name}")

    # -- writes ------------------------------------------------------------------------------------

    def create(self, parent: str, name: str, xml: str) -> None:
        """createItem with the config as body (jobs and folders alike)."""
        what = f"create {parent + '/' if parent else ''}{name}"
        try:
            self._open("POST", f"{folder_url(parent)}createItem?name={quote(name, safe='')}", what,
                       xml.encode("utf-8"), XML_HEADERS)
        except NotFound:
            raise NotFound(f"{what}: folder {parent!r} does not exist on Jenkins at {self.shown_url}", 404) from None
        except JenkinsError as exc:
            if exc.status == 400 and "exists" in str(exc):
                raise JenkinsError(f"{what}: it already exists on Jenkins (created by someone else meanwhile?)", 400) from None
            raise

    def update(self, full_name: str, xml: str) -> None:
        parent, _, name = full_name.rpartition("/")
        self._open("POST", f"{folder_url(parent)}job/{quote(name, safe='')}/config.xml", f"update {full_name}",
                   xml.encode("utf-8"), XML_HEADERS)

    def delete(self, full_name: str) -> None:
        parent, _, name = full_name.rpartition("/")
        self._open("POST", f"{folder_url(parent)}job/{quote(name, safe='')}/doDelete", f"delete {full_name}")

    def create_view(self, parent: str, name: str, xml: str) -> None:
        what = f"create view {name}"
        try:
            self._open("POST", f"{folder_url(parent)}createView?name={quote(name, safe='')}", what,
                       xml.encode("utf-8"), XML_HEADERS)
        except NotFound:
            raise NotFound(f"{what}: folder {parent!r} does not exist on Jenkins at {self.shown_url}", 404) from None

    def update_view(self, parent: str, name: str, xml: str) -> None:
        self._open("POST", f"{folder_url(parent)}view/{quote(name, safe='')}/config.xml", f"update view {name}",
                   xml.encode("utf-8"), XML_HEADERS)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "No route to host", "timed out",
                  "Temporary failure in name resolution", "Connection reset"):
        if known in text:
            return known.lower()
    return _first_line(text)


def _first_line(body: str) -> str:
    """A short readable reason from an HTML or text error page."""
    m = re.search(r"<title>(.*?)</title>", body, re.S | re.I)
    text = m.group(1) if m else re.sub(r"<[^>]+>", " ", body)
    text = html.unescape(" ".join(text.split()))
    return text[:300] or "no details"
