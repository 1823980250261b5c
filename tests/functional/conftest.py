"""Fixtures of the functional layer: one stage or one part against moto server / goiardi, in process.

- ``aws``, ``alerts``, ``sandbox_factory``: the first-boot sandbox (:mod:`support.sandbox`)
- ``base_ami``: a base image registered in the session's moto (module scope)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.sandbox import (
    BUCKET,
    VALIDATOR_KEY,
    VALIDATOR_PEM,
    WEB_RUN_LIST,
    Alerts,
    ImdsDouble,
    Sandbox,
    imds_for,
)

from devstack import MotoServer
from devstack.moto import seed_base_image


@pytest.fixture(scope="module")
def aws(moto_server: MotoServer) -> dict[str, Any]:
    clients = {name: moto_server.client(name) for name in ("s3", "sns", "sqs", "ec2")}
    s3 = clients["s3"]
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=VALIDATOR_KEY, Body=VALIDATOR_PEM.encode())
    s3.put_object(Bucket=BUCKET, Key="runlists/web.json", Body=json.dumps(WEB_RUN_LIST).encode())
    return {"url": moto_server.url, **clients}


@pytest.fixture()
def alerts(aws: dict[str, Any]) -> Alerts:
    name = f"bakery-alerts-{uuid.uuid4().hex[:10]}"
    topic_arn = aws["sns"].create_topic(Name=name)["TopicArn"]
    queue_url = aws["sqs"].create_queue(QueueName=name)["QueueUrl"]
    queue_arn = aws["sqs"].get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    aws["sns"].subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return Alerts(topic_arn, aws["sqs"], queue_url)


@pytest.fixture()
def sandbox_factory(tmp_path: Path, aws: dict[str, Any]) -> Iterator[Any]:
    started: list[ImdsDouble] = []

    def make(instance_id: str = "i-0abc1234def567890", name: str = "box", **kwargs: Any) -> Sandbox:
        imds = imds_for(instance_id).start()
        started.append(imds)
        return Sandbox(tmp_path / name, aws["url"], imds, **kwargs)

    yield make
    for imds in started:
        imds.stop()


@pytest.fixture(scope="module")
def base_ami(moto_server):
    return seed_base_image(moto_server.client("ec2"), name="stages-base-1")
