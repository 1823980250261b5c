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
- **IAM propagation and the instance's own credentials** (IAM User Guide, "Troubleshoot IAM", "Changes
  that I make are not always immediately visible": IAM "uses a distributed computing model called
  eventual consistency. Any change that you make in IAM ... takes time to become visible from all
  possible endpoints"; the guide advises verifying a change has propagated before a workflow depends on
  it). The bakery writes the instance role's policy moments before the launch, so the instance's first
  calls with that role's credentials may be judged by the old (or no) policy. Counted, never timed:
  ``role_calls`` -- after a CreateRole / PutRolePolicy / AttachRolePolicy / DetachRolePolicy /
  DeleteRolePolicy / PutRolePermissionsBoundary naming a role (seen through the layer), the next
  ``role_calls`` requests signed with that role's credentials (``role_of``: access key id -> role, told
  by whoever hands the credentials out) answer the service's permission error (EC2
  ``UnauthorizedOperation``, S3 ``AccessDenied``, SNS ``AuthorizationError``, SSM
  ``AccessDeniedException``), whatever the policy says. moto applies a policy at once.
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
  propagation, above); and, counted, every new resource flickering and vanishing once after it was
  first seen, tags, SSM values and new launch template versions lagging two describes / reads / calls
  (see below).
- **Flicker** (EC2 eventual consistency, above: a describe may be answered by a replica that has not
  seen the latest change). Counted, per resource: ``flicker`` -- once a describe has shown a resource
  in a settled state (``running``, ``stopped``, ``terminated``, ``available``), its next ``flicker``
  describes show the state before it again (``pending``, ``stopping``, ``shutting-down``, ``pending``),
  then the settled one; ``vanish`` -- once a describe has shown a resource created through the layer,
  its next ``vanish`` describes omit it (filtered or by id): seen, missing, seen.
