"""The devstack's indexed moto tag look-up answers exactly what moto's own scan answers."""

from __future__ import annotations

import boto3
from moto import mock_aws
from moto.ec2.models.core import TaggedEC2Resource

from devstack import moto_server


def test_indexed_get_tags_is_motos_scan_for_every_resource(monkeypatch):
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        for n in range(5):
            ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "owner", "Value": f"t{n % 2}"}, {"Key": "n", "Value": str(n)}]},
                {"ResourceType": "volume", "Tags": [{"Key": "v", "Value": str(n)}]}])
        expected = {i["InstanceId"]: i.get("Tags") for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
        owner_t1 = [{"Name": "tag:owner", "Values": ["t1"]}]
        expected_t1 = ec2.describe_instances(Filters=owner_t1)["Reservations"]
        expected_vols = ec2.describe_volumes()["Volumes"]
        monkeypatch.setattr(TaggedEC2Resource, "get_tags", moto_server._fast_get_tags)
        got = {i["InstanceId"]: i.get("Tags") for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
        assert got == expected and any(got.values())
        assert ec2.describe_instances(Filters=owner_t1)["Reservations"] == expected_t1 and len(expected_t1) == 2
        assert ec2.describe_volumes()["Volumes"] == expected_vols
