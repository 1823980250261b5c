"""DevStack: moto + goiardi seeded the way the bakery expects an AWS account and a Chef server to be.

Used by ``make demo`` and the tests. It creates the S3 bucket of first-boot run lists and puts the
Chef validator key in it (where instances fetch it with their IAM role), creates the alert SNS topic,
uploads cookbook ``roles`` (the default run lists are ``recipe[roles::<role>_ami|_launch]``) and
registers a base AMI ``bakery-demo-centos-7-2026`` owned by the account; then writes catalogues that
point at all of it.
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .ami_layer import LayeredMoto
from .goiardi import GoiardiServer
from .moto import ACCOUNT_ID, AWS_LEAKS, REGION, MotoServer, seed_base_image
from .runner import OWNER_TAG, InstanceRunner

BUCKET = "acme-bakery"
VALIDATOR = "acme-validator"
VALIDATOR_KEY = "chef/validator.pem"
TOPIC = "bakery-alerts"
BASE_IMAGE_NAME = "bakery-demo-centos-7-2026"
BASE_IMAGE_FILTER = {"name": "bakery-demo-centos-*", "owners": ["self"]}
WINDOWS_IMAGE_NAME = "bakery-demo-windows-2022"
WINDOWS_IMAGE_FILTER = {"name": "bakery-demo-windows-*", "owners": ["self"]}
COOKBOOKS = ("roles",)
JENKINS_USER = "admin"
JENKINS_TOKEN = "playground-token"  # the double's own user: a local stand-in, not a secret
# Fast enough to watch a bake by hand; a real estate keeps the default (polls are batched per region).
POLL_INTERVAL = "1"


def playground_env(stack: DevStack, jenkins_url: str, catalog: Path) -> dict[str, str]:
    """What a shell needs to run the bakery CLI against the playground."""
    return {
        **stack.env,
        "BAKERY_CATALOG": str(catalog),
        "BAKERY_POLL_INTERVAL": POLL_INTERVAL,
        "JENKINS_URL": jenkins_url,
        "JENKINS_USER": JENKINS_USER,
        "JENKINS_API_TOKEN": JENKINS_TOKEN,
    }


def env_script(env: Mapping[str, str]) -> str:
    """``env.sh``: unsets a real AWS profile or session, exports the playground, puts the CLI on PATH."""
    bin_dir = Path(sys.executable).parent
    return (
        f"unset {' '.join(AWS_LEAKS)}\n"  # no real profile or session token may creep in
        + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
        + f"export PATH={shlex.quote(str(bin_dir))}:\"$PATH\"\n"
    )


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class DevStack:
    """``with DevStack(workdir) as stack:`` -> ``.moto``, ``.goiardi``, ``.env``, ``.write_catalog()``, ``.runner()``.

    Pass running ``moto``/``goiardi`` servers to share them (tests share one per session); the stack
    then does not stop them. Seeding is idempotent, so several stacks may share the same servers.

    ``owner`` (set by a test around itself, None for the demo): the catalogues written meanwhile tag
    every instance of their roles ``devstack:test=OWNER`` (the catalogue's ``tags``, which the bakery
    puts on each instance it launches), and :meth:`runner` boots only instances with that tag.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, moto: MotoServer | None = None,
                 goiardi: GoiardiServer | None = None, region: str = REGION):
        self.workdir = Path(workdir)
        self.region = region
        self._own_moto = moto is None
        self._own_goiardi = goiardi is None
        self.moto = moto or LayeredMoto(region=region)  # moto + the AMI calls it lacks
        self.goiardi = goiardi or GoiardiServer(self.workdir / "goiardi")
        self.bucket = BUCKET
        self.validator_name = VALIDATOR
        self.validation_key_s3 = f"s3://{BUCKET}/{VALIDATOR_KEY}"
        self.topic_arn = f"arn:aws:sns:{region}:{ACCOUNT_ID}:{TOPIC}"
        self.base_image_id = ""
        self.windows_image_id = ""
        self.env: dict[str, str] = {}
        self.owner: str | None = None

    def start(self) -> DevStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._own_moto:
            self.moto.start()
        if self._own_goiardi:
            self.goiardi.start()
        try:
            self._seed()
        except BaseException:
            self.stop()
            raise
        self.env = {
            **self.moto.env(self.region),
            "CHEF_SERVER_URL": self.goiardi.url,
            "CHEF_CLIENT_NAME": self.goiardi.admin_name,
            "CHEF_CLIENT_KEY": self.goiardi.admin_key_path,
        }
        return self

    def _seed(self) -> None:
        s3 = self.moto.client("s3", self.region)
        try:
            if self.region == "us-east-1":
                s3.create_bucket(Bucket=self.bucket)
            else:
                s3.create_bucket(Bucket=self.bucket,
                                 CreateBucketConfiguration={"LocationConstraint": self.region})
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass  # a second stack on the same moto
        pem = self.goiardi.create_validator(self.validator_name)
        s3.put_object(Bucket=self.bucket, Key=VALIDATOR_KEY, Body=pem.encode(),
                      ServerSideEncryption="AES256")
        arn = self.moto.client("sns", self.region).create_topic(Name=TOPIC)["TopicArn"]
        assert arn == self.topic_arn, f"moto made topic {arn}, expected {self.topic_arn}"
        admin = self.goiardi.client()
        for cookbook in COOKBOOKS:
            if not admin.cookbook_versions(cookbook):
                admin.upload_cookbook(cookbook)
        ec2 = self.moto.client("ec2", self.region)
        self.base_image_id = seed_base_image(ec2, BASE_IMAGE_NAME)
        self.windows_image_id = seed_base_image(ec2, WINDOWS_IMAGE_NAME,
                                                description="Windows Server 2022 (bakery demo base)",
                                                platform="windows")

    def stop(self) -> None:
        if self._own_goiardi:
            self.goiardi.stop()
        if self._own_moto:
            self.moto.stop()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the demo and tests use ------------------------------------------------------------------
    def catalog_data(self, roles: Mapping[str, Any] | Iterable[str] | None = None, *,
                     jenkins: Mapping[str, Any] | None = None, **defaults: Any) -> dict[str, Any]:
        """A catalogue pointing at this stack.

        ``roles``: role names (Linux roles), or a mapping name -> role settings in which ``platform``
        defaults to linux and ``base_ami`` to the seeded demo image of that platform. ``defaults``
        keywords are deep-merged into the catalogue's ``defaults`` (e.g. ``bootstrap_timeout="2m"``).
        """
        if roles is None:
            roles = ["web"]
        if not isinstance(roles, Mapping):
            roles = {name: {} for name in roles}
        filled: dict[str, Any] = {}
        for name, spec in roles.items():
            spec = dict(spec or {})
            spec.setdefault("platform", "linux")
            windows = spec["platform"] == "windows"
            spec.setdefault("base_ami", dict(WINDOWS_IMAGE_FILTER if windows else BASE_IMAGE_FILTER))
            filled[name] = spec
        base_defaults: dict[str, Any] = {
            "region": self.region,
            "instance_type": "t3.medium",
            "runlist_bucket": self.bucket,
            "alert_topic_arn": self.topic_arn,
            **({"tags": {OWNER_TAG: self.owner}} if self.owner else {}),
            "chef": {
                "server_url": self.goiardi.url,
                "validation_client_name": self.validator_name,
                "validation_key_s3": self.validation_key_s3,
            },
        }
        base_jenkins: dict[str, Any] = {
            "job_prefix": "ami-bake-",
            "upstream_jobs": ["deploy-release"],
            "scm_url": "https://git.example.com/ops/bakery.git",
            "scm_branch": "main",
            "script_path": "jenkins/Jenkinsfile",
        }
        return {
            "defaults": _merge(base_defaults, defaults),
            "jenkins": _merge(base_jenkins, jenkins or {}),
            "roles": copy.deepcopy(filled),
        }

    def write_catalog(self, path: str | os.PathLike[str], roles: Mapping[str, Any] | Iterable[str] | None = None,
                      **overrides: Any) -> Path:
        """Write :meth:`catalog_data` as YAML to ``path``; returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(self.catalog_data(roles, **overrides), sort_keys=False), encoding="utf-8")
        return p

    def example_catalog_data(self, example: Mapping[str, Any]) -> dict[str, Any]:
        """A whole example catalogue (as read from YAML) pointed at this stack.

        Everything the example says about its roles stays: tags, volume sizes and types, timeouts,
        ingress, instance types, run lists, platforms (Windows too). Only what must point at this
        stack changes: region, run-list bucket, alert topic, Chef server and validator, and each role's
        ``base_ami`` (the seeded demo image of its platform, since the example's images exist only on AWS).
        A role's own region or ``copy_to_regions`` are kept: moto serves every region.
        """
        data = copy.deepcopy(dict(example))
        defaults = dict(data.get("defaults") or {})
        stack = self.catalog_data({})["defaults"]
        chef = {**dict(defaults.get("chef") or {}), **stack.pop("chef")}
        tags = {**dict(defaults.get("tags") or {}), **stack.pop("tags", {})}
        defaults.update(stack, chef=chef, **({"tags": tags} if tags else {}))
        defaults.pop("subnet_id", None)  # the example's subnets and VPCs do not exist here
        defaults.pop("vpc_id", None)
        data["defaults"] = defaults
        roles = {}
        for name, spec in dict(data.get("roles") or {}).items():
            spec = {k: v for k, v in dict(spec or {}).items() if k not in ("subnet_id", "vpc_id", "chef")}
            windows = spec.get("platform") == "windows"
            spec["base_ami"] = dict(WINDOWS_IMAGE_FILTER if windows else BASE_IMAGE_FILTER)
            roles[name] = spec
        data["roles"] = roles
        return data

    def example_rewrites(self, example_path: str | os.PathLike[str]) -> list[str]:
        """What :meth:`write_example_catalog` changes in the user's catalogue, one line per key."""
        example = yaml.safe_load(Path(example_path).read_text(encoding="utf-8")) or {}
        return catalog_changes(example, self.example_catalog_data(example))

    def write_example_catalog(self, path: str | os.PathLike[str], example_path: str | os.PathLike[str]) -> Path:
        """Write :meth:`example_catalog_data` of the YAML file ``example_path`` to ``path``; returns the path."""
        example = yaml.safe_load(Path(example_path).read_text(encoding="utf-8")) or {}
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(self.example_catalog_data(example), sort_keys=False), encoding="utf-8")
        return p

    def runner(self, workdir: str | os.PathLike[str] | None = None, **kwargs: Any) -> InstanceRunner:
        """An InstanceRunner on this stack's moto (not started: use it as a context manager); it boots
        only the current owner's instances unless ``owner=`` says otherwise."""
        kwargs.setdefault("owner", self.owner)
        return InstanceRunner(self.moto.url, self.region, workdir or self.workdir / "instances", **kwargs)

    def owner_tags(self) -> dict[str, str]:
        """The tag an instance launched by hand needs for :meth:`runner` to boot it."""
        return {OWNER_TAG: self.owner} if self.owner else {}

def catalog_changes(before: Any, after: Any, path: str = "") -> list[str]:
    """``KEY.PATH: OLD -> NEW`` / ``removed`` / ``added`` for every leaf that differs between two catalogues."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        lines: list[str] = []
        for key in list(before) + [k for k in after if k not in before]:
            where = f"{path}.{key}" if path else str(key)
            if key not in after:
                lines.append(f"{where}: removed (was {before[key]!r})")
            elif key not in before:
                lines.append(f"{where}: added {after[key]!r}")
            else:
                lines.extend(catalog_changes(before[key], after[key], where))
        return lines
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]
