"""DescribeImageReferences for the AMI layer (``devstack.ami_layer``): what in the account points at an AMI,
read from moto with its own API: instances (not terminated), launch template versions (the 20 most
recent of each template) and SSM parameters of data type ``aws:ec2:image``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._boto import client
from .moto import ACCOUNT_ID, DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY

VERSION_DEPTH = 20
LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]


def _client(url: str, service: str, region: str, keys: tuple[str, str] | None = None) -> Any:
    access, secret = keys or (DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY)
    return client(service, endpoint_url=url, region_name=region, aws_access_key_id=access,
                  aws_secret_access_key=secret)


def _instances(ec2: Any, region: str, ids: list[str]) -> Iterable[tuple[str, str, str]]:
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": "image-id", "Values": ids}, {"Name": "instance-state-name", "Values": LIVE_STATES}])
    for page in pages:
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                yield (inst["ImageId"], "ec2:Instance",
                       f"arn:aws:ec2:{region}:{ACCOUNT_ID}:instance/{inst['InstanceId']}")


def _launch_templates(ec2: Any, region: str, ids: set[str]) -> Iterable[tuple[str, str, str]]:
    for template in ec2.describe_launch_templates().get("LaunchTemplates", []):
        latest = int(template.get("LatestVersionNumber") or 1)
        versions = [str(v) for v in range(max(1, latest - VERSION_DEPTH + 1), latest + 1)]
        found = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"],
                                                      Versions=versions).get("LaunchTemplateVersions", [])
        arn = f"arn:aws:ec2:{region}:{ACCOUNT_ID}:launch-template/{template['LaunchTemplateId']}"
        for image_id in {(v.get("LaunchTemplateData") or {}).get("ImageId") for v in found} & ids:
            yield image_id, "ec2:LaunchTemplate", arn


def _parameters(ssm: Any, region: str, ids: set[str]) -> Iterable[tuple[str, str, str]]:
    names = [p["Name"] for page in ssm.get_paginator("describe_parameters").paginate()
             for p in page["Parameters"] if p.get("DataType") == "aws:ec2:image"]
    for start in range(0, len(names), 10):
        for param in ssm.get_parameters(Names=names[start:start + 10])["Parameters"]:
            if param["Value"] in ids:
                yield (param["Value"], "ssm:Parameter",
                       f"arn:aws:ssm:{region}:{ACCOUNT_ID}:parameter/{param['Name'].lstrip('/')}")


def find(url: str, region: str, image_ids: list[str], types: set[str] | None,
         keys: tuple[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(image id, resource type, ARN) of every reference to ``image_ids`` (``types``: None for all).
    ``keys``: the layer's administrator key while moto enforces IAM (``devstack.ami_auth``)."""
    ec2, wanted = _client(url, "ec2", region, keys), set(image_ids)
    out: list[tuple[str, str, str]] = []
    if types is None or "ec2:Instance" in types:
        out += _instances(ec2, region, image_ids)
    if types is None or "ec2:LaunchTemplate" in types:
        out += _launch_templates(ec2, region, wanted)
    if types is None or "ssm:Parameter" in types:
        out += _parameters(_client(url, "ssm", region, keys), region, wanted)
    return out
