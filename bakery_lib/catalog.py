"""Load and validate the roles catalogue (``bakery.yaml``) into typed role specs.

Every value a role can set may also be set under ``defaults``; a role's own value wins. Unknown keys
are errors, so a typo never falls back silently to a default. Every error names the file, the role
and the key, and is raised before anything else happens (exit code 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CatalogError

ROLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
AMI_ID_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
ACCOUNT_RE = re.compile(r"^\d{12}$")
S3_URL_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(\S+)$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
RUN_LIST_ITEM_RE = re.compile(r"^(recipe|role)\[[A-Za-z0-9_.:@-]+\]$")
SNS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")
POLICY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(aws|\d{12}):policy/[\w+=,.@/-]+$")
URL_RE = re.compile(r"^https?://[^\s'\"`$\\]+$")
# Tag keys/values and free text that ends up in scripts: printable, no control characters.
SAFE_TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f]*$")
JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SG_ID_RE = re.compile(r"^sg-[0-9a-f]{8,17}$")
SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")
VPC_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")

DEFAULT_CATALOG = "bakery.yaml"
# Tags a catalogue may set on one resource: AWS allows 50; the bakery and the instance set up to 10 of
# their own (Name, bakery:*, bakery:bootstrap and its detail).
MAX_USER_TAGS = 40


@dataclass(frozen=True)
class AmiFilter:
    """A base AMI given as a name pattern + owners: resolved to the newest available match."""

    name: str
    owners: tuple[str, ...]


@dataclass(frozen=True)
class IngressRule:
    protocol: str
    from_port: int
    to_port: int
    cidr: str | None = None
    source_group: str | None = None
    description: str = ""


# The Chef client a bake installs, per ``chef.distribution``: (Linux installer, Windows installer).
# Cinc (the free community build of Chef Infra) is the default: Chef's own downloads need a license
# since 2026, Cinc's omnitruck serves the same client anonymously.
CHEF_INSTALLERS = {
    "cinc": ("https://omnitruck.cinc.sh/install.sh", "https://omnitruck.cinc.sh/install.ps1"),
    "chef": ("https://chefdownload-commercial.chef.io/install.sh",
             "https://chefdownload-commercial.chef.io/install.ps1"),
}
SSM_PARAMETER_RE = re.compile(r"^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,14}$")


@dataclass(frozen=True)
class ChefSettings:
    server_url: str
    validation_client_name: str
    validation_key_s3: str
    client_version: str = "18"
    distribution: str = "cinc"
    installer_url: str = CHEF_INSTALLERS["cinc"][0]
    windows_installer_url: str = CHEF_INSTALLERS["cinc"][1]
    # Licensed Chef only: where the instance fetches its license key (never in user data).
    license_key_s3: str | None = None
    license_key_ssm: str | None = None
    # The base AMI already has the client: install nothing, fail clearly if it is missing.
    preinstalled: bool = False


@dataclass(frozen=True)
class BootTestSettings:
    """``boot_test``: the instance launched from every new AMI before it is published (stage boot-test).

    ``run_list`` empty: the role's launch run list from S3 (what production first boots run);
    ``why_run``: chef-client ``--why-run`` (resolves everything, converges nothing); ``command``: a
    health check run after it (shell on Linux, PowerShell on Windows); ``instance_type`` None: the
    role's own types. Not part of the bake key: the test does not shape the image.
    """

    enabled: bool = True
    run_list: tuple[str, ...] = ()
    why_run: bool = True
    command: str | None = None
    timeout: int = 15 * 60
    instance_type: str | None = None


@dataclass(frozen=True)
class RoleSpec:
    """One role with the catalogue defaults merged in."""

    name: str
    platform: str
    base_ami: str | AmiFilter
    region: str
    instance_type: str
    runlist_bucket: str
    alert_topic_arn: str
    chef: ChefSettings
    run_list_ami: tuple[str, ...]
    run_list_launch: tuple[str, ...]
    subnet_id: str | None = None
    vpc_id: str | None = None
    # Fallback order for capacity errors: launch tries each type in each subnet (first = instance_type/subnet_id).
    instance_types: tuple[str, ...] = ()
    subnet_ids: tuple[str, ...] = ()
    sysprep_timeout: int = 20 * 60
    volume_size: int = 30
    volume_type: str = "gp3"
    kms_key_id: str | None = None
    ingress: tuple[IngressRule, ...] = ()
    managed_policies: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    bootstrap_timeout: int = 45 * 60
    image_timeout: int = 60 * 60
    bake_ttl: int = 4 * 60 * 60
    copy_to_regions: tuple[str, ...] = ()
    share_with_accounts: tuple[str, ...] = ()
    region_kms_keys: tuple[tuple[str, str], ...] = ()
    launch_template: str | None = None
    keep: int = 5
    boot_test: BootTestSettings = BootTestSettings()

    @property
    def regions(self) -> tuple[str, ...]:
        return (self.region, *[r for r in self.copy_to_regions if r != self.region])

    @property
    def runlist_key(self) -> str:
        return f"runlists/{self.name}.json"

    def shaping_settings(self) -> dict[str, Any]:
        """Every setting that shapes the image, for the bake key (not timeouts or publish targets)."""
        return {
            "platform": self.platform,
            "instance_type": self.instance_type,
            "run_list_ami": list(self.run_list_ami),
            "run_list_launch": list(self.run_list_launch),
            "volume_size": self.volume_size,
            "volume_type": self.volume_type,
            "kms_key_id": self.kms_key_id,
            "chef": dataclasses.asdict(self.chef),
            "runlist_bucket": self.runlist_bucket,
            "alert_topic_arn": self.alert_topic_arn,
        }


@dataclass(frozen=True)
class JenkinsSettings:
    job_prefix: str = "ami-bake-"
    folder: str | None = None
    upstream_jobs: tuple[str, ...] = ()
    scm_url: str = ""
    scm_branch: str = "main"
    script_path: str = "jenkins/Jenkinsfile"
    scm_credentials_id: str | None = None
    agent_label: str | None = None
    keep_builds: int = 30
    release_job: str | None = None
    view: str | None = None
    allow_built_in_node: bool = False  # agent_label / AGENT_LABEL may be the controller's node (built-in, master)

    def job_name(self, role: str) -> str:
        return f"{self.job_prefix}{role}"


@dataclass(frozen=True)
class Catalog:
    path: str
    roles: dict[str, RoleSpec]
    jenkins: JenkinsSettings
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    def role(self, name: str) -> RoleSpec:
        check_role_name(name, self.path)
        try:
            return self.roles[name]
        except KeyError:
            known = ", ".join(sorted(self.roles)) or "none"
            raise CatalogError(self.path, f"no such role (known roles: {known})", role=name) from None


def check_role_name(name: str, path: str = "<command line>") -> str:
    if not isinstance(name, str) or not ROLE_NAME_RE.match(name):
        raise CatalogError(
            path,
            f"invalid role name {name!r}: role names must match {ROLE_NAME_RE.pattern} "
            "(they become job names, AMI names, Chef node names, S3 keys and shell words)",
            role=str(name)[:80],
        )
    return name


# ---------------------------------------------------------------------------------------------
# Validation helpers. Each takes (value, ctx) where ctx raises CatalogError with file/role/key.


class _Ctx:
    def __init__(self, path: str, role: str | None, key: str):
        self.path, self.role, self.key = path, role, key

    def sub(self, key: str) -> _Ctx:
        return _Ctx(self.path, self.role, f"{self.key}.{key}" if self.key else key)

    def fail(self, message: str) -> CatalogError:
        return CatalogError(self.path, message, role=self.role, key=self.key)


def _text(pattern: re.Pattern[str] | None = None, what: str = "") -> Callable[[Any, _Ctx], str]:
    def check(value: Any, ctx: _Ctx) -> str:
        if not isinstance(value, str) or not value:
            raise ctx.fail(f"expected a non-empty string, got {type(value).__name__} {value!r}")
        if not SAFE_TEXT_RE.match(value) or len(value) > 1024:
            raise ctx.fail("must be at most 1024 characters without control characters")
        if pattern is not None and not pattern.match(value):
            raise ctx.fail(f"{value!r} is not {what or 'valid'} (expected {pattern.pattern})")
        return value

    return check


def _int(lo: int, hi: int) -> Callable[[Any, _Ctx], int]:
    def check(value: Any, ctx: _Ctx) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.fail(f"expected an integer, got {type(value).__name__} {value!r}")
        if not lo <= value <= hi:
            raise ctx.fail(f"{value} is out of range {lo}..{hi}")
        return value

    return check


_DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h)?$")


def _duration(value: Any, ctx: _Ctx) -> int:
    """Seconds, given as an integer (minutes) or a string like '45m', '2h', '90s'."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value * 60
    elif isinstance(value, str) and (m := _DURATION_RE.match(value.strip())):
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 60}[m.group(2)]
    else:
        raise ctx.fail(f"expected a duration (minutes, or like '45m', '2h'), got {value!r}")
    if not 1 <= seconds <= 48 * 3600:
        raise ctx.fail(f"{value!r} is out of range (1 s .. 48 h)")
    return seconds


