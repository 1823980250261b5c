"""A realism layer for the fault proxy: it plays AWS's timing in front of moto, which has none.

What AWS does (and moto 5.2 does not), as documented, and what this layer plays:

- **EC2 API eventual consistency** (EC2 Developer Guide, "Eventual consistency in the Amazon EC2 API"):
  a resource just created "might not be immediately visible to all subsequent commands"; a command
  that modifies or describes it may answer that it does not exist. Named there:
  ``InvalidInstanceID.NotFound`` after RunInstances (DescribeInstances, and TerminateInstances, where
  NotFound "does not mean the instance has been or will be terminated"), ``InvalidGroup.NotFound``
  after CreateSecurityGroup. The guide advises describing with exponential back-off, "starting with a
  couple of seconds ... up to a few minutes". Played: for ``invisible`` seconds after RunInstances /
  CreateImage / CopyImage / CreateSecurityGroup returned an id, a call naming that id (describe by
  id, CreateTags, ModifyImageAttribute, StopInstances, TerminateInstances, DeregisterImage,
  AuthorizeSecurityGroupIngress, RunInstances with that group) answers ``<Kind>.NotFound`` and
  TerminateInstances/DeregisterImage do *nothing*; a filtered describe omits the resource.
- **State transitions** (EC2 User Guide, "Instance state changes"; "AMI lifecycle"): instances are
  ``pending`` before ``running``, ``stopping`` before ``stopped``, ``shutting-down`` before
  ``terminated``; CreateImage/CopyImage answer an id whose image stays ``pending`` for minutes.
  moto settles at once; played: the state shown lags by ``pending`` / ``stopping`` / ``image_pending``
  seconds after the call that started the transition. An instance that shuts itself down (sysprep
  ``--shutdown``, ``InstanceInitiatedShutdownBehavior=stop``) passes through ``stopping`` too: no API
  call tells the layer, so a ``stopped`` it sees an instance reach without a StopInstances is shown
  ``stopping`` for ``stopping`` seconds from then.
- **IAM propagation** (IAM User Guide, "Troubleshooting IAM" — changes are "eventually consistent" and
  "may take time to become visible"; EC2 answers RunInstances with ``InvalidParameterValue`` "Invalid
  IAM Instance Profile name" while a new profile propagates, which Packer's amazon plugin retries for
  this reason): RunInstances naming an instance profile created or changed (CreateInstanceProfile,
  AddRoleToInstanceProfile) less than ``iam`` seconds ago is refused so.
- **Throttling storms** (EC2 API reference, "Request throttling": a token bucket per account and
  action category, ``RequestLimitExceeded`` when it is empty, shared by every caller of the account):
  every ``storm_every`` seconds, for ``storm_length`` seconds, a ``storm_share`` of all EC2 calls
  answers ``RequestLimitExceeded`` (503), deterministically (every n-th call).
- **Capacity** (EC2 User Guide, "Insufficient instance capacity"; ``Unsupported`` when a type is not
  offered in the AZ): RunInstances with an (instance type, subnet) in ``no_capacity`` answers
  ``InsufficientInstanceCapacity`` (500) every time: it persists until the request changes.

- **Idempotency** (EC2 API reference, "Ensuring idempotency of mutating API requests"): a RunInstances
  or CopyImage repeated with the same ``ClientToken`` and the same parameters answers what the first
  call answered and creates nothing; the same token with other parameters answers
  ``IdempotentParameterMismatch`` (400). moto creates again: played, by keeping each token's request
  and answer (``replay``).
- **The slow profile** (:meth:`Realism.slow`): AWS's own durations, scaled by ``scale`` so a test stays
  short: NotFound windows "up to a few minutes" (EC2 eventual consistency, above: 5 min), images
  pending for many polls (AMI creation takes minutes: 10 min), instances pending ~1 min and stopping
  ~2 min (EC2 User Guide, "Instance lifecycle"), IAM profiles usable after up to ~10 s (IAM
  propagation, above).
Windows in calls. Each window above is in seconds of the wall clock, which a loaded machine makes
shorter for the calls that come late: where a test asserts that a behaviour was played, it also sets
the window in calls, which no load can close before the call arrives. ``invisible_calls`` (operation
-> n): a new id answers NotFound to its first n calls of that operation naming it, whenever they come
(AWS gives no bound: a window of any length is one AWS could show). ``iam_calls``: the first n
RunInstances naming a new or changed instance profile are refused as propagating.

The layer keeps the ids it saw created and when; it rewrites EC2 query-protocol XML with ElementTree
(namespaces dropped: botocore's parser ignores them). Everything else is forwarded to moto untouched.
"""

from __future__ import annotations

