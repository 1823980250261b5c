"""The whole bake as an IAM user holding only ``bakery iam-policy``'s policy, on a moto server that
enforces IAM (its own server: the session's moto stays unauthenticated for every other test). The
instances run as their instance role: the IMDS double hands out credentials of that role's policies
(``devstack.iam_enforcement.InstanceRoles``), so every call an instance makes (its S3 downloads, the
tag it reports with, its SNS alert) is checked against the policy the iam-role stage wrote. A case that
gets past bootstrap proves that policy sufficient; the cases removing one of its statements prove each
is needed, and that the instance's failure says why. ``AlertOnFailure`` is used by no bake: a launched
instance's failed first boot sends the alert, so that statement is proven on the first-boot script alone,
run in the first-boot sandbox (``support.sandbox``) as an instance of a profile with the instance policy.

moto checks the actions of every call (and S3 and IAM-role resources); see
``devstack/iam_enforcement.py`` for what it evaluates and what it does not, and
``tests/unit/test_iam_policy.py`` for the scoping moto cannot check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.sandbox import (
    BUCKET,
    VALIDATOR_KEY,
    VALIDATOR_PEM,
    Alerts,
    Sandbox,
    firstboot,
    make_role,
    output,
)

from bakery_lib.catalog import load_catalog
from bakery_lib.iam_policy import bakery_policy
from bakery_lib.stages.iam_role import instance_policy
from devstack import DevStack, MotoServer, isolated_env
from devstack.ami_layer import LayeredMoto
from devstack.iam_enforcement import (
    ADMIN_POLICY,
    InstanceRoles,
    as_moto_evaluates,
    create_user,
    credentials_env,
    instance_role_credentials,
    replace_user_policy,
)
from devstack.imds import ImdsDouble
from devstack.moto import ACCOUNT_ID

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
COPY_REGION = "us-west-2"
SHARE_WITH = "210987654321"
BOUNDARY = f"arn:aws:iam::{ACCOUNT_ID}:policy/bakery-instance-boundary"
ROLES: dict[str, dict[str, Any]] = {name: {} for name in (
    "iam", "iam-runinstances", "iam-createimage", "iam-stopinstances", "iam-putrolepolicy", "iam-putparameter",
    "iam-enableimagedeprecation", "iam-inst-readrunlistandvalidatorkey")}
# Without TagOnlyItself the instance cannot report; it powers itself off and the bakery reports the
# stopped instance at once (the timeout only bounds a regression of that).
ROLES["iam-inst-tagonlyitself"] = {"bootstrap_timeout": "120s"}


class Enforced:
    """The enforcing moto, its devstack, the catalogue, and the identities on it."""

    def __init__(self, stack: DevStack, catalog: Path, bakery_keys: tuple[str, str], admin_keys: tuple[str, str],
                 instance_roles: InstanceRoles):
        self.instance_roles = instance_roles
        self.stack = stack
        self.catalog = catalog
        self.bakery_keys = bakery_keys
        self.admin_keys = admin_keys
        self.policy = as_moto_evaluates(bakery_policy(load_catalog(str(catalog))))

    def admin(self, service: str, region: str = REGION) -> Any:
        from devstack._boto import session as shared_session

        return shared_session().client(
            service, endpoint_url=self.stack.moto.url, region_name=region,
            aws_access_key_id=self.admin_keys[0], aws_secret_access_key=self.admin_keys[1])

    def env(self) -> dict[str, str]:
        env = isolated_env({**self.stack.env, **credentials_env(self.bakery_keys), "BAKERY_POLL_INTERVAL": "0.2"})
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        return env

    def bakery(self, ws: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bakery_lib", "--workspace", str(ws), "--catalog", str(self.catalog), *args],
            env=self.env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _shareable_key(moto: MotoServer, region: str) -> str:
    """A customer managed key the shared account may use (the statement preflight asks for)."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{SHARE_WITH}:root"}, "Resource": "*",
         "Action": ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
                    "kms:ReEncrypt*"]}]}
    return str(moto.client("kms", region).create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"])


@pytest.fixture(scope="module")
def enforced(goiardi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enforced]:
    workdir = tmp_path_factory.mktemp("iam-enforced")
    # The AMI layer in front (as in every devstack): it answers the AMI calls moto lacks, and checks
    # them against the caller's policies as moto checks its own (devstack/ami_auth.py).
    with LayeredMoto(iam_enforcement=True) as moto:
        stack = DevStack(workdir, moto=moto, goiardi=goiardi).start()
        iam = moto.client("iam")
        boundary = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "sns:Publish", "ec2:CreateTags"], "Resource": "*"}]}
        iam.create_policy(PolicyName="bakery-instance-boundary", PolicyDocument=json.dumps(boundary))
        for region in (REGION, COPY_REGION):
            moto.client("ec2", region).create_launch_template(
                LaunchTemplateName="iam-web", LaunchTemplateData={"ImageId": stack.base_image_id})
        keys = {region: _shareable_key(moto, region) for region in (REGION, COPY_REGION)}
        catalog = stack.write_catalog(
            workdir / "bakery.yaml", roles=ROLES, copy_to_regions=[COPY_REGION], share_with_accounts=[SHARE_WITH],
            launch_template="iam-web", permissions_boundary=BOUNDARY, kms_key_id=keys[REGION],
            region_kms_keys={COPY_REGION: keys[COPY_REGION]})
        policy = as_moto_evaluates(bakery_policy(load_catalog(str(catalog))))
        bakery_keys = create_user(moto, "bakery", policy)
        # The instance runner plays EC2 itself (the hypervisor and, for now, the instances' own calls).
        admin_keys = create_user(moto, "ec2-hypervisor", ADMIN_POLICY)
        moto.enforce_iam()
        with instance_role_credentials(InstanceRoles(moto, admin_keys)) as roles:
            yield Enforced(stack, catalog, bakery_keys, admin_keys, roles)
        stack.stop()


