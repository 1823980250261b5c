"""Retries (moto server in process): botocore's ``standard`` retry mode on every client, and a 5xx
(``InternalError`` / ``ServiceUnavailable``) that outlasts botocore's retries shares the throttling
budget: the process-wide gate backs off and the call is tried again (EC2 API reference, "Error codes":
server errors are to be retried)."""

from __future__ import annotations

import botocore.exceptions
import pytest
from support.stages import make_ctx

from bakery_lib.aws import STORM_ROUNDS
from bakery_lib.errors import AwsError


def _failing(times: int, code: str):
    left = {"n": times}

    def hook(**_):
        if left["n"]:
            left["n"] -= 1
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": code, "Message": "We encountered an internal error."},
                 "ResponseMetadata": {"HTTPStatusCode": 500}}, "DescribeVpcs")

    return hook, left


def test_standard_retry_mode(moto_server, tmp_path):
    ctx = make_ctx(moto_server, tmp_path)
    client = ctx.aws.client("ec2", "us-east-1")
    assert client.meta.config.retries["mode"] == "standard"


@pytest.mark.parametrize("code", ["InternalError", "ServiceUnavailable"])
def test_server_errors_after_botocore_share_the_gate(moto_server, tmp_path, code):
    ctx = make_ctx(moto_server, tmp_path)
    hook, left = _failing(STORM_ROUNDS - 1, code)
    ctx.aws.add_hook("before-call.ec2.DescribeVpcs", hook)
    assert "Vpcs" in ctx.aws.call("ec2", "us-east-1", "DescribeVpcs")
    assert left["n"] == 0


def test_server_errors_beyond_the_budget_fail_naming_the_code(moto_server, tmp_path):
    ctx = make_ctx(moto_server, tmp_path)
    hook, _ = _failing(STORM_ROUNDS, "InternalError")
    ctx.aws.add_hook("before-call.ec2.DescribeVpcs", hook)
    with pytest.raises(AwsError, match="DescribeVpcs failed: InternalError"):
        ctx.aws.call("ec2", "us-east-1", "DescribeVpcs")