import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Which NotFound code each id prefix answers with.
NOT_FOUND = {"i-": "InvalidInstanceID.NotFound", "ami-": "InvalidAMIID.NotFound", "sg-": "InvalidGroup.NotFound"}
# Calls that name resources by id, and the parameter prefixes carrying those ids.
ID_PARAMS = {
    "DescribeInstances": ("InstanceId.",), "DescribeImages": ("ImageId.",),
    "DescribeSecurityGroups": ("GroupId.",), "CreateTags": ("ResourceId.",), "DeleteTags": ("ResourceId.",),
    "ModifyImageAttribute": ("ImageId",), "StopInstances": ("InstanceId.",), "StartInstances": ("InstanceId.",),
    "TerminateInstances": ("InstanceId.",), "DeregisterImage": ("ImageId",), "GetConsoleOutput": ("InstanceId",),
    "AuthorizeSecurityGroupIngress": ("GroupId",), "RevokeSecurityGroupIngress": ("GroupId",),
    "DeleteSecurityGroup": ("GroupId",), "RunInstances": ("SecurityGroupId.",),
    "ModifyInstanceAttribute": ("InstanceId",), "DescribeInstanceAttribute": ("InstanceId",),
}
STATE_CODES = {"pending": "0", "running": "16", "shutting-down": "32", "terminated": "48", "stopping": "64",
               "stopped": "80"}


def _q(tag: str) -> str:
    return tag  # namespaces are stripped on parsing (botocore ignores them too)


