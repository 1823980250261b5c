"""What creating ``Aws`` clients costs a process: each service model is read once per process, and each
(service, region) gets one client, however many ``Aws`` (an in-process test makes one per case) and
sessions there are. No request is sent."""

from __future__ import annotations

import boto3
import botocore.loaders
import pytest

from bakery_lib.aws import Aws, shared_loader


@pytest.fixture
def model_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every botocore data file read from disk from now on (paths without the extension)."""
    reads: list[str] = []
    real = botocore.loaders.JSONFileLoader.load_file

    def load_file(self: botocore.loaders.JSONFileLoader, file_path: str) -> object:
        found = real(self, file_path)
        if found is not None:
            reads.append(file_path)
        return found

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", load_file)
    return reads


def fresh_aws() -> Aws:
    return Aws(endpoint_url="http://127.0.0.1:9", session=boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing"))


def test_every_aws_of_the_process_reads_the_ec2_model_at_most_once(model_reads: list[str]) -> None:
    for _ in range(3):
        aws = fresh_aws()
        aws.client("ec2", "us-east-1")
        aws.client("ec2", "eu-west-1")
        aws.client("iam", "us-east-1")
    models = [p for p in model_reads if p.endswith("service-2")]
    assert len([p for p in models if "/ec2/" in p]) <= 1, models
    assert len([p for p in models if "/iam/" in p]) <= 1, models
    assert len([p for p in model_reads if p.endswith("endpoints")]) <= 1, model_reads


def test_one_client_per_service_and_region() -> None:
    aws = fresh_aws()
    ec2 = aws.client("ec2", "us-east-1")
    assert aws.client("ec2", "us-east-1") is ec2
    assert aws.client("ec2", "eu-west-1") is not ec2
    assert aws.client("ec2", "us-east-1", sdk_retries=False) is aws.client("ec2", "us-east-1", sdk_retries=False)
    assert aws.client("ec2", "us-east-1", sdk_retries=False) is not ec2


def test_a_session_given_to_aws_still_makes_boto3_resources() -> None:
    # The shared loader carries boto3's own data (resource models) too.
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    Aws(endpoint_url="http://127.0.0.1:9", session=session)
    assert "s3" in session.get_available_resources()
    assert shared_loader() is shared_loader()