- **Tag lag** (EC2 eventual consistency, above: "the result of an API command you run that affects your
  Amazon EC2 resources might not be immediately visible to all subsequent commands"): ``tag_lag`` -- after a CreateTags, the next ``tag_lag``
  describes naming a tagged resource (DescribeInstances, DescribeImages, DescribeSnapshots: an image's
  snapshots are tagged by CreateTags where moto refuses their ``TagSpecifications``) show it with the
  tags it had before (the values the layer last showed, or without the new keys), and a describe
  filtering on such a tag (``tag:KEY`` or ``tag-key``) does not list it unless the tags shown match.
- **SSM read-after-write** (Systems Manager API reference, PutParameter ``DataType``: "If you call
  PutParameter with aws:ec2:image data type, a successful HTTP 200 response does not guarantee that
  your parameter was successfully created or updated. The aws:ec2:image value is validated
  asynchronously"): ``ssm_lag`` -- after a PutParameter, the next ``ssm_lag`` GetParameter calls for
  that name answer what the layer last saw before it (the previous value), or ``ParameterNotFound``
  for a parameter new to the layer.
- **Launch template versions** (EC2 eventual consistency, above; EC2 API reference, "Error codes":
  ``InvalidLaunchTemplateId.VersionNotFound``, "The specified launch template version does not exist",
  which ModifyLaunchTemplate answers to a ``DefaultVersion`` it does not know): ``lt_lag`` -- after
  CreateLaunchTemplateVersion answered version N, the next ``lt_lag`` calls naming N (ModifyLaunchTemplate
  making it the default, DescribeLaunchTemplateVersions asking for it) answer ``VersionNotFound`` (400).
  moto knows the version at once.
- **Failed images** (EC2 User Guide, "AMI lifecycle": an AMI can end in ``failed``; DescribeImages then
  carries ``StateReason`` (code and message, EC2 API reference, "StateReason")): ``fail_images`` --
  the first n images CreateImage/CopyImage answer through the layer end ``failed`` (after their
  ``pending`` time) with ``StateReason`` ``Server.InternalError``; moto still holds them available.
- **Per-API token buckets** (EC2 API reference, "Request throttling": "each API is evaluated
  individually", one bucket per API per account and Region whose size and refill rate depend on the
  API's category -- non-mutating (``Describe*``, ``Get*``, ``List*``...), mutating, and the resource
  buckets of RunInstances (one token per instance; the page's example: 1000 tokens, 2 per second) and
  TerminateInstances; an empty bucket answers ``RequestLimitExceeded`` while the other APIs' buckets
  are untouched): ``buckets`` (category -> (size, refill per second on the layer's ``clock``)). With a
  :class:`ManualClock` a bucket refills only when the test advances it: no load can refill it early.
- **vCPU limits** (EC2 User Guide, "On-Demand Instance quotas": a quota of running vCPUs per instance
  family bucket; RunInstances beyond it answers ``VcpuLimitExceeded``, "You have requested more vCPU
  capacity than your current vCPU limit of N allows for the instance bucket that the specified
  instance type belongs to"): ``vcpu_limit`` -- vCPUs of the instances launched through the layer and
  not terminated, counted per family letter group as the quota groups them ("standard": A, C, D, H, I,
  M, R, T, Z).
- **Sharing a default-key AMI** (EC2 User Guide, "Share an AMI with specific AWS accounts": "You can't
  share AMIs that are backed by snapshots that are encrypted with the default AWS managed key"):
  ModifyImageAttribute adding a launch permission (account, organization or OU) to an image whose
  snapshots are encrypted without a customer managed key (no ``KmsKeyId``, or the key of
  ``alias/aws/ebs``) is refused with ``InvalidParameter`` (the page names the rule, not the code: the
  code is an assumption). moto 5.2 carries no encryption to an image's snapshots (CreateImage and
  CopyImage with ``Encrypted``/``KmsKeyId`` make unencrypted ones), so the layer keeps the key itself:
  from RunInstances' encrypted volumes to CreateImage's image, from CopyImage's ``KmsKeyId`` (or its
  source) to the copy; for an image it did not see made, it asks moto (``upstream``, set by the
  proxy) for the snapshots.
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

import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# IAM calls that change what a role may do (its credentials' first calls lag behind them).
ROLE_CHANGES = ("CreateRole", "PutRolePolicy", "AttachRolePolicy", "DetachRolePolicy", "DeleteRolePolicy",
                "PutRolePermissionsBoundary")
# Each service's permission error (status, code), as a call its policy does not allow is answered.
ROLE_DENIED = {"ec2": (403, "UnauthorizedOperation"), "s3": (403, "AccessDenied"), "sns": (403, "AuthorizationError"),
               "ssm": (400, "AccessDeniedException"), "sts": (403, "AccessDenied")}
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


# The state a settled state was reached from: what a replica behind shows (flicker).
EARLIER = {"running": "pending", "stopped": "stopping", "terminated": "shutting-down", "available": "pending"}
# vCPUs per instance type (EC2 User Guide, "Instance types" specifications); others count 2.
VCPUS = {"nano": 2, "micro": 2, "small": 2, "medium": 2, "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16,
         "8xlarge": 32, "12xlarge": 48, "16xlarge": 64, "24xlarge": 96}
# The On-Demand quota buckets by family letter (EC2 User Guide, "On-Demand Instance quotas").
STANDARD_FAMILIES = "acdhimrtz"


def vcpus(instance_type: str) -> int:
    return VCPUS.get(instance_type.partition(".")[2], 2)


def vcpu_quota(instance_type: str) -> str:
    letter = instance_type[:1].lower()
    return "standard" if letter in STANDARD_FAMILIES else letter


def _tag_filters(params: dict[str, Any]) -> dict[str, set[str]]:
    """``tag:KEY`` filters of a describe (query form ``Filter.N.Name`` / ``Filter.N.Value.M``): key -> values."""
    out: dict[str, set[str]] = {}
    for k, name in params.items():
        if k.startswith("Filter.") and k.endswith(".Name") and str(name).startswith("tag:"):
            prefix = k[: -len("Name")] + "Value."
            out[str(name)[4:]] = {str(v) for kk, v in params.items() if kk.startswith(prefix)}
    return out


def _tag_key_filters(params: dict[str, Any]) -> list[set[str]]:
    """``tag-key`` filters of a describe: each the set of keys of which a resource must carry one."""
    return [{str(v) for kk, v in params.items() if kk.startswith(k[: -len("Name")] + "Value.")}
            for k, name in params.items() if k.startswith("Filter.") and k.endswith(".Name") and name == "tag-key"]


DEFAULT_KEY = "aws/ebs"


def _key_kind(kms_key_id: str) -> str:
    """An encrypted volume's key: the default AWS managed one (no key named, or ``alias/aws/ebs``) or a CMK."""
    return DEFAULT_KEY if not kms_key_id or kms_key_id.endswith("alias/aws/ebs") else "cmk"


def _volume_key(params: dict[str, Any]) -> str:
    """The key of a RunInstances' encrypted volumes (query form ``BlockDeviceMapping.N.Ebs.*``); '' if none is."""
    kinds = {_key_kind(str(params.get(k[: -len("Encrypted")] + "KmsKeyId", "")))
             for k, v in params.items() if k.endswith(".Ebs.Encrypted") and str(v).lower() == "true"}
    return DEFAULT_KEY if DEFAULT_KEY in kinds else ("cmk" if kinds else "")


def api_category(operation: str) -> str:
    """The EC2 request-throttling category of an API (EC2 API reference, "Request throttling")."""
    return "non-mutating" if operation.startswith(("Describe", "Get", "List", "Search")) else "mutating"


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
    flicker: int = 0  # describes showing the earlier state again after a settled one, per resource
    vanish: int = 0  # describes omitting a resource after it was first shown, per resource
    tag_lag: int = 0  # describes showing a resource's tags as before a CreateTags
    ssm_lag: int = 0  # GetParameter calls answering the value before a PutParameter
    lt_lag: int = 0  # calls naming a new launch template version that answer VersionNotFound
    role_calls: int = 0  # requests with a just-changed role's credentials refused as not yet propagated
    role_of: Callable[[str], str | None] | None = None  # access key id -> the role whose credentials it is
    fail_images: int = 0  # the first n images created through the layer end `failed`
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # category -> (size, refill/s)
    vcpu_limit: int = 0  # running vCPUs per quota bucket (0: no limit)
    # Calls moto directly: (service, region, operation, params) -> answer (the proxy sets it).
    upstream: Callable[[str, str, str, dict[str, Any]], dict[str, Any]] | None = None
    _flicker_left: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)  # id -> (settled, left)
    _vanish_left: dict[str, int] = field(default_factory=dict, repr=False)
    _tag_lag: dict[str, tuple[set[str], int]] = field(default_factory=dict, repr=False)  # id -> (keys, left)
    _tags_shown: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _ssm: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # name -> last Parameter seen
    _ssm_lag: dict[str, tuple[dict[str, Any] | None, int]] = field(default_factory=dict, repr=False)
    _lt_lag: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)  # (template, version) -> left
    _role_left: dict[str, int] = field(default_factory=dict, repr=False)  # role -> requests still refused
    failed_images: set[str] = field(default_factory=set)
    _images_made: int = 0
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)  # bucket -> (tokens, at)
    _vcpus: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)  # instance -> (quota, vcpus)
    _keys: dict[str, str] = field(default_factory=dict, repr=False)  # instance/image -> DEFAULT_KEY | "cmk" | ""
    throttled: threading.Event = field(default_factory=threading.Event, repr=False)
    hooks: dict[str, Callable[[], None]] = field(default_factory=dict, repr=False)  # played prefix -> callback
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
        # Counted, not timed (no scale): each new resource flickers and vanishes once after it was seen,
        # tags, SSM values and launch template versions lag two describes / reads / calls.
        counted = {"flicker": 1, "vanish": 1, "tag_lag": 2, "ssm_lag": 2, "lt_lag": 2}
        return cls(**{**{k: v * scale for k, v in real.items()}, **counted, **overrides})

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
    def refuse(self, service: str, operation: str, params: dict[str, Any], region: str = "", *,
               access_key: str = "") -> tuple[int, str, str] | None:
        if service == "iam":
            self._note_profile(operation, params)
            self._note_role(operation, params)
            return None
        denied = self._role_refusal(service, operation, access_key)
        if denied is not None:
            return denied
        if service == "ssm":
            return self._ssm_refusal(operation, params)
        if service != "ec2":
            return None
        return (self._storm(operation) or self._bucket(region, operation, params) or self._mismatch(operation, params)
                or self._capacity(operation, params) or self._vcpu_refusal(operation, params)
                or self._iam_refusal(operation, params) or self._not_yet_visible(operation, params)
                or self._share_refusal(region, operation, params) or self._lt_refusal(operation, params))

    # --- per-API token buckets ------------------------------------------------------------------------
    def _take(self, key: str, category: str, tokens: float) -> bool:
        """Take ``tokens`` from bucket ``key`` (sized by ``category``); False when it holds fewer."""
        size, refill = self.buckets[category]
        now = self.clock()
        with self._lock:
            have, at = self._tokens.get(key, (size, now))
            have = min(size, have + (now - at) * refill)
            ok = have >= tokens
            self._tokens[key] = (have - tokens if ok else have, now)
        return ok

    def _bucket(self, region: str, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        if not self.buckets:
            return None
        category = api_category(operation)
        empty = ""
        if category in self.buckets and not self._take(f"{region}:{operation}", category, 1):
            empty = f"{operation} ({category} bucket)"
        resource = {"RunInstances": int(params.get("MaxCount") or 1),
                    "TerminateInstances": sum(1 for k in params if k.startswith("InstanceId."))}.get(operation)
        if not empty and resource and operation in self.buckets and not self._take(
                f"{region}:{operation}:resource", operation, resource):
            empty = f"{operation} (resource bucket)"
        if not empty:
            return None
        self._play(f"bucket: {empty} empty")
        self.throttled.set()
        return 503, "RequestLimitExceeded", f"Request limit exceeded. (realism: {empty} is empty)"

    # --- vCPU quota -----------------------------------------------------------------------------------
    def _vcpu_refusal(self, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        if operation != "RunInstances" or not self.vcpu_limit:
            return None
        itype = str(params.get("InstanceType", ""))
        quota, wanted = vcpu_quota(itype), vcpus(itype) * int(params.get("MaxCount") or 1)
        with self._lock:
            used = sum(n for q, n in self._vcpus.values() if q == quota)
        if used + wanted <= self.vcpu_limit:
            return None
        self._play(f"vcpu: {itype} refused ({used} + {wanted} > {self.vcpu_limit})")
        return (400, "VcpuLimitExceeded",
                f"You have requested more vCPU capacity than your current vCPU limit of {self.vcpu_limit} allows for "
                "the instance bucket that the specified instance type belongs to. Please visit "
                "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit. (realism)")

    # --- sharing an AMI under the default key ---------------------------------------------------------
    def _share_refusal(self, region: str, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        if operation != "ModifyImageAttribute":
            return None
        adds = [k for k in params if k.startswith("LaunchPermission.Add.") or (
            k.startswith(("UserId.", "UserGroup.")) and str(params.get("OperationType", "")).lower() == "add")]
        if not adds:
            return None
        image_id = str(params.get("ImageId", ""))
        with self._lock:
            known = self._keys.get(image_id, "")
        if known == DEFAULT_KEY:
            self._play(f"share: {image_id} refused (its snapshots are under the default key)")
            return (400, "InvalidParameter",
                    f"The snapshots of {image_id} are encrypted with the default AWS managed key (aws/ebs): an AMI "
                    "backed by them cannot be shared (realism)")
        if known or self.upstream is None:
            return None
        images = self.upstream("ec2", region, "DescribeImages", {"ImageIds": [image_id]}).get("Images", [])
        snaps = [m["Ebs"]["SnapshotId"] for i in images for m in i.get("BlockDeviceMappings", [])
                 if m.get("Ebs", {}).get("SnapshotId")]
        if not snaps:
            return None
        found = self.upstream("ec2", region, "DescribeSnapshots", {"SnapshotIds": snaps}).get("Snapshots", [])
        aliases = self.upstream("kms", region, "ListAliases", {}).get("Aliases", [])
        default = {a.get("TargetKeyId") for a in aliases if a.get("AliasName") == "alias/aws/ebs" and a.get("TargetKeyId")}
        for snap in found:
            key = str(snap.get("KmsKeyId") or "")
            if snap.get("Encrypted") and (not key or key.rsplit("/", 1)[-1] in default or key.endswith("alias/aws/ebs")):
                self._play(f"share: {image_id} refused (snapshot {snap['SnapshotId']} under the default key)")
                return (400, "InvalidParameter",
                        f"Snapshot {snap['SnapshotId']} of {image_id} is encrypted with the default AWS managed key "
                        "(aws/ebs): an AMI backed by it cannot be shared (realism)")
        return None

    # --- launch template versions -------------------------------------------------------------------
    def _lt_refusal(self, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        """A version CreateLaunchTemplateVersion just answered, named by the next ``lt_lag`` calls."""
        if not self.lt_lag or operation not in ("ModifyLaunchTemplate", "DescribeLaunchTemplateVersions"):
            return None
        template = str(params.get("LaunchTemplateName") or params.get("LaunchTemplateId") or "")
        named = ([str(params.get("SetDefaultVersion", ""))] if operation == "ModifyLaunchTemplate" else
                 [str(v) for k, v in params.items() if k.startswith("LaunchTemplateVersion.")])
        with self._lock:
            lagging = next(((template, v) for v in named if self._lt_lag.get((template, v), 0) > 0), None)
            if lagging is None:
                return None
            self._lt_lag[lagging] -= 1
        self._play(f"launch template: {operation} on {template} version {lagging[1]} -> VersionNotFound")
        return (400, "InvalidLaunchTemplateId.VersionNotFound",
                f"The specified launch template version {lagging[1]} does not exist. (realism: not yet propagated)")

    # --- SSM read-after-write -------------------------------------------------------------------------
    def _ssm_refusal(self, operation: str, params: dict[str, Any]) -> tuple[int, str, str] | None:
        name = str(params.get("Name", ""))
        if operation == "PutParameter" and self.ssm_lag:
            with self._lock:
                self._ssm_lag[name] = (self._ssm.get(name), self.ssm_lag)
            return None
        if operation != "GetParameter":
            return None
        with self._lock:
            before, left = self._ssm_lag.get(name, (None, 0))
            if left <= 0 or before is not None:
                return None  # an earlier value is answered by ``answer``
            self._ssm_lag[name] = (None, left - 1)
        self._play(f"ssm: {name} not yet readable")
        return 400, "ParameterNotFound", f"Parameter {name} not found. (realism: written, not yet validated)"

    def _ssm_answer(self, operation: str, params: dict[str, Any], payload: bytes) -> bytes:
        if operation != "GetParameter":
            return payload
        name = str(params.get("Name", ""))
        try:
            doc = json.loads(payload)
        except ValueError:
            return payload
        with self._lock:
            before, left = self._ssm_lag.get(name, (None, 0))
            if left > 0 and before is not None:
                self._ssm_lag[name] = (before, left - 1)
            else:
                self._ssm[name] = dict(doc.get("Parameter") or {})
                return payload
        self._play(f"ssm: {name} still reads {before.get('Value')}")
        return json.dumps({**doc, "Parameter": before}).encode()

    # --- IAM propagation: the instance's own credentials ------------------------------------------------
    def _note_role(self, operation: str, params: dict[str, Any]) -> None:
        if self.role_calls and operation in ROLE_CHANGES and params.get("RoleName"):
            with self._lock:
                self._role_left[str(params["RoleName"])] = self.role_calls

    def _role_refusal(self, service: str, operation: str, access_key: str) -> tuple[int, str, str] | None:
        if not (self.role_calls and access_key and self.role_of is not None):
            return None
        role = self.role_of(access_key)
        if role is None:
            return None
        with self._lock:
            left = self._role_left.get(role, 0)
            if left <= 0:
                return None
            self._role_left[role] = left - 1
        status, code = ROLE_DENIED.get(service, (403, "AccessDenied"))
        self._play(f"role: {service}:{operation} with role {role}'s credentials refused")
        return (status, code, f"User: arn:aws:sts::123456789012:assumed-role/{role}/instance is not authorized to "
                              f"perform: {service}:{operation} (realism: the role changed moments ago; IAM has not "
                              "propagated it yet)")

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
        if service == "ssm":
            return self._ssm_answer(operation, params, payload)
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
            changed |= self._rewrite_instances(root, _tag_filters(params), _tag_key_filters(params))
        elif operation == "DescribeImages":
            changed |= self._rewrite_images(root, _tag_filters(params), _tag_key_filters(params))
        elif operation == "DescribeSecurityGroups":
            changed |= self._drop_items(root, "securityGroupInfo", "groupId")
        elif operation == "DescribeSnapshots":
            changed |= self._rewrite_snapshots(root, _tag_filters(params), _tag_key_filters(params))
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
            itype = str(params.get("InstanceType", ""))
            key = _volume_key(params)
            with self._lock:
                for iid in new:
                    self._vcpus[iid] = (vcpu_quota(itype), vcpus(itype))
                    self._keys[iid] = key
        elif operation in ("CreateImage", "CopyImage"):
            new = [e.text or "" for e in root.iter(_q("imageId"))]
            if operation == "CreateImage":
                key = self._keys.get(str(params.get("InstanceId", "")), "")
            elif str(params.get("Encrypted", "")).lower() == "true":
                key = _key_kind(str(params.get("KmsKeyId", "")))
            else:
                key = self._keys.get(str(params.get("SourceImageId", "")), "")
            for image_id in new:
                self._transition(image_id, "pending", now, self.image_pending)
                with self._lock:
                    self._keys[image_id] = key
                    self._images_made += 1
                    if self._images_made <= self.fail_images:
                        self.failed_images.add(image_id)
        elif operation == "CreateTags" and self.tag_lag:
            keys = {str(v) for k, v in params.items() if k.startswith("Tag.") and k.endswith(".Key")}
            with self._lock:
                for k, rid in params.items():
                    if k.startswith("ResourceId."):
                        self._tag_lag[str(rid)] = (keys, self.tag_lag)
        elif operation == "CreateSecurityGroup":
            new = [e.text or "" for e in root.iter(_q("groupId"))]
        elif operation == "CreateLaunchTemplateVersion" and self.lt_lag:
            version = root.findtext(f".//{_q('versionNumber')}") or ""
            with self._lock:  # named by either: the template's name or its id
                for ref in (root.findtext(f".//{_q('launchTemplateName')}"), root.findtext(f".//{_q('launchTemplateId')}")):
                    if ref:
                        self._lt_lag[(ref, version)] = self.lt_lag
        elif operation in ("StopInstances", "TerminateInstances"):
            if operation == "TerminateInstances":
                with self._lock:
                    for k, iid in params.items():
                        if k.startswith("InstanceId."):
                            self._vcpus.pop(str(iid), None)
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

    def _rewrite_instances(self, root: ET.Element, tag_filters: dict[str, set[str]],
                           key_filters: list[set[str]]) -> bool:
        changed = self._drop_items(root, "reservationSet", "instanceId", deep=True)
        for inst in root.iter(_q("item")):
            iid = inst.findtext(_q("instanceId"))
            state = inst.find(_q("instanceState"))
            if iid is None or state is None:
                continue
            actual = state.findtext(_q("name")) or ""
            self._stopped_by_itself(iid, actual)
            shown = self._shown_state(iid, actual) or self._flickered(iid, actual)
            if shown:
                changed |= self._set_state(state, shown)
            changed |= self._lag_tags(iid, inst, tag_filters, key_filters)
        return self._drop_unmatched(root) or changed

    # --- flicker, vanish, tag lag -----------------------------------------------------------------------
    def _flickered(self, rid: str, actual: str) -> str | None:
        """The earlier state, for the ``flicker`` describes after the first that showed ``actual``."""
        if not self.flicker or actual not in EARLIER:
            return None
        with self._lock:
            if rid not in self.created:
                return None
            settled, left = self._flicker_left.get(rid, ("", 0))
            if settled != actual:
                self._flicker_left[rid] = (actual, self.flicker)  # this describe shows it settled
                return None
            if left <= 0:
                return None
            self._flicker_left[rid] = (actual, left - 1)
        self._play(f"flicker: {rid} shown {EARLIER[actual]} after {actual}")
        return EARLIER[actual]

    def _vanished(self, rid: str) -> bool:
        """True for the ``vanish`` describes after the first that showed ``rid`` (created through the layer)."""
        if not self.vanish:
            return False
        with self._lock:
            if rid not in self.created:
                return False
            left = self._vanish_left.get(rid)
            if left is None:
                self._vanish_left[rid] = self.vanish  # this describe shows it
                return False
            if left <= 0:
                return False
            self._vanish_left[rid] = left - 1
        self._play(f"vanish: {rid} missing from a describe after it was seen")
        return True

    def _lag_tags(self, rid: str, item: ET.Element, tag_filters: dict[str, set[str]] | None = None,
                  key_filters: list[set[str]] | None = None) -> bool:
        """Show the tags as before a recent CreateTags; a describe filtering on such a tag matches
        what is shown, as a replica that has not seen the CreateTags would (moto matched the new)."""
        tag_set = item.find(_q("tagSet"))
        if tag_set is None:
            return False
        with self._lock:
            keys, left = self._tag_lag.get(rid, (set(), 0))
            before = dict(self._tags_shown.get(rid, {}))
            if left > 0:
                self._tag_lag[rid] = (keys, left - 1)
        changed = False
        if left > 0:
            for tag in list(tag_set):
                key = tag.findtext(_q("key")) or ""
                if key not in keys:
                    continue
                if key in before:
                    value = tag.find(_q("value"))
                    if value is not None and value.text != before[key]:
                        value.text = before[key]
                        changed = True
                else:
                    tag_set.remove(tag)
                    changed = True
            if changed:
                self._play(f"tag lag: {rid} shown without its new {', '.join(sorted(keys))}")
        shown = {t.findtext(_q("key")) or "": t.findtext(_q("value")) or "" for t in tag_set}
        if left > 0 and (any(key in keys and shown.get(key) not in values for key, values in (tag_filters or {}).items())
                         or any(wanted & keys and not wanted & set(shown) for wanted in key_filters or [])):
            item.set("realism-unmatched", "1")
            self._play(f"tag lag: {rid} not matched by a filter on its new tag")
            return True
        with self._lock:
            self._tags_shown[rid] = shown
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

    def _rewrite_images(self, root: ET.Element, tag_filters: dict[str, set[str]],
                        key_filters: list[set[str]]) -> bool:
        changed = self._drop_items(root, "imagesSet", "imageId")
        for image in root.iter(_q("item")):
            image_id = image.findtext(_q("imageId"))
            state = image.find(_q("imageState"))
            if image_id is None or state is None:
                continue
            shown = self._shown_state(image_id, state.text or "")
            if shown is None and image_id in self.failed_images and state.text == "available":
                shown = "failed"
                reason = ET.SubElement(image, "stateReason")
                ET.SubElement(reason, "code").text = "Server.InternalError"
                ET.SubElement(reason, "message").text = "Server.InternalError: Internal error on snapshot creation (realism)"
                self._play(f"failed: image {image_id}")
            shown = shown or self._flickered(image_id, state.text or "")
            if shown:
                state.text = shown
                changed = True
            changed |= self._lag_tags(image_id, image, tag_filters, key_filters)
        return self._drop_unmatched(root) or changed

    def _rewrite_snapshots(self, root: ET.Element, tag_filters: dict[str, set[str]],
                           key_filters: list[set[str]]) -> bool:
        """Snapshots' tags lag as instances' and images' do (a snapshot is named by CreateTags alike)."""
        changed = False
        for snap in root.iter(_q("item")):
            snap_id = snap.findtext(_q("snapshotId"))
            if snap_id is not None and snap.find(_q("status")) is not None:
                changed |= self._lag_tags(snap_id, snap, tag_filters, key_filters)
        return self._drop_unmatched(root) or changed

    def _drop_unmatched(self, root: ET.Element) -> bool:
        """Remove the items ``_lag_tags`` marked: a tag filter the shown (older) tags do not match."""
        changed = False
        for parent in list(root.iter()):
            for child in list(parent):
                if child.get("realism-unmatched"):
                    parent.remove(child)
                    changed = True
        for reservation_set in root.iter(_q("reservationSet")):
            for reservation in list(reservation_set):
                instances = reservation.find(_q("instancesSet"))
                if instances is not None and len(instances) == 0:
                    reservation_set.remove(reservation)
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
                elif ids and all(self._vanished(i) for i in ids):
                    container.remove(item)
                    changed = True
        return changed

    def _play(self, what: str) -> None:
        with self._lock:
            self.played.append(re.sub(r"\s+", " ", what))
            hooks = [fn for prefix, fn in self.hooks.items() if what.startswith(prefix)]
        for fn in hooks:  # e.g. a test advancing its ManualClock once a behaviour was played n times
            fn()

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for p in self.played if p.startswith(prefix))