class ManualClock:
    """A clock that moves only when told (``advance``): windows end when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class Realism:
    """AWS timing for the proxy's EC2/IAM calls; durations in seconds (0 switches a behaviour off)."""

    invisible: float = 2.0
    pending: float = 1.5
    stopping: float = 1.5
    shutting_down: float = 1.0
    image_pending: float = 3.0
    iam: float = 3.0
    storm_every: float = 0.0
    storm_length: float = 0.0
    storm_share: int = 3  # during a storm, every n-th EC2 call is throttled
    no_capacity: set[tuple[str, str]] = field(default_factory=set)  # (instance type, subnet id or "*")
    invisible_calls: dict[str, int] = field(default_factory=dict)  # operation -> first n calls per new id
    iam_calls: int = 0  # the first n RunInstances naming a new profile are refused
    _named: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)  # (operation, id) -> calls
    created: dict[str, float] = field(default_factory=dict)  # id -> when its create call answered
    transitions: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # id -> (shown, since, for)
    profiles: dict[str, float] = field(default_factory=dict)  # instance profile -> last change
    seen: dict[str, str] = field(default_factory=dict)  # instance id -> its real state at the last describe
    played: list[str] = field(default_factory=list)  # what the layer did, for assertions
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _storm_calls: int = 0
    # The layer's clock: monotonic seconds; a test that asserts on a window's end injects a ManualClock.
    clock: Callable[[], float] = time.monotonic
    _start: float | None = None
    # ClientToken -> (the request, its answer), for replays (see the module docstring).
    tokens: dict[tuple[str, str], tuple[dict[str, Any], bytes | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self._start is None:
            self._start = self.clock()

    @classmethod
    def slow(cls, scale: float = 0.02, **overrides: Any) -> Realism:
        """AWS at its documented pace, every duration times ``scale`` (see the module docstring)."""
        real = {"invisible": 300.0, "pending": 60.0, "stopping": 120.0, "shutting_down": 60.0,
                "image_pending": 600.0, "iam": 10.0}
        return cls(**{**{k: v * scale for k, v in real.items()}, **overrides})

    # --- idempotency: ClientToken -----------------------------------------------------------------------
    def replay(self, service: str, operation: str, params: dict[str, Any]) -> bytes | None:
        """The first answer to a repeated token with the same request, else None (forward it)."""
        token = str(params.get("ClientToken") or "")
        if service != "ec2" or operation not in ("RunInstances", "CopyImage") or not token:
            return None
        with self._lock:
            seen = self.tokens.get((operation, token))
        if seen is None or seen[0] != params or seen[1] is None:
            return None
        self._play(f"replay: {operation} token {token}")
        return seen[1]

    def _mismatch(self, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        token = str(params.get("ClientToken") or "")
        if operation not in ("RunInstances", "CopyImage") or not token:
            return None
        with self._lock:
            seen = self.tokens.get((operation, token))
            if seen is None:
                self.tokens[(operation, token)] = (dict(params), None)
                return None
        if seen[0] == params:
            return None
        self._play(f"mismatch: {operation} token {token}")
        return (400, "IdempotentParameterMismatch",
                f"Client token {token} is already used with other parameters (realism)")

    # --- before forwarding: refuse ------------------------------------------------------------------
    def refuse(self, service: str, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        if service == "iam":
            self._note_profile(operation, params)
            return None
        if service != "ec2":
            return None
        return (self._storm(operation) or self._mismatch(operation, params) or self._capacity(operation, params)
                or self._iam_refusal(operation, params) or self._not_yet_visible(operation, params))

    def _note_profile(self, operation: str, params: dict[str, Any]) -> None:
        if operation in ("CreateInstanceProfile", "AddRoleToInstanceProfile") and params.get("InstanceProfileName"):
            with self._lock:
                self.profiles[str(params["InstanceProfileName"])] = self.clock()

    def _storm(self, operation: str) -> tuple[int, str, str] | None:
        if not (self.storm_every and self.storm_length):
            return None
        if (self.clock() - (self._start or 0.0)) % self.storm_every >= self.storm_length:
            return None
        with self._lock:
            self._storm_calls += 1
            hit = self._storm_calls % self.storm_share == 0
        if hit:
            self._play(f"storm: {operation} throttled")
            return 503, "RequestLimitExceeded", "Request limit exceeded. (realism: throttling storm)"
        return None

    def _capacity(self, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        if operation != "RunInstances" or not self.no_capacity:
            return None
        itype, subnet = str(params.get("InstanceType", "")), str(params.get("SubnetId", "*"))
        if (itype, subnet) in self.no_capacity or (itype, "*") in self.no_capacity:
            self._play(f"capacity: {itype} in {subnet} refused")
            return (500, "InsufficientInstanceCapacity",
                    f"We currently do not have sufficient {itype} capacity in the Availability Zone you requested "
                    "(realism). Our system will be working on provisioning additional capacity.")
        return None

    def _iam_refusal(self, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        if operation != "RunInstances" or not (self.iam or self.iam_calls):
            return None
        name = str(params.get("IamInstanceProfile.Name", ""))
        with self._lock:
            changed = self.profiles.get(name)
        if changed is not None and (self.clock() - changed < self.iam
                                    or self._counted("RunInstances", f"profile:{name}", self.iam_calls)):
            self._play(f"iam: profile {name} not yet usable")
            return (400, "InvalidParameterValue",
                    f"Value ({name}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name")
        return None

    def _not_yet_visible(self, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        prefixes = ID_PARAMS.get(operation)
        if not prefixes:
            return None
        for key, value in params.items():
            if not any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes):
                continue
            for rid in value if isinstance(value, list) else [value]:
                if self.invisible_now(str(rid)) or self._invisible_to_call(operation, str(rid)):
                    kind = next((c for pre, c in NOT_FOUND.items() if str(rid).startswith(pre)), "InvalidID.NotFound")
                    self._play(f"invisible: {operation} on {rid} -> {kind}")
                    return 400, kind, f"The ID '{rid}' does not exist (realism: not yet propagated)"
        return None

    def _counted(self, operation: str, rid: str, first: int) -> bool:
        """True for the first ``first`` calls of ``operation`` on ``rid`` (each call counts once)."""
        if first <= 0:
            return False
        with self._lock:
            n = self._named.get((operation, rid), 0) + 1
            self._named[(operation, rid)] = n
        return n <= first

    def _invisible_to_call(self, operation: str, rid: str) -> bool:
        with self._lock:
            created = rid in self.created
        return created and self._counted(operation, rid, self.invisible_calls.get(operation, 0))

    def invisible_now(self, rid: str) -> bool:
        with self._lock:
            at = self.created.get(rid)
        return at is not None and self.clock() - at < self.invisible

    # --- after forwarding: remember and rewrite -----------------------------------------------------
    def answer(self, service: str, operation: str, params: dict[str, Any], payload: bytes) -> bytes:
        if service != "ec2" or not payload.lstrip().startswith(b"<"):
            return payload
        try:
            root = ET.fromstring(payload)
        except ET.ParseError:
            return payload
        for el in root.iter():
            el.tag = el.tag.rsplit("}", 1)[-1]
        token = str(params.get("ClientToken") or "")
        if token and operation in ("RunInstances", "CopyImage"):
            with self._lock:
                if self.tokens.get((operation, token), (None, None))[1] is None:
                    self.tokens[(operation, token)] = (dict(params), payload)
        changed = self._remember(operation, params, root)
        if operation == "DescribeInstances":
            changed |= self._rewrite_instances(root)
        elif operation == "DescribeImages":
            changed |= self._rewrite_images(root)
        elif operation == "DescribeSecurityGroups":
            changed |= self._drop_items(root, "securityGroupInfo", "groupId")
        return ET.tostring(root, encoding="utf-8", xml_declaration=True) if changed else payload

    def _remember(self, operation: str, params: dict[str, Any], root: ET.Element) -> bool:
        now = self.clock()
        new: list[str] = []
        changed = False
        if operation == "RunInstances":
            new = [e.text or "" for e in root.iter(_q("instanceId"))]
            for iid in new:
                self._transition(iid, "pending", now, self.pending)
            for e in root.iter(_q("instanceState")):
                changed |= self._set_state(e, "pending")
        elif operation in ("CreateImage", "CopyImage"):
            new = [e.text or "" for e in root.iter(_q("imageId"))]
            for image_id in new:
                self._transition(image_id, "pending", now, self.image_pending)
        elif operation == "CreateSecurityGroup":
            new = [e.text or "" for e in root.iter(_q("groupId"))]
        elif operation in ("StopInstances", "TerminateInstances"):
            return self._remember_change(operation, root, now)
        with self._lock:
            for rid in new:
                self.created[rid] = now
        return changed

    def _remember_change(self, operation: str, root: ET.Element, now: float) -> bool:
        shown, lasting = ("stopping", self.stopping) if operation == "StopInstances" else (
            "shutting-down", self.shutting_down)
        changed = False
        for item in root.iter(_q("item")):
            iid = item.findtext(_q("instanceId"))
            current = item.find(_q("currentState"))
            if iid is None or current is None:
                continue
            if current.findtext(_q("name")) in ("stopping", "stopped", "shutting-down", "terminated"):
                self._transition(iid, shown, now, lasting)
                changed |= self._set_state(current, shown)
        return changed

    def _transition(self, rid: str, shown: str, since: float, lasting: float) -> None:
        if lasting > 0:
            with self._lock:
                self.transitions[rid] = (shown, since, lasting)

    def _shown_state(self, rid: str, actual: str) -> str | None:
        with self._lock:
            t = self.transitions.get(rid)
        if t is None or self.clock() - t[1] >= t[2]:
            return None
        shown = t[0]
        # Only hold back the state the transition leads to (a newer real change wins).
        leads_to = {"pending": ("running", "available"), "stopping": ("stopped",), "shutting-down": ("terminated",)}
        return shown if actual in leads_to.get(shown, ()) else None

    @staticmethod
    def _set_state(state_el: ET.Element, name: str) -> bool:
        name_el, code_el = state_el.find(_q("name")), state_el.find(_q("code"))
        if name_el is None:
            return False
        name_el.text = name
        if code_el is not None:
            code_el.text = STATE_CODES.get(name, code_el.text)
        return True

    def _rewrite_instances(self, root: ET.Element) -> bool:
        changed = self._drop_items(root, "reservationSet", "instanceId", deep=True)
        for inst in root.iter(_q("item")):
            iid = inst.findtext(_q("instanceId"))
            state = inst.find(_q("instanceState"))
            if iid is None or state is None:
                continue
            actual = state.findtext(_q("name")) or ""
            self._stopped_by_itself(iid, actual)
            shown = self._shown_state(iid, actual)
            if shown:
                changed |= self._set_state(state, shown)
        return changed

    def _stopped_by_itself(self, iid: str, actual: str) -> None:
        """A stop no StopInstances started (the OS shut down): ``stopping`` from the moment it is seen."""
        with self._lock:
            before, self.seen[iid] = self.seen.get(iid), actual
            t = self.transitions.get(iid)
            launched = iid in self.created
        # Seen running before, or launched through the layer and not seen since (it may stop before any describe).
        if before is None and launched:
            before = "running"
        if actual == "stopped" and before in ("pending", "running") and self.stopping and (
                t is None or t[0] != "stopping"):
            self._transition(iid, "stopping", self.clock(), self.stopping)
            self._play(f"stopping: {iid} shut itself down")

    def _rewrite_images(self, root: ET.Element) -> bool:
        changed = self._drop_items(root, "imagesSet", "imageId")
        for image in root.iter(_q("item")):
            image_id = image.findtext(_q("imageId"))
            state = image.find(_q("imageState"))
            if image_id is None or state is None:
                continue
            shown = self._shown_state(image_id, state.text or "")
            if shown:
                state.text = shown
                changed = True
        return changed

    def _drop_items(self, root: ET.Element, set_tag: str, id_tag: str, *, deep: bool = False) -> bool:
        """A filtered describe omits what has not propagated (by-id describes were refused before)."""
        changed = False
        for container in root.iter(_q(set_tag)):
            for item in list(container):
                ids = [e.text or "" for e in (item.iter(_q(id_tag)) if deep else [item.find(_q(id_tag))]) if e is not None]
                if ids and all(self.invisible_now(i) for i in ids):
                    container.remove(item)
                    self._play(f"invisible: {ids[0]} omitted from a filtered describe")
                    changed = True
        return changed

    def _play(self, what: str) -> None:
        with self._lock:
            self.played.append(re.sub(r"\s+", " ", what))

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for p in self.played if p.startswith(prefix))
