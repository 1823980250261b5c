# The key types are made by factories (Text(PATTERN), Int(LO, HI), ...): pydantic reads them, mypy cannot
# (a call in an annotation); a key left out is None, which no value type admits (a null is refused).
# mypy: disable-error-code="valid-type,assignment"
"""The catalogue's keys, declared once: pydantic models of what a user writes in ``bakery.yaml``.

Each key has its type (``types``), its description (for the JSON Schema and the generated reference)
and, where keys depend on each other, a model validator. Unknown keys are refused (``extra="forbid"``).
Defaults and merging live in ``merge``: a key left out here is ``None`` / unset, so a role can tell
"not given" (take ``defaults``) from a value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
    model_validator,
)

from .specs import (
    ACCOUNT_RE,
    AMI_ID_RE,
    BUCKET_RE,
    CHEF_INSTALLERS,
    INSTANCE_TYPE_RE,
    JOB_NAME_RE,
    ORG_ARN_RE,
    POLICY_ARN_RE,
    REGION_RE,
    RUN_LIST_ITEM_RE,
    S3_URL_RE,
    SG_ID_RE,
    SNS_ARN_RE,
    SSM_BASE_AMI_PREFIX,
    SSM_BASE_AMI_RE,
    SSM_PARAMETER_RE,
    SUBNET_RE,
    URL_RE,
    VPC_RE,
)
from .types import (
    Bool,
    Choice,
    Cidr,
    Days,
    Duration,
    Int,
    List,
    Pairs,
    Text,
    check_int,
    check_mapping,
    check_text,
    fail,
)

# Role and defaults keys whose absence has its own hint (the rest: "set it under defaults or on the role").
MISSING_HINTS = {
    "platform": "missing (linux or windows)",
    "base_ami": "missing (an AMI id, resolve:ssm:/PARAMETER, or {name: PATTERN, owners: [...]})",
    "name": "missing (a name pattern such as 'CentOS 7*')",
    "roles": "missing (a mapping of role name to role settings)",
}
BOOT_TEST_COMMAND_MAX = 4096
_COMMAND_RE = re.compile(r"^[^\x00-\x08\x0b-\x1f\x7f]*$")


class Strict(BaseModel):
    """A mapping of known keys: anything else is an unknown key (with a did-you-mean hint)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, value: Any) -> Any:
        return check_mapping(value)


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


# A mapping key that may be left empty (`chef:` with nothing under it): the same as no key.
MaybeEmpty = BeforeValidator(_none_is_empty)


RunListItem = Text(RUN_LIST_ITEM_RE, "a run list item like recipe[cookbook::recipe] or role[name]")
InstanceType = Text(INSTANCE_TYPE_RE, "an instance type")
Region = Text(REGION_RE, "an AWS region")