@pytest.fixture()
def runner(enforced: Enforced, tmp_path: Path) -> Iterator[Any]:
    # The runner plays the hypervisor with the admin's keys; the instances have no keys of their own:
    # their AWS CLI takes the instance role's credentials from the IMDS double (the bake scripts point
    # AWS_EC2_METADATA_SERVICE_ENDPOINT at it), as on EC2.
    no_keys = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_EC2_METADATA_DISABLED": "false",
               "AWS_METADATA_SERVICE_TIMEOUT": "10"}  # a loaded machine answers IMDS slower than 1 s
    enforced.instance_roles.drop.clear()
    with enforced.stack.runner(tmp_path / "instances", credentials=enforced.admin_keys, extra_env=no_keys) as r:
        yield r
    enforced.instance_roles.drop.clear()


def _bakery_images(enforced: Enforced, role: str, region: str = REGION) -> list[dict[str, Any]]:
    return enforced.admin("ec2", region).describe_images(
        Owners=["self"], Filters=[{"Name": "tag:bakery:role", "Values": [role]}])["Images"]


def _live_instances(enforced: Enforced, role: str) -> list[dict[str, Any]]:
    reservations = enforced.admin("ec2").describe_instances(Filters=[
        {"Name": "tag:bakery:role", "Values": [role]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def test_the_policy_is_enforced_at_all(enforced: Enforced):
    """The user is really confined: something the policy does not grant is refused by moto."""
    import botocore.exceptions

    from devstack._boto import session as shared_session

    s3 = shared_session().client("s3", endpoint_url=enforced.stack.moto.url, region_name=REGION,
                                        aws_access_key_id=enforced.bakery_keys[0],
                                        aws_secret_access_key=enforced.bakery_keys[1])
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.get_object(Bucket=enforced.stack.bucket, Key="chef/validator.pem")
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.list_buckets()


def test_bake_publish_prune_reap_with_only_the_shipped_policy(enforced: Enforced, runner, tmp_path: Path):
    ws = tmp_path / "ws"
    first = enforced.bakery(ws, "bake", "--role", "iam", "--release", "1.0")
    assert first.returncode == 0, first.stderr + first.stdout
    old = json.loads((ws / "artifacts" / "iam.json").read_text())["amis"]
    second = enforced.bakery(ws, "bake", "--role", "iam", "--release", "1.1", "--force")
    assert second.returncode == 0, second.stderr + second.stdout
    amis = json.loads((ws / "artifacts" / "iam.json").read_text())["amis"]
    assert set(amis) == {REGION, COPY_REGION}
    for region, ami in amis.items():
        ec2 = enforced.admin("ec2", region)
        image = ec2.describe_images(ImageIds=[ami])["Images"][0]
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert image["State"] == "available" and tags["bakery:boot-test"] in ("passed", "disabled")
        perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
        assert {"UserId": SHARE_WITH} in perms
        assert enforced.admin("ssm", region).get_parameter(Name="/bakery/iam/latest")["Parameter"]["Value"] == ami
        default = ec2.describe_launch_template_versions(LaunchTemplateName="iam-web", Versions=["$Default"])
        assert default["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"] == ami
    role = enforced.admin("iam").get_role(RoleName="bakery-iam")["Role"]
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY

    # The previous AMI stays while a launch template version still names it (EC2's image references,
    # the 20 most recent versions; moto cannot delete a version to go further).
    kept = enforced.bakery(ws, "prune", "--role", "iam", "--keep", "1")
    assert kept.returncode == 0, kept.stderr + kept.stdout
    assert f"{old[REGION]}" in kept.stdout and "referenced by launch template" in kept.stdout, kept.stdout
    left = _bakery_images(enforced, "iam")
    assert sorted(i["ImageId"] for i in left) == sorted([amis[REGION], old[REGION]])
    reaped = enforced.bakery(ws, "reap")
    assert reaped.returncode == 0, reaped.stderr + reaped.stdout
    outputs = [p.stderr + p.stdout for p in (kept, reaped)]
    assert not [o for o in outputs if "AccessDenied" in o or "UnauthorizedOperation" in o], outputs


@pytest.mark.parametrize("action", ["ec2:RunInstances", "ec2:CreateImage", "ec2:StopInstances",
                                    "iam:PutRolePolicy",
                                    "ssm:PutParameter", "ec2:EnableImageDeprecation"])
def test_one_action_less_fails_naming_it_and_leaves_nothing(enforced: Enforced, runner, tmp_path: Path, action: str):
    role = "iam-" + action.split(":")[1].lower()
    admin_iam = enforced.admin("iam")
    reduced = json.loads(json.dumps(enforced.policy))
    for st in reduced["Statement"]:
        acts = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        st["Action"] = [a for a in acts if a != action] or ["ec2:DescribeRegions"]
    replace_user_policy(admin_iam, "bakery", reduced)
    try:
        proc = enforced.bakery(tmp_path / "ws", "bake", "--role", role, "--release", "1.0")
    finally:
        replace_user_policy(admin_iam, "bakery", enforced.policy)
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert f"lacks the permission {action}" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert _live_instances(enforced, role) == []
    # A bake that fails in publish keeps its available, tested image on purpose (a rerun publishes it)
    # and says so; nothing else of the bake remains, in any region.
    output = proc.stderr + proc.stdout
    kept = {REGION: sorted(set(re.findall(r"kept available image (ami-[0-9a-f]+)", output))),
            COPY_REGION: sorted(set(re.findall(rf"available copy (ami-[0-9a-f]+) in {COPY_REGION}", output)))}
    in_publish = action in ("ssm:PutParameter", "ec2:EnableImageDeprecation")
    assert bool(kept[REGION]) == bool(kept[COPY_REGION]) == in_publish
    for region in (REGION, COPY_REGION):
        assert [i["ImageId"] for i in _bakery_images(enforced, role, region)] == kept[region], region


@pytest.mark.parametrize("statement, reason", [
    # Retried as IAM propagation would be, then said to be the policy's (bakery-lib.sh's role_aws).
    ("ReadRunListAndValidatorKey", "aws s3 cp refused for the instance role 6 times over 30 s, so not for IAM "
                                   "propagation: its policy does not allow it (fatal error: An error occurred (403) "
                                   "when calling the HeadObject operation: Forbidden)"),
    ("TagOnlyItself", "is not authorized to perform: ec2:CreateTags"),
])
def test_the_instance_policy_without_one_statement_fails_the_instance_saying_why(
        enforced: Enforced, runner, tmp_path: Path, statement: str, reason: str):
    """A bake uses two of the instance policy's statements (AlertOnFailure is a launched instance's,
    on a failed first boot): without either, the bake fails at bootstrap with the instance's reason."""
    role = f"iam-inst-{statement.lower()}"
    enforced.instance_roles.drop.add(statement)
    proc = enforced.bakery(tmp_path / "ws", "bake", "--role", role, "--release", "1.0")
    output = proc.stderr + proc.stdout
    assert proc.returncode == 1, output
    assert "Traceback" not in proc.stderr
    issued = {i for i, r in enforced.instance_roles.issued if r == f"bakery-{role}"}
    assert len(issued) == 1, "the bake instance never used its role's credentials"
    console = runner.console(issued.pop())
    assert reason in output + console, console[-3000:]
    assert "Unable to locate credentials" not in console  # refused for the policy, not for want of keys
    assert "bootstrap" in output and _live_instances(enforced, role) == []


def _launched_with_the_instance_policy(enforced: Enforced, alerts: Alerts, role_name: str) -> tuple[Any, str]:
    """The role as the iam-role stage writes it (its instance policy inline), in a profile, and an
    instance of that profile: a launched instance whose first boot runs as that role."""
    spec = make_role(alerts, name=role_name)  # no runlists/ROLE.json: the first boot fails at its run list
    iam, ec2 = enforced.admin("iam"), enforced.admin("ec2")
    name = f"bakery-{role_name}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                  "Action": "sts:AssumeRole"}]}))
    iam.put_role_policy(RoleName=name, PolicyName="bakery-instance", PolicyDocument=json.dumps(instance_policy(spec)))
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    instance = ec2.run_instances(ImageId=enforced.stack.base_image_id, MinCount=1, MaxCount=1,
                                 IamInstanceProfile={"Name": name})["Instances"][0]["InstanceId"]
    return spec, instance


@pytest.fixture()
def enforced_alerts(enforced: Enforced) -> Alerts:
    s3, sns, sqs = enforced.admin("s3"), enforced.admin("sns"), enforced.admin("sqs")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_object(Bucket=BUCKET, Key=VALIDATOR_KEY, Body=VALIDATOR_PEM.encode())
    topic_arn = sns.create_topic(Name="bakery-alerts-enforced")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="bakery-alerts-enforced")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return Alerts(topic_arn, sqs, queue_url)


def test_a_launched_instances_alert_needs_alert_on_failure(enforced: Enforced, enforced_alerts: Alerts,
                                                          tmp_path: Path):
    """Without ``AlertOnFailure`` the failed first boot's alert is refused and the script says which
    statement it lacks; with it (the policy as shipped) the alert reaches the topic."""
    alerts = enforced_alerts
    outcomes = {}
    for dropped in (["AlertOnFailure"], []):
        role_name = "iam-alert-" + ("without" if dropped else "with")
        spec, instance = _launched_with_the_instance_policy(enforced, alerts, role_name)
        enforced.instance_roles.drop.clear()
        enforced.instance_roles.drop.update(dropped)
        with ImdsDouble(instance_id=instance, region=REGION) as imds:
            # The CLI's only credentials are the instance role's, from IMDS (a loaded machine answers slowly).
            box = Sandbox(tmp_path / role_name, enforced.stack.moto.url, imds, instant_sleep=True,
                          extra_env={"AWS_METADATA_SERVICE_TIMEOUT": "10", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3"})
            box.install_image(spec)
            proc = box.run(firstboot(box))
        enforced.instance_roles.drop.clear()
        assert proc.returncode == 1, output(proc)
        assert (instance, f"bakery-{role_name}") in enforced.instance_roles.issued
        outcomes[role_name] = (output(proc), alerts.received())
    text, received = outcomes["iam-alert-without"]
    assert "FAILED: the run list s3://" in text  # the first boot failed as it would on EC2
    assert "aws sns publish refused for the instance role 6 times" in text and "its policy does not allow it" in text
    assert (f"could not publish the alert to {alerts.topic_arn}: the instance role may not sns:Publish to it "
            "(statement AlertOnFailure of the role's instance policy)") in text
    assert received == []
    text, received = outcomes["iam-alert-with"]
    assert f"alert published to {alerts.topic_arn}" in text, text
    assert [m["Subject"] for m in received] == [f"bakery: first boot of iam-alert-with failed on {instance}"]
