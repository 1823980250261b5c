"""What a loaded catalogue is: typed, frozen role specs with the catalogue defaults merged in.

The keys a user writes, their types and descriptions are declared once, in ``models``; these are the
merged results the stages read (and the defaults of keys a catalogue leaves out).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CatalogError

ROLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
AMI_ID_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
# A base AMI published as an SSM parameter (``/aws/service/...`` of Amazon Linux, Windows, Ubuntu, or one
# of the account's own), resolved in the role's region at preflight.
SSM_BASE_AMI_PREFIX = "resolve:ssm:"
SSM_BASE_AMI_RE = re.compile(r"^resolve:ssm:(/[A-Za-z0-9_.\-/]{1,1010})$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
ACCOUNT_RE = re.compile(r"^\d{12}$")
S3_URL_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(\S+)$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
RUN_LIST_ITEM_RE = re.compile(r"^(recipe|role)\[[A-Za-z0-9_.:@-]+\]$")
SNS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")
# arn:aws:organizations::MGMT_ACCOUNT:organization/o-xxx or .../ou/o-xxx/ou-xxxx-xxxxxxxx
ORG_ARN_RE = re.compile(r"^arn:aws[a-z-]*:organizations::\d{12}:(organization/o-[a-z0-9]{10,32}"
                        r"|ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32})$")
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
# AWS's documented bundled installer of the AWS CLI v2 ("Installing or updating to the latest version of
# the AWS CLI"), for a Linux base that has no CLI and no distribution package of it; {arch} is uname -m.
AWS_CLI_INSTALLER = "https://awscli.amazonaws.com/awscli-exe-linux-{arch}.zip"
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
    # None: per platform, see RoleSpec.boot_test_timeout.
    timeout: int | None = None
    instance_type: str | None = None


@dataclass(frozen=True)
class FastLaunchSettings:
    """Windows Fast Launch (EC2 EnableFastLaunch): pre-provisioned snapshots and parallel launches."""

    target_snapshots: int = 5
    max_parallel_launches: int = 6


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
    # The ceiling of the instance role: whatever the policies say, the role can do no more than this.
    permissions_boundary: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    bootstrap_timeout: int = 45 * 60
    image_timeout: int = 60 * 60
    bake_ttl: int = 4 * 60 * 60
    copy_to_regions: tuple[str, ...] = ()
    share_with_accounts: tuple[str, ...] = ()
    share_with_organizations: tuple[str, ...] = ()
    # createVolumePermission on the snapshots too: the other accounts may copy the raw disk.
    share_snapshots: bool = False
    region_kms_keys: tuple[tuple[str, str], ...] = ()
    launch_template: str | None = None
    keep: int = 5
    # Days after publish at which EC2 deprecates the AMI (a newer AMI of the role deprecates it at once).
    deprecate_after: int = 90
    # Days: prune keeps an AMI launched from within them (EC2's LastLaunchedTime); None: no such rule.
    keep_if_launched_within: int | None = None
    # Windows: Fast Launch in every region before publishing (None: not enabled).
    fast_launch: FastLaunchSettings | None = None
    # Availability Zones (of the role's regions) with EBS fast snapshot restore on the AMI's snapshots.
    fast_snapshot_restore: tuple[str, ...] = ()
    boot_test: BootTestSettings = BootTestSettings()
    aws_cli_installer_url: str = AWS_CLI_INSTALLER

    @property
    def boot_test_timeout(self) -> int:
        """``boot_test.timeout`` if set, else per platform: 15 minutes on Linux; on Windows the test
        instance first goes through specialize and OOBE (up to 20 minutes), then its first boot waits
        up to 10 minutes for the metadata service and gives Chef the role's own first-boot deadline
        (``bootstrap_timeout``)."""
        if self.boot_test.timeout is not None:
            return self.boot_test.timeout
        if self.platform == "windows":
            return 30 * 60 + self.bootstrap_timeout
        return 15 * 60

    @property
    def regions(self) -> tuple[str, ...]:
        return (self.region, *[r for r in self.copy_to_regions if r != self.region])

    def restore_zones(self, region: str) -> list[str]:
        """The ``fast_snapshot_restore`` zones of ``region`` (a zone's name is its region's plus a letter)."""
        return [z for z in self.fast_snapshot_restore if z[:-1] == region]

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
            # Only when set: the bake keys of catalogues that never name it stay as they were.
            **({"aws_cli_installer_url": self.aws_cli_installer_url}
               if self.aws_cli_installer_url != AWS_CLI_INSTALLER else {}),
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
    bakery_version: str | None = None  # None: the version of the bakery that renders the jobs
    catalog_path: str = "bakery.yaml"

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
            raise CatalogError(self.path, f"no such role ({known_roles(name, self.roles)})", role=name) from None


# How many role names an error lists: a catalogue of 200 roles must not answer with one 1,800-character line.
KNOWN_ROLES_SHOWN = 8


def known_roles(name: str, roles: Iterable[str]) -> str:
    """``did you mean web, web2? known roles: a, b, ... (200 in all)`` for an unknown role ``name``."""
    names = sorted(roles)
    if not names:
        return "the catalogue has no roles"
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    shown = ", ".join(names[:KNOWN_ROLES_SHOWN]) + (f", ... ({len(names)} in all; `bakery validate` lists them)"
                                                    if len(names) > KNOWN_ROLES_SHOWN else "")
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{hint}known roles: {shown}"


def check_role_name(name: str, path: str = "<command line>") -> str:
    if not isinstance(name, str) or not ROLE_NAME_RE.match(name):
        raise CatalogError(
            path,
            f"invalid role name {name!r}: role names must match {ROLE_NAME_RE.pattern} "
            "(they become job names, AMI names, Chef node names, S3 keys and shell words)",
            role=str(name)[:80],
        )
    return name


def prop_key(role: str, region: str | None = None) -> str:
    """The ``amis.properties`` key of a role's AMI (in its build region, or in ``region``)."""
    def up(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9]", "_", text).upper()
    return f"AMI_{up(role)}" + (f"_{up(region)}" if region else "")