def _check_command(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        fail(f"expected a non-empty string (a shell / PowerShell command), got {value!r}")
    if len(value) > BOOT_TEST_COMMAND_MAX or not _COMMAND_RE.match(value):
        fail(f"must be at most {BOOT_TEST_COMMAND_MAX} characters without control characters "
             "(newlines and tabs are fine)")
    return value


def _check_tag_key(key: str) -> str:
    if key.lower().startswith(("aws:", "bakery:")):
        fail("tag keys starting with 'aws:' or 'bakery:' are reserved")
    return check_text(key, re.compile(r"^.{1,128}$"), "a tag key")


def _check_tag_value(value: Any, _key: str) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        fail("tag values must be strings")
    return check_text(str(value), re.compile(r"^.{1,256}$"), "a tag value")


Tags = Pairs(_check_tag_key, _check_tag_value, {
    "type": "object", "maxProperties": 40,
    "propertyNames": {"minLength": 1, "maxLength": 128, "not": {"pattern": "^(?i:aws|bakery):"}},
    "additionalProperties": {"type": ["string", "number"]}})
RegionKeys = Pairs(lambda k: check_text(k, REGION_RE, "a region"), lambda v, _k: check_text(v), {
    "type": "object", "propertyNames": {"pattern": REGION_RE.pattern},
    "additionalProperties": {"type": "string", "minLength": 1}})
Command = Annotated[str, PlainValidator(_check_command),
                    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": BOOT_TEST_COMMAND_MAX})]


def _run_list(value: Any) -> Any:
    if isinstance(value, list) and not value:
        fail("a run list must not be empty (leave the key out for the default)")
    return value


RunList = Annotated[List(RunListItem, 100), BeforeValidator(_run_list)]


class AmiFilterIn(Strict):
    """A base AMI given as a name pattern and owners: the newest available match is used."""

    name: Annotated[Text(), Field(description="AMI name pattern, e.g. 'CentOS 7*' (`*` matches anything)")]
    owners: Annotated[
        List(Text(re.compile(r"^(\d{12}|amazon|aws-marketplace|self)$"), "an owner")),
        Field(description="who may own the AMI: account ids, amazon, aws-marketplace or self")] = ("self",)

    @model_validator(mode="after")
    def _some_owner(self) -> AmiFilterIn:
        if not self.owners:
            fail("at least one owner is required", "owners")
        return self


def _ami_kind(value: Any) -> str:
    if isinstance(value, str):
        return "ssm" if value.startswith(SSM_BASE_AMI_PREFIX) else "id"
    return "filter"


BaseAmi = Annotated[
    Annotated[Text(AMI_ID_RE, "an AMI id"), Tag("id")]
    | Annotated[Text(SSM_BASE_AMI_RE, "an SSM parameter reference such as "
                     "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"), Tag("ssm")]
    | Annotated[AmiFilterIn, Tag("filter")],
    Discriminator(_ami_kind)]
# Discriminator tags that pydantic puts in an error's location; a user never wrote them.
UNION_TAGS = frozenset({"id", "ssm", "filter"})


# A port, or an ICMP type or code: its range depends on the protocol (checked by IngressIn.ports).
Port = Annotated[Any, WithJsonSchema({"type": "integer", "minimum": -1, "maximum": 65535})]


class IngressIn(Strict):
    """One inbound rule of the bake instance's security group (given to AWS as written)."""

    protocol: Annotated[Choice("tcp", "udp", "icmp", "-1"),
                        Field(description="tcp, udp, icmp, or -1 for all traffic (then no ports)")] = "tcp"
    port: Annotated[Port, Field(description="one port (tcp/udp 0..65535; icmp: the ICMP type)")] = None
    from_port: Annotated[Port, Field(description="first port of a range (with to_port)")] = None
    to_port: Annotated[Port, Field(description="last port of a range (icmp: the ICMP code, -1 all)")] = None
    cidr: Annotated[Cidr, Field(description="IPv4 network the rule admits, as AWS stores it")] = None
    source_group: Annotated[Text(SG_ID_RE, "a security group id"),
                            Field(description="security group the rule admits (instead of cidr)")] = None
    description: Annotated[
        Text(re.compile(r"^[A-Za-z0-9 ._:/()#,@\[\]+=&;{}!$*-]{0,255}$"), "a rule description"),
        Field(description="the rule's description in AWS")] = None

    @model_validator(mode="before")
    @classmethod
    def _ports_are_ints(cls, value: Any) -> Any:
        # Range depends on the protocol, checked after; the type here, so "port: big" names the key.
        if isinstance(value, dict):
            for key in ("port", "from_port", "to_port"):
                if key in value:
                    try:
                        check_int(value[key], -(2**31), 2**31)
                    except Exception:  # noqa: BLE001 - re-raised naming the key
                        fail(f"expected an integer, got {type(value[key]).__name__} {value[key]!r}", key)
        return value

    def ports(self) -> tuple[int, int]:
        """(from_port, to_port) as AWS accepts them for the protocol.

        tcp/udp: 0..65535 with from <= to; icmp: ICMP type and code, -1..255 each (-1 = all);
        -1 (all traffic): no ports (AWS ignores them and reports -1, which would never match)."""
        given = self.model_fields_set
        if self.protocol == "-1":
            for key in ("port", "from_port", "to_port"):
                if key in given and getattr(self, key) != -1:
                    fail("protocol -1 (all traffic) takes no ports: remove this key", key)
            return -1, -1
        lo, hi = (-1, 255) if self.protocol == "icmp" else (0, 65535)
        if "port" in given:
            if "from_port" in given or "to_port" in given:
                fail("give either port or from_port and to_port, not both", "port")
            return _in_range(self.port, lo, hi, "port"), _in_range(self.port, lo, hi, "port")
        if "from_port" in given and "to_port" in given:
            low = _in_range(self.from_port, lo, hi, "from_port")
            high = _in_range(self.to_port, lo, hi, "to_port")
            if self.protocol != "icmp" and low > high:
                fail(f"from_port {low} is greater than to_port {high}", "from_port")
            return low, high
        fail("missing (give port, or from_port and to_port)", "port")

    @model_validator(mode="after")
    def _ports_and_one_source(self) -> IngressIn:
        self.ports()
        if (self.cidr is None) == (self.source_group is None):
            fail("give exactly one of cidr or source_group", "cidr")
        return self


def _in_range(value: Any, lo: int, hi: int, key: str) -> int:
    if not lo <= value <= hi:
        fail(f"{value} is out of range {lo}..{hi}", key)
    return int(value)


class ChefIn(Strict):
    """How the instance reaches the Chef server, and which Chef client a bake installs."""

    server_url: Annotated[Text(URL_RE, "an http(s) URL"),
                          Field(description="the Chef server's organization URL (required)")] = None
    validation_client_name: Annotated[
        Text(re.compile(r"^[A-Za-z0-9_.-]{1,128}$"), "a Chef client name"),
        Field(description="the validator client the instance registers with (required)")] = None
    validation_key_s3: Annotated[Text(S3_URL_RE, "an s3://BUCKET/KEY URL"),
                                 Field(description="s3:// URL of the validator key (required)")] = None
    client_version: Annotated[Text(re.compile(r"^[0-9][0-9.]{0,15}$"), "a Chef client version"),
                              Field(description="Chef/Cinc client version to install")] = None
    distribution: Annotated[Choice(*CHEF_INSTALLERS),
                            Field(description="cinc (free, no license) or chef (licensed)")] = None
    installer_url: Annotated[Text(URL_RE, "an http(s) URL"),
                             Field(description="Linux installer script (default: the distribution's)")] = None
    windows_installer_url: Annotated[Text(URL_RE, "an http(s) URL"),
                                     Field(description="Windows installer (default: the distribution's)")] = None
    license_key_s3: Annotated[Text(S3_URL_RE, "an s3://BUCKET/KEY URL"),
                              Field(description="licensed Chef: s3:// URL of the license key")] = None
    license_key_ssm: Annotated[
        Text(SSM_PARAMETER_RE, "an SSM parameter name such as /bakery/chef-license"),
        Field(description="licensed Chef: SSM parameter holding the license key")] = None
    preinstalled: Annotated[Bool,
                            Field(description="the base AMI has the client: install nothing")] = None


class BootTestIn(Strict):
    """The test instance launched from every new AMI before it is published (merged per key)."""

    enabled: Annotated[Bool, Field(description="boot-test new AMIs")] = None
    run_list: Annotated[RunList,
                        Field(description="run list of the test (default: the role's launch run list)")] = None
    why_run: Annotated[Bool,
                       Field(description="chef-client --why-run: resolve everything, converge nothing")] = None
    command: Annotated[Command,
                       Field(description="health check run after Chef (shell; PowerShell on Windows)")] = None
    timeout: Annotated[Duration, Field(
        description="how long the test may take (default: 15m on Linux, 30m + bootstrap_timeout on Windows)")] = None
    instance_type: Annotated[InstanceType,
                             Field(description="the test instance's type (default: the role's)")] = None


AvailabilityZone = Text(re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d[a-z]$"), "an Availability Zone like us-east-1a")


class FastLaunchIn(Strict):
    """Windows Fast Launch of the role's AMIs in every region (EC2 EnableFastLaunch), before ``latest``."""

    enabled: Annotated[Bool, Field(description="enable Windows Fast Launch (default true when the key is given)")
                       ] = None
    target_snapshots: Annotated[Int(1, 1000), Field(
        description="pre-provisioned snapshots EC2 keeps on hand (SnapshotConfiguration.TargetResourceCount; "
                    "default 5)")] = None
    max_parallel_launches: Annotated[Int(6, 1000), Field(
        description="instances EC2 may launch at once to make them (at least 6, EC2's minimum; default 6; the "
                    "account's quota is 40 per region unless raised)")] = None


class RoleKeys(Strict):
    """Keys a role sets, or ``defaults`` sets for every role (a role's own value wins)."""

    region: Annotated[Region, Field(description="AWS region the role is baked in (required)")] = None
    instance_type: Annotated[InstanceType,
                             Field(description="bake instance type (or give instance_types)")] = None
    instance_types: Annotated[
        List(InstanceType, 20),
        Field(description="instance types tried in order on capacity errors (first = instance_type)")] = None
    runlist_bucket: Annotated[Text(BUCKET_RE, "an S3 bucket name"),
                              Field(description="S3 bucket for the run lists (required)")] = None
    alert_topic_arn: Annotated[Text(SNS_ARN_RE, "an SNS topic ARN"),
                               Field(description="SNS topic for failure alerts (required)")] = None
    subnet_id: Annotated[Text(SUBNET_RE, "a subnet id"),
                         Field(description="subnet of the bake instance (or give subnet_ids)")] = None
    subnet_ids: Annotated[List(Text(SUBNET_RE, "a subnet id"), 20),
                          Field(description="subnets tried in order on capacity errors")] = None
    vpc_id: Annotated[Text(VPC_RE, "a VPC id"),
                      Field(description="VPC of the security group (default: the subnet's)")] = None
    sysprep_timeout: Annotated[Duration, Field(description="Windows: how long sysprep may take")] = None
    volume_size: Annotated[Int(8, 16384), Field(description="root volume size in GiB")] = None
    volume_type: Annotated[Choice("gp2", "gp3", "io1", "io2"),
                           Field(description="root volume type")] = None
    kms_key_id: Annotated[
        Text(re.compile(r"^(arn:aws[a-z-]*:kms:\S+|alias/[\w/-]+|[0-9a-f-]{36})$"), "a KMS key"),
        Field(description="KMS key of the encrypted volumes (default: the account's EBS key)")] = None
    ingress: Annotated[List(IngressIn, 60),
                       Field(description="inbound rules of the bake instance's security group")] = None
    managed_policies: Annotated[List(Text(POLICY_ARN_RE, "an IAM policy ARN"), 10),
                                Field(description="IAM policies attached to the instance role")] = None
    permissions_boundary: Annotated[
        Text(POLICY_ARN_RE, "an IAM policy ARN"),
        Field(description="managed policy set as the permissions boundary of the instance role")] = None
    tags: Annotated[Tags,
                    Field(description="tags of every resource (merged over defaults.tags)")] = None
    bootstrap_timeout: Annotated[Duration, Field(
        description="how long the Chef bootstrap may take (also the first boot's deadline)")] = None
    aws_cli_installer_url: Annotated[Text(URL_RE, "an http(s) URL"), Field(
        description="Linux: AWS CLI v2 installer zip for a base without the CLI and no package of it "
                    "({arch}: uname -m; default AWS's)")] = None
    image_timeout: Annotated[Duration, Field(description="how long AMI creation may take")] = None
    bake_ttl: Annotated[Duration,
                        Field(description="age after which reap may clean up an unfinished bake")] = None
    copy_to_regions: Annotated[List(Region, 30),
                               Field(description="regions the AMI is copied to")] = None
    share_with_accounts: Annotated[List(Text(ACCOUNT_RE, "a 12-digit account id"), 100),
                                   Field(description="accounts the AMI is shared with")] = None
    share_with_organizations: Annotated[
        List(Text(ORG_ARN_RE, "an AWS Organizations organization or OU ARN"), 50),
        Field(description="organizations / OUs the AMI is shared with (their ARNs)")] = None
    share_snapshots: Annotated[
        Bool, Field(description="also let the accounts copy the raw snapshots (createVolumePermission)")] = None
    region_kms_keys: Annotated[RegionKeys,
                               Field(description="KMS key per copy region (region: key)")] = None
    launch_template: Annotated[
        Text(re.compile(r"^[A-Za-z0-9()./_-]{3,128}$"), "a launch template name"),
        Field(description="launch template whose default version publish points at the AMI")] = None
    keep: Annotated[Int(1, 1000), Field(description="AMIs kept per role by prune")] = None
    deprecate_after: Annotated[
        Days(1, 3650),
        Field(description="days (or like '90d') after publish at which EC2 deprecates the AMI (default 90; "
                          "superseded AMIs are deprecated at once)")] = None
    keep_if_launched_within: Annotated[
        Days(1, 3650),
        Field(description="prune keeps an AMI an instance was launched from within this many days "
                          "(EC2's LastLaunchedTime; default: not kept for that)")] = None
    fast_snapshot_restore: Annotated[
        List(AvailabilityZone, 30),
        Field(description="Availability Zones (of the role's regions: us-east-1a is us-east-1's) in which "
                          "publish enables EBS fast snapshot restore on the AMI's snapshots; prune disables "
                          "it before deleting them")] = None


class DefaultsIn(RoleKeys):
    """``defaults``: values for every role."""

    chef: Annotated[ChefIn, MaybeEmpty, Field(description="Chef settings (merged per key)")] = None
    boot_test: Annotated[BootTestIn, MaybeEmpty, Field(description="boot test settings (merged per key)")] = None


class RunListsIn(Strict):
    """The role's two Chef run lists."""

    ami: Annotated[List(RunListItem, 100),
                   Field(description="run list baked into the AMI (default: recipe[roles::ROLE_ami])")] = None
    launch: Annotated[List(RunListItem, 100),
                      Field(description="run list of an instance's first boot (default: recipe[roles::ROLE_launch])")
                      ] = None


class RoleIn(DefaultsIn):
    """One role: what ``defaults`` may set, plus its platform, base AMI and run lists."""

    platform: Annotated[Choice("linux", "windows"), Field(description="linux or windows")]
    base_ami: Annotated[BaseAmi, Field(description="an AMI id, resolve:ssm:/PARAMETER (an SSM parameter holding "
                                                   "the id, resolved per bake), or {name: PATTERN, owners: [...]}")]
    run_lists: Annotated[RunListsIn, MaybeEmpty, Field(description="the role's Chef run lists")] = None
    fast_launch: Annotated[FastLaunchIn, MaybeEmpty, Field(
        description="Windows only: Windows Fast Launch of the AMI in every region before it is published")] = None


class JenkinsIn(Strict):
    """``jenkins``: the jobs ``generate-jobs`` renders, one per role."""

    # Not empty: jobs are named PREFIX + role, which keeps them apart from the other jobs on the Jenkins.
    job_prefix: Annotated[Text(re.compile(r"^[A-Za-z0-9_.-]{1,40}$"), "a job name prefix"),
                          Field(description="jobs are named PREFIX + role")] = None
    folder: Annotated[
        Text(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,63})*$"),
             "a folder path"),
        Field(description="Jenkins folder of the jobs")] = None
    upstream_jobs: Annotated[List(Text(re.compile(r"^[^\x00-\x1f\x7f,]{1,255}$"), "a job name"), 50),
                             Field(description="jobs whose success triggers every bake job")] = None
    scm_url: Annotated[Text(), Field(description="repository of the Jenkinsfile")] = None
    scm_branch: Annotated[Text(re.compile(r"^[^\x00-\x20\x7f~^:?*\[\\]{1,200}$"), "a branch name"),
                          Field(description="branch of the Jenkinsfile")] = None
    script_path: Annotated[Text(re.compile(r"^[A-Za-z0-9_./-]{1,200}$"), "a path in the repository"),
                           Field(description="path of the Jenkinsfile in the repository")] = None
    scm_credentials_id: Annotated[Text(), Field(description="Jenkins credentials of the repository")] = None
    # One label name, as the Jenkinsfiles accept AGENT_LABEL (no label expressions: `!bakery` reaches
    # the controller).
    agent_label: Annotated[Text(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"), "a Jenkins label name"),
                           Field(description="label of the agents that run bakes (one label name)")] = None
    keep_builds: Annotated[Int(1, 10000), Field(description="builds kept per job")] = None
    release_job: Annotated[Text(JOB_NAME_RE, "a job name"),
                           Field(description="a job that bakes every role in one release")] = None
    view: Annotated[Text(), Field(description="a list view holding the jobs")] = None
    allow_built_in_node: Annotated[
        Bool, Field(description="agent_label may be the controller's own node (built-in, master)")] = None
    # The bakery the jobs run: installed on the agents once (BAKERY_HOME/VERSION, or `bakery` on PATH), checked
    # at the start of every build; never installed from a package index by a build. A version string as pip
    # writes it, since it becomes a path component and a shell word.
    bakery_version: Annotated[
        Text(re.compile(r"^[0-9][0-9A-Za-z.+!_-]{0,63}$"), "a bakery version"),
        Field(description="bakery version the jobs require on the agent (default: the one running generate-jobs)")
    ] = None
    # Where the catalogue is in the repository the jobs check out (scm_url): the user's own repository.
    catalog_path: Annotated[
        Text(re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_./-]{1,200}$"), "a relative path in the repository"),
        Field(description="path of this catalogue in the repository at scm_url (the jobs give it to --catalog)")
    ] = None

    @model_validator(mode="after")
    def _agents_not_the_controller(self) -> JenkinsIn:
        label = self.agent_label or ""
        if ".." in label or (label.lower() in ("built-in", "master") and not self.allow_built_in_node):
            fail(f"{label!r} is not an agent label (no '..'; built-in and master are the controller's own node: "
                 "set jenkins.allow_built_in_node: true to bake there)", "agent_label")
        return self


MAX_ROLES = 5000


def _roles_mapping(value: Any) -> Any:
    if value is None:
        fail(MISSING_HINTS["roles"])
    check_mapping(value)
    if len(value) > MAX_ROLES:
        fail(f"{len(value)} roles; at most {MAX_ROLES} are supported in one catalogue")
    return value


class CatalogIn(Strict):
    """A roles catalogue (``bakery.yaml``)."""

    defaults: Annotated[DefaultsIn, MaybeEmpty, Field(description="values for every role")] = None
    jenkins: Annotated[JenkinsIn, MaybeEmpty, Field(description="the generated Jenkins jobs")] = None
    roles: Annotated[
        dict[str, Annotated[RoleIn, MaybeEmpty]], BeforeValidator(_roles_mapping),
        Field(description="role name (lower case, digits, - and _) to its settings")]