def _list(item: Callable[[Any, _Ctx], Any], *, max_len: int = 1000) -> Callable[[Any, _Ctx], tuple]:
    def check(value: Any, ctx: _Ctx) -> tuple:
        if not isinstance(value, list):
            raise ctx.fail(f"expected a list, got {type(value).__name__}")
        if len(value) > max_len:
            raise ctx.fail(f"at most {max_len} items")
        return tuple(item(v, ctx.sub(str(i))) for i, v in enumerate(value))

    return check


def _choice(*choices: str) -> Callable[[Any, _Ctx], str]:
    def check(value: Any, ctx: _Ctx) -> str:
        if value not in choices:
            raise ctx.fail(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _mapping(value: Any, ctx: _Ctx) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.fail(f"expected a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ctx.sub(str(k)).fail("keys must be strings")
    return value


def _s3_url(value: Any, ctx: _Ctx) -> str:
    return _text(S3_URL_RE, "an s3://BUCKET/KEY URL")(value, ctx)


def _base_ami(value: Any, ctx: _Ctx) -> str | AmiFilter:
    if isinstance(value, str):
        return _text(AMI_ID_RE, "an AMI id")(value, ctx)
    m = _mapping(value, ctx)
    _no_unknown(m, {"name", "owners"}, ctx)
    if "name" not in m:
        raise ctx.sub("name").fail("missing (a name pattern such as 'CentOS 7*')")
    name = _text()(m["name"], ctx.sub("name"))
    owners = _list(_text(re.compile(r"^(\d{12}|amazon|aws-marketplace|self)$"), "an owner"))(
        m.get("owners", ["self"]), ctx.sub("owners")
    )
    if not owners:
        raise ctx.sub("owners").fail("at least one owner is required")
    return AmiFilter(name=name, owners=owners)


def _cidr(value: Any, ctx: _Ctx) -> str:
    """An IPv4 network as AWS stores it. AWS masks host bits away (10.0.0.28/29 becomes 10.0.0.24/29), so
    a rule given with host bits would never match the group's rule again: refuse it and name the network."""
    text = _text()(value, ctx)
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise ctx.fail(f"{text!r} is not an IPv4 CIDR such as 10.0.0.0/8 ({exc})") from None
    if "/" not in text:
        raise ctx.fail(f"{text!r} has no prefix length: write {net} for one address")
    if str(net) != text:
        raise ctx.fail(f"{text!r} has host bits set; AWS would store it as {net}: write {net}")
    return text


def _ports(m: Mapping[str, Any], protocol: str, ctx: _Ctx) -> tuple[int, int]:
    """(from_port, to_port) as AWS accepts them for ``protocol``.

    tcp/udp: 0..65535 with from <= to; icmp: ICMP type and code, -1..255 each (-1 = all);
    -1 (all traffic): no ports (AWS ignores them and reports -1, which would never match)."""
    if protocol == "-1":
        for key in ("port", "from_port", "to_port"):
            if key in m and m[key] != -1:
                raise ctx.sub(key).fail("protocol -1 (all traffic) takes no ports: remove this key")
        return -1, -1
    lo, hi = (-1, 255) if protocol == "icmp" else (0, 65535)
    if "port" in m:
        if "from_port" in m or "to_port" in m:
            raise ctx.sub("port").fail("give either port or from_port and to_port, not both")
        port = _int(lo, hi)(m["port"], ctx.sub("port"))
        return port, port
    if "from_port" in m and "to_port" in m:
        from_port = _int(lo, hi)(m["from_port"], ctx.sub("from_port"))
        to_port = _int(lo, hi)(m["to_port"], ctx.sub("to_port"))
        if protocol != "icmp" and from_port > to_port:
            raise ctx.sub("from_port").fail(f"from_port {from_port} is greater than to_port {to_port}")
        return from_port, to_port
    raise ctx.sub("port").fail("missing (give port, or from_port and to_port)")


def _ingress_rule(value: Any, ctx: _Ctx) -> IngressRule:
    m = _mapping(value, ctx)
    _no_unknown(m, {"protocol", "port", "from_port", "to_port", "cidr", "source_group", "description"}, ctx)
    protocol = _choice("tcp", "udp", "icmp", "-1")(m.get("protocol", "tcp"), ctx.sub("protocol"))
    from_port, to_port = _ports(m, protocol, ctx)
    cidr = _cidr(m["cidr"], ctx.sub("cidr")) if "cidr" in m else None
    source = _text(SG_ID_RE, "a security group id")(m["source_group"], ctx.sub("source_group")) if "source_group" in m else None
    if (cidr is None) == (source is None):
        raise ctx.sub("cidr").fail("give exactly one of cidr or source_group")
    desc = _text(re.compile(r"^[A-Za-z0-9 ._:/()#,@\[\]+=&;{}!$*-]{0,255}$"), "a rule description")(
        m["description"], ctx.sub("description")
    ) if "description" in m else ""
    return IngressRule(protocol, from_port, to_port, cidr, source, desc)


def _tags(value: Any, ctx: _Ctx) -> tuple[tuple[str, str], ...]:
    m = _mapping(value, ctx)
    out = []
    for k, v in m.items():
        if k.lower().startswith(("aws:", "bakery:")):
            raise ctx.sub(k).fail("tag keys starting with 'aws:' or 'bakery:' are reserved")
        _text(re.compile(r"^.{1,128}$"), "a tag key")(k, ctx.sub(k))
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ctx.sub(k).fail("tag values must be strings")
        out.append((k, _text(re.compile(r"^.{1,256}$"), "a tag value")(str(v), ctx.sub(k))))
    return tuple(out)


def _region_keys(value: Any, ctx: _Ctx) -> tuple[tuple[str, str], ...]:
    m = _mapping(value, ctx)
    return tuple((_text(REGION_RE, "a region")(k, ctx.sub(k)), _text()(v, ctx.sub(k))) for k, v in m.items())


def _no_unknown(m: Mapping[str, Any], allowed: set[str], ctx: _Ctx) -> None:
    for k in m:
        if k not in allowed:
            hint = _closest(k, allowed)
            raise ctx.sub(str(k)).fail("unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))


def _closest(word: str, choices: set[str]) -> str | None:
    found = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.7)
    return found[0] if found else None


def _bool(value: Any, ctx: _Ctx) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(f"expected true or false, got {value!r}")
    return value


_CHEF_KEYS: dict[str, Callable[[Any, _Ctx], Any]] = {
    "server_url": _text(URL_RE, "an http(s) URL"),
    "validation_client_name": _text(re.compile(r"^[A-Za-z0-9_.-]{1,128}$"), "a Chef client name"),
    "validation_key_s3": _s3_url,
    "client_version": _text(re.compile(r"^[0-9][0-9.]{0,15}$"), "a Chef client version"),
    "installer_url": _text(URL_RE, "an http(s) URL"),
    "windows_installer_url": _text(URL_RE, "an http(s) URL"),
    "distribution": _choice(*CHEF_INSTALLERS),
    "license_key_s3": _s3_url,
    "license_key_ssm": _text(SSM_PARAMETER_RE, "an SSM parameter name such as /bakery/chef-license"),
    "preinstalled": _bool,
}

# A boot test's health command: free text (several lines are fine), carried base64 in the user data.
BOOT_TEST_COMMAND_MAX = 4096
_COMMAND_RE = re.compile(r"^[^\x00-\x08\x0b-\x1f\x7f]*$")


def _command(value: Any, ctx: _Ctx) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ctx.fail(f"expected a non-empty string (a shell / PowerShell command), got {value!r}")
    if len(value) > BOOT_TEST_COMMAND_MAX or not _COMMAND_RE.match(value):
        raise ctx.fail(f"must be at most {BOOT_TEST_COMMAND_MAX} characters without control characters "
                       "(newlines and tabs are fine)")
    return value


_RUN_LIST_ITEM = _text(RUN_LIST_ITEM_RE, "a run list item like recipe[cookbook::recipe] or role[name]")


def _run_list(value: Any, ctx: _Ctx) -> tuple[str, ...]:
    items = _list(_RUN_LIST_ITEM, max_len=100)(value, ctx)
    if not items:
        raise ctx.fail("a run list must not be empty (leave the key out for the default)")
    return items


_BOOT_TEST_KEYS: dict[str, Callable[[Any, _Ctx], Any]] = {
    "enabled": _bool,
    "run_list": _run_list,
    "why_run": _bool,
    "command": _command,
    "timeout": _duration,
    "instance_type": _text(INSTANCE_TYPE_RE, "an instance type"),
}


def _boot_test(value: Any, ctx: _Ctx) -> dict[str, Any]:
    """The keys a ``boot_test`` mapping sets (merged per key: a role's keys over the defaults')."""
    m = _mapping(value if value is not None else {}, ctx)
    _no_unknown(m, set(_BOOT_TEST_KEYS), ctx)
    return {k: _BOOT_TEST_KEYS[k](v, ctx.sub(k)) for k, v in m.items()}


# Keys settable under defaults and under each role, with their validators.
_ROLE_KEYS: dict[str, Callable[[Any, _Ctx], Any]] = {
    "region": _text(REGION_RE, "an AWS region"),
    "instance_type": _text(INSTANCE_TYPE_RE, "an instance type"),
    "runlist_bucket": _text(BUCKET_RE, "an S3 bucket name"),
    "alert_topic_arn": _text(SNS_ARN_RE, "an SNS topic ARN"),
    "subnet_id": _text(SUBNET_RE, "a subnet id"),
    "instance_types": _list(_text(INSTANCE_TYPE_RE, "an instance type"), max_len=20),
    "subnet_ids": _list(_text(SUBNET_RE, "a subnet id"), max_len=20),
    "sysprep_timeout": _duration,
    "vpc_id": _text(VPC_RE, "a VPC id"),
    "volume_size": _int(8, 16384),
    "volume_type": _choice("gp2", "gp3", "io1", "io2"),
    "kms_key_id": _text(re.compile(r"^(arn:aws[a-z-]*:kms:\S+|alias/[\w/-]+|[0-9a-f-]{36})$"), "a KMS key"),
    "ingress": _list(_ingress_rule, max_len=60),
    "managed_policies": _list(_text(POLICY_ARN_RE, "an IAM policy ARN"), max_len=10),
    "tags": _tags,
    "bootstrap_timeout": _duration,
    "image_timeout": _duration,
    "bake_ttl": _duration,
    "copy_to_regions": _list(_text(REGION_RE, "an AWS region"), max_len=30),
    "share_with_accounts": _list(_text(ACCOUNT_RE, "a 12-digit account id"), max_len=100),
    "region_kms_keys": _region_keys,
    "launch_template": _text(re.compile(r"^[A-Za-z0-9()./_-]{3,128}$"), "a launch template name"),
    "keep": _int(1, 1000),
}
_ROLE_ONLY_KEYS = {"platform", "base_ami", "run_lists"}
_REQUIRED = ("region", "runlist_bucket", "alert_topic_arn")

_JENKINS_KEYS: dict[str, Callable[[Any, _Ctx], Any]] = {
    # Not empty: jobs are named PREFIX + role, which keeps them apart from the other jobs on the Jenkins.
    "job_prefix": _text(re.compile(r"^[A-Za-z0-9_.-]{1,40}$"), "a job name prefix"),
    "folder": _text(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,63})*$"), "a folder path"),
    "upstream_jobs": _list(_text(re.compile(r"^[^\x00-\x1f\x7f,]{1,255}$"), "a job name"), max_len=50),
    "scm_url": _text(),
    "scm_branch": _text(re.compile(r"^[^\x00-\x20\x7f~^:?*\[\\]{1,200}$"), "a branch name"),
    "script_path": _text(re.compile(r"^[A-Za-z0-9_./-]{1,200}$"), "a path in the repository"),
    "scm_credentials_id": _text(),
    # One label name, as the Jenkinsfiles accept AGENT_LABEL (no label expressions).
    "agent_label": _text(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"), "a Jenkins label name"),
    "keep_builds": _int(1, 10000),
    "release_job": _text(JOB_NAME_RE, "a job name"),
    "view": _text(),
    "allow_built_in_node": _bool,
}


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read, validate and merge the catalogue. Raises CatalogError (exit 2) on any problem."""
    p = Path(path or DEFAULT_CATALOG)  # the CLI resolves --catalog / BAKERY_CATALOG (Settings)
    shown = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(shown, "file not found (give --catalog PATH or set BAKERY_CATALOG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(shown, f"cannot read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise CatalogError(shown, "invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CatalogError(shown, f"invalid YAML{where}: {problem}") from None
    return parse_catalog(data, shown)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: a second `web:` must not silently replace the first."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key is reported by the validation ("keys must be strings")
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_catalog(data: Any, path: str = "<catalogue>") -> Catalog:
    top = _Ctx(path, None, "")
    if not isinstance(data, Mapping):
        raise top.fail("the catalogue must be a mapping with 'defaults', 'jenkins' and 'roles'")
    _mapping(data, top)
    _no_unknown(data, {"defaults", "jenkins", "roles"}, top)

    defaults_raw = _mapping(data.get("defaults") or {}, top.sub("defaults"))
    dctx = top.sub("defaults")
    _no_unknown(defaults_raw, set(_ROLE_KEYS) | {"chef", "boot_test"}, dctx)
    defaults = {k: _ROLE_KEYS[k](v, dctx.sub(k)) for k, v in defaults_raw.items() if k not in ("chef", "boot_test")}
    boot_test_defaults = _boot_test(defaults_raw.get("boot_test"), dctx.sub("boot_test"))
    chef_defaults = _mapping(defaults_raw.get("chef") or {}, dctx.sub("chef"))
    _no_unknown(chef_defaults, set(_CHEF_KEYS), dctx.sub("chef"))
    chef_defaults = {k: _CHEF_KEYS[k](v, dctx.sub("chef").sub(k)) for k, v in chef_defaults.items()}

    jenkins = _parse_jenkins(data.get("jenkins") or {}, top.sub("jenkins"))

    roles_raw = data.get("roles")
    if roles_raw is None:
        raise top.sub("roles").fail("missing (a mapping of role name to role settings)")
    roles_raw = _mapping(roles_raw, top.sub("roles"))
    if len(roles_raw) > 5000:
        raise top.sub("roles").fail(f"{len(roles_raw)} roles; at most 5000 are supported in one catalogue")
    roles: dict[str, RoleSpec] = {}
    for name, raw in roles_raw.items():
        check_role_name(name, path)
        roles[name] = _parse_role(name, raw, defaults, chef_defaults, path, boot_test_defaults)
    _no_artifact_collisions(roles, path)
    return Catalog(path=path, roles=roles, jenkins=jenkins, raw=data)


def _no_artifact_collisions(roles: Mapping[str, RoleSpec], path: str) -> None:
    """Refuse role names whose build artifacts would overwrite another's.

    ``artifacts/amis.json`` is the aggregate, so no role may be called ``amis``; ``amis.properties``
    upper-cases names with every non-alphanumeric as ``_``, so ``orders-api`` and ``orders_api`` (or a
    role ``web`` in region X and a role ``web-x`` ...) would write the same ``AMI_...`` key: the last wins."""
    if "amis" in roles:
        raise CatalogError(path, "role name 'amis' is reserved: artifacts/amis.json is the aggregate of "
                                 "every role's AMIs; rename the role", role="amis")
    keys: dict[str, str] = {}
    for name, role in sorted(roles.items()):
        own = [prop_key(name)] + [prop_key(name, region) for region in role.regions]
        for key in own:
            other = keys.get(key)
            if other is not None and other != name:
                raise CatalogError(path, f"roles {other!r} and {name!r} would both write {key}= in "
                                         "artifacts/amis.properties (names are upper-cased with every "
                                         "non-alphanumeric as '_'); rename one of them", role=name)
            keys[key] = name


def prop_key(role: str, region: str | None = None) -> str:
    """The ``amis.properties`` key of a role's AMI (in its build region, or in ``region``)."""
    def up(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9]", "_", text).upper()
    return f"AMI_{up(role)}" + (f"_{up(region)}" if region else "")


def _chef_client_choice(chef: dict[str, Any], ctx: _Ctx, own: set[str]) -> None:
    """Installer URLs default per distribution; licensed Chef needs a license key source, Cinc none.

    ``own``: the keys the role sets itself. A role that chooses Cinc over licensed Chef in the defaults
    does not inherit the defaults' license key source (it could not unset it)."""
    dist = chef.setdefault("distribution", "cinc")
    if dist == "cinc" and "distribution" in own:
        for key in ("license_key_s3", "license_key_ssm"):
            if key not in own:
                chef.pop(key, None)
    chef.setdefault("installer_url", CHEF_INSTALLERS[dist][0])
    chef.setdefault("windows_installer_url", CHEF_INSTALLERS[dist][1])
    sources = [k for k in ("license_key_s3", "license_key_ssm") if chef.get(k)]
    if len(sources) > 1:
        raise ctx.sub("chef.license_key_ssm").fail("give one of license_key_s3 or license_key_ssm, not both")
    if dist == "cinc" and sources:
        raise ctx.sub(f"chef.{sources[0]}").fail("Cinc needs no license key: remove it, or set distribution: chef")
    if dist == "chef" and not sources and not chef.get("preinstalled"):
        raise ctx.sub("chef.license_key_s3").fail(
            "missing: Chef's downloads (and Chef 19's client) need a license key; give license_key_s3 or "
            "license_key_ssm (fetched by the instance with its role), set preinstalled: true, or use "
            "distribution: cinc (free, no license)")


def _fallback_lists(values: dict[str, Any], m: Mapping[str, Any], defaults: Mapping[str, Any], ctx: _Ctx) -> None:
    """``instance_type``/``instance_types`` and ``subnet_id``/``subnet_ids``: one or the other per level;
    the role's choice replaces the defaults' whole; the singular is the list's first item."""
    for single, plural in (("instance_type", "instance_types"), ("subnet_id", "subnet_ids")):
        if single in defaults and plural in defaults:
            raise _Ctx(ctx.path, None, f"defaults.{plural}").fail(f"give either {single} or {plural}, not both")
        if single in m and plural in m:
            raise ctx.sub(plural).fail(f"give either {single} or {plural}, not both")
        source = m if (single in m or plural in m) else defaults
        if plural in source:
            items = values[plural]
            if not items:
                raise ctx.sub(plural).fail("must not be empty (leave the key out for the default)")
            if len(set(items)) != len(items):
                raise ctx.sub(plural).fail(f"lists {sorted({i for i in items if items.count(i) > 1})} twice")
            values[single] = items[0]
        else:
            values[plural] = (values[single],) if values.get(single) else ()


def _parse_jenkins(raw: Any, ctx: _Ctx) -> JenkinsSettings:
    m = _mapping(raw, ctx)
    _no_unknown(m, set(_JENKINS_KEYS), ctx)
    values = {k: _JENKINS_KEYS[k](v, ctx.sub(k)) for k, v in m.items()}
    label = str(values.get("agent_label") or "")
    if ".." in label or (label.lower() in ("built-in", "master") and not values.get("allow_built_in_node")):
        raise ctx.sub("agent_label").fail(
            f"{label!r} is not an agent label (no '..'; built-in and master are the controller's own node: "
            "set jenkins.allow_built_in_node: true to bake there)")
    return JenkinsSettings(**values)


def _role_values(m: Mapping[str, Any], defaults: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """The role's plain keys over the defaults' (placement lists and tags merged)."""
    values: dict[str, Any] = {"instance_type": "t3.medium", **defaults}
    for k, v in m.items():
        if k in _ROLE_KEYS:
            values[k] = _ROLE_KEYS[k](v, ctx.sub(k))
    _fallback_lists(values, m, defaults, ctx)
    # Tags merge (as chef does): a role adds to or overrides defaults.tags, it never drops cost tags.
    values["tags"] = tuple({**dict(defaults.get("tags", ())), **dict(values.get("tags", ()))}.items())
    if len(values["tags"]) > MAX_USER_TAGS:
        raise ctx.sub("tags").fail(
            f"{len(values['tags'])} tags with defaults.tags; at most {MAX_USER_TAGS} (AWS allows 50 per "
            f"resource and the bakery sets {50 - MAX_USER_TAGS})")
    return values


def _role_chef(m: Mapping[str, Any], chef_defaults: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """The role's ``chef`` keys over ``defaults.chef``, with the client choice checked."""
    chef_raw = dict(chef_defaults)
    role_chef = _mapping(m.get("chef") or {}, ctx.sub("chef"))
    _no_unknown(role_chef, set(_CHEF_KEYS), ctx.sub("chef"))
    chef_raw.update({k: _CHEF_KEYS[k](v, ctx.sub("chef").sub(k)) for k, v in role_chef.items()})
    for key in ("server_url", "validation_client_name", "validation_key_s3"):
        if key not in chef_raw:
            raise ctx.sub(f"chef.{key}").fail("missing (set it under defaults.chef or on the role)")
    _chef_client_choice(chef_raw, ctx, set(role_chef))
    return chef_raw


def _role_run_lists(name: str, m: Mapping[str, Any], ctx: _Ctx) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ami and launch run lists (defaults: ``recipe[roles::ROLE_ami]`` / ``_launch``); never empty."""
    run_lists = _mapping(m.get("run_lists") or {}, ctx.sub("run_lists"))
    _no_unknown(run_lists, {"ami", "launch"}, ctx.sub("run_lists"))
    item = _text(RUN_LIST_ITEM_RE, "a run list item like recipe[cookbook::recipe] or role[name]")
    out: list[tuple[str, ...]] = []
    for kind in ("ami", "launch"):
        key = f"run_lists.{kind}"
        lst = _list(item, max_len=100)(run_lists[kind], ctx.sub(key)) if kind in run_lists else (
            f"recipe[roles::{name}_{kind}]",)
        if not lst:
            raise ctx.sub(key).fail("a run list must not be empty")
        out.append(tuple(lst))
    return out[0], out[1]


def _parse_role(name: str, raw: Any, defaults: dict[str, Any], chef_defaults: dict[str, Any], path: str,
                boot_test_defaults: dict[str, Any]) -> RoleSpec:
    ctx = _Ctx(path, name, "")
    m = _mapping(raw if raw is not None else {}, ctx)
    _no_unknown(m, set(_ROLE_KEYS) | _ROLE_ONLY_KEYS | {"chef", "boot_test"}, ctx)
    values = _role_values(m, defaults, ctx)
    if "platform" not in m:
        raise ctx.sub("platform").fail("missing (linux or windows)")
    platform = _choice("linux", "windows")(m["platform"], ctx.sub("platform"))
    if "base_ami" not in m:
        raise ctx.sub("base_ami").fail("missing (an AMI id, or {name: PATTERN, owners: [...]})")
    base_ami = _base_ami(m["base_ami"], ctx.sub("base_ami"))
    for key in _REQUIRED:
        if key not in values:
            raise ctx.sub(key).fail("missing (set it under defaults or on the role)")

    chef_raw = _role_chef(m, chef_defaults, ctx)
    ami_list, launch_list = _role_run_lists(name, m, ctx)
    # A subnet without a vpc_id is fine: the VPC is looked up from the subnet at run time.
    return RoleSpec(
        name=name,
        platform=platform,
        base_ami=base_ami,
        chef=ChefSettings(**chef_raw),
        boot_test=BootTestSettings(**{**boot_test_defaults, **_boot_test(m.get("boot_test"), ctx.sub("boot_test"))}),
        run_list_ami=ami_list,
        run_list_launch=launch_list,
        **values,
    )
