"""``bakery summary --release V --from-aws`` against moto (with the devstack's AMI layer, which serves
deprecation and deregistration protection): the release page from the account alone.

The account is seeded as ``publish`` leaves it: AMIs tagged on creation, ``/bakery/ROLE/latest`` written
with "(release V, bake ID)" in its description, launch permissions, the layer's deprecation and
protection. Two releases: in the second, one role is rebaked (its first AMI deprecated, superseded), one
reuses its first AMI (tagged with the first release), one failed its boot test. Each test uses its own
role names and release ids, so the shared moto's other AMIs do not matter.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from support.stages import new_aws

from bakery_lib.errors import UsageError
from bakery_lib.state import Workspace
from bakery_lib.summary_release import survey, write_release_summary
from devstack.moto import seed_base_image

REGION = "ap-northeast-3"
BUILD = "https://jenkins.example.com/job/bakery/job/ami-bake-{role}/{n}/"


class Account:
    def __init__(self, moto_server: Any, region: str = REGION):
        self.ec2 = moto_server.client("ec2", region)
        self.ssm = moto_server.client("ssm", region)
        self.base = seed_base_image(self.ec2, name=f"summary-base-{uuid.uuid4().hex[:8]}")

    def ami(self, role: str, release: str, n: int, **extra: str) -> str:
        bake_id = f"2026010100{n:04d}-{uuid.uuid4().hex[:6]}"
        tags = {"Name": f"bakery-{role}-{release}-{bake_id}", "bakery:role": role, "bakery:release": release,
                "bakery:bake-id": bake_id, "bakery:base-ami": self.base, "bakery:created-by": "bakery",
                "bakery:boot-test": "passed", "bakery:build": BUILD.format(role=role, n=n), **extra}
        source = self.ec2.run_instances(ImageId=self.base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        image = self.ec2.create_image(InstanceId=source, Name=tags["Name"], TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["ImageId"]
        self.ec2.terminate_instances(InstanceIds=[source])
        return image

    def publish(self, role: str, release: str, image_id: str) -> None:
        bake = f"20260101000000-{uuid.uuid4().hex[:6]}"
        self.ssm.put_parameter(Name=f"/bakery/{role}/latest", Value=image_id, Type="String", DataType="aws:ec2:image",
                               Overwrite=True, Description=f"Latest AMI Bakery image of role {role} (release "
                                                           f"{release}, bake {bake})")


@pytest.fixture()
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    return {"web": f"sweb{tag}", "api": f"sapi{tag}", "bad": f"sbad{tag}", "gone": f"sgone{tag}", "r1": f"1.{tag}",
            "r2": f"2.{tag}"}


def test_a_second_release_from_aws_alone(moto_server, tmp_path, names):
    acct = Account(moto_server)
    web, api, bad, r1, r2 = (names[k] for k in ("web", "api", "bad", "r1", "r2"))
    web1, api1 = acct.ami(web, r1, 1), acct.ami(api, r1, 2)
    acct.publish(web, r1, web1)
    acct.publish(api, r1, api1)
    web2 = acct.ami(web, r2, 3)
    acct.ec2.modify_image_attribute(ImageId=web2, LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    acct.publish(web, r2, web2)
    acct.publish(api, r2, api1)  # unchanged inputs: release 2 reuses api's first AMI
    acct.ami(bad, r2, 4, **{"bakery:boot-test": "failed"})
    gone = acct.ami(names["gone"], r1, 5)  # published for r2, deregistered since
    acct.publish(names["gone"], r2, gone)
    acct.ec2.deregister_image(ImageId=gone)
    when = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=90)).replace(second=0, microsecond=0)
    acct.ec2.enable_image_deprecation(ImageId=web2, DeprecateAt=when)
    acct.ec2.enable_image_deregistration_protection(ImageId=web2, WithCooldown=True)
    acct.ec2.enable_image_deprecation(ImageId=web1, DeprecateAt=datetime.datetime.now(datetime.timezone.utc)
                                      + datetime.timedelta(minutes=2))

    aws = new_aws(moto_server)
    rows = survey(aws, [REGION], r2)
    assert [(r.role, r.status) for r in rows] == [(bad, "failed"), (names["gone"], "missing"), (api, "reused"),
                                                  (web, "baked")]
    by_role = {r.role: r for r in rows}
    assert by_role[web].image_id == web2 and by_role[web].latest
    assert by_role[web].deprecation.startswith(when.strftime("%Y-%m-%dT%H:%M"))
    assert by_role[web].protection == "enabled-with-cooldown"
    assert by_role[web].sharing == "account 111122223333"
    assert by_role[web].base_ami == acct.base and by_role[web].build_label == f"bakery/ami-bake-{web} #3"
    assert by_role[api].image_id == api1 and by_role[api].made_for == r1 and by_role[api].latest
    assert by_role[api].protection == "disabled" and by_role[api].deprecation == ""
    assert by_role[bad].boot_test == "failed" and not by_role[bad].latest
    # The call log: reads only.
    assert all(op.split(".")[1].startswith(("Describe", "Get")) for op in aws.counter.counts), aws.counter.counts

    # The first release: web's first AMI, superseded by web2.
    first = {r.role: r for r in survey(new_aws(moto_server), [REGION], r1)}
    assert set(first) == {web, api}  # gone's AMI: deregistered, and r1 never published it
    assert first[web].image_id == web1 and not first[web].latest and first[web].deprecation
    assert any(f"superseded: latest is {web2}" in n for n in first[web].notes)

    ws = Workspace(tmp_path / "elsewhere")  # no bake state at all: another machine
    html_path, md_path = write_release_summary(ws, aws, [REGION], r2)
    md = md_path.read_text()
    line = next(x for x in md.splitlines() if x.startswith(f"| {web} |"))
    assert f"| {web2} | {r2} | passed | yes | {by_role[web].deprecation} | enabled-with-cooldown |" in line, line
    assert "| account 111122223333 |" in line and BUILD.format(role=web, n=3) in line
    page = html_path.read_text()
    assert f'href="{BUILD.format(role=web, n=3)}"' in page and f"ami-bake-{web} #3" in page


def test_every_page_is_read(moto_server, names):
    """More parameters than one DescribeParameters page (10 by default on moto and AWS, at most 50), more
    versions than one GetParameterHistory page: nothing of the release is missed."""
    acct = Account(moto_server, "ap-south-2")
    release = names["r2"]
    roles = [f"{names['web']}p{i:02d}" for i in range(12)]
    amis = {role: acct.ami(role, "0.old", i) for i, role in enumerate(roles)}  # reused by the release
    for role in roles:
        acct.publish(role, release, amis[role])
    for i in range(55):  # the release's version of the last role is the first of 56
        acct.publish(roles[-1], f"0.{i}", amis[roles[-1]])
    aws = new_aws(moto_server)
    rows = survey(aws, ["ap-south-2"], release)
    assert {r.role: r.image_id for r in rows} == amis
    assert all(r.status == "reused" and r.made_for == "0.old" for r in rows)
    assert aws.counter.counts["ssm.DescribeParameters"] >= 2
    assert aws.counter.counts["ssm.GetParameterHistory"] >= 13


def test_a_release_with_no_ami_is_a_clear_usage_error_and_nothing_is_written(moto_server, tmp_path, names):
    ws = Workspace(tmp_path)
    with pytest.raises(UsageError, match=rf"no AMI of release '{names['r1']}' in {REGION}: none is tagged"):
        write_release_summary(ws, new_aws(moto_server), [REGION], names["r1"])
    assert not ws.reports_dir.exists()
