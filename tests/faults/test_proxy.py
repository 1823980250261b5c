"""The fault proxy itself, through real boto3 clients against the session's moto: the other fault
tests are only as good as its aim (which call), its wire format (what botocore makes of the error)
and its holds and rewrites."""

from __future__ import annotations

import threading

import botocore.exceptions
import pytest
from botocore.config import Config
from support.proxy import FaultProxy, Hold, Rewrite, Rule

from devstack._boto import session as shared_session
from devstack.moto import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY


def client(proxy: FaultProxy, service: str, *, attempts: int = 1):
    return shared_session().client(
        service, endpoint_url=proxy.url, region_name="us-east-1", aws_access_key_id=DUMMY_ACCESS_KEY,
        aws_secret_access_key=DUMMY_SECRET_KEY,
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}))


@pytest.mark.parametrize(("service", "call", "operation", "code", "status"), [
    ("ec2", lambda c: c.describe_vpcs(), "DescribeVpcs", "UnauthorizedOperation", 403),
    ("iam", lambda c: c.list_roles(), "ListRoles", "AccessDenied", 403),
    ("ssm", lambda c: c.describe_parameters(), "DescribeParameters", "AccessDeniedException", 400),
    ("s3", lambda c: c.get_object(Bucket="acme-bakery", Key="chef/validator.pem"), "GetObject", "AccessDenied", 403),
    ("sts", lambda c: c.get_caller_identity(), "GetCallerIdentity", "AccessDenied", 403),
])
def test_a_denied_call_reaches_botocore_as_that_services_error(devstack, proxy: FaultProxy, service, call, operation,
                                                                code, status):
    proxy.add(Rule(operation))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call(client(proxy, service))
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    call(client(proxy, service))  # once: the next one is forwarded
    assert [(c.service, c.operation, c.injected) for c in proxy.calls_since()] == [
        (service, operation, code), (service, operation, None)]


def test_throttling_is_retried_by_botocore_and_aim_by_occurrence_and_after(devstack, proxy: FaultProxy):
    ec2 = client(proxy, "ec2", attempts=3)
    proxy.add(Rule("DescribeVpcs", kind="throttle", skip=1), Rule("DescribeSubnets", after="DescribeVpcs"))
    ec2.describe_subnets()  # not armed yet: no DescribeVpcs answered so far
    ec2.describe_vpcs()  # the first DescribeVpcs is let through
    ec2.describe_vpcs()  # the second is throttled once, then retried
    with pytest.raises(botocore.exceptions.ClientError):
        ec2.describe_subnets()
    assert [(c.operation, c.injected) for c in proxy.calls_since()] == [
        ("DescribeSubnets", None), ("DescribeVpcs", None), ("DescribeVpcs", "RequestLimitExceeded"),
        ("DescribeVpcs", None), ("DescribeSubnets", "UnauthorizedOperation")]


def test_rewrite_and_hold(devstack, proxy: FaultProxy):
    ec2 = client(proxy, "ec2")
    image = devstack.base_image_id
    proxy.add(Rewrite("DescribeImages", "<imageState>available</imageState>", "<imageState>pending</imageState>"))
    assert ec2.describe_images(ImageIds=[image])["Images"][0]["State"] == "pending"
    assert devstack.moto.client("ec2").describe_images(ImageIds=[image])["Images"][0]["State"] == "available"

    hold = Hold("CreateTags")  # carried out, answer held
    proxy.add(hold)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (ec2.create_tags(Resources=[image], Tags=[
        {"Key": "proxy-test", "Value": "held"}]), done.set()))
    worker.start()
    assert hold.reached.wait(30) and not done.is_set()
    tags = devstack.moto.client("ec2").describe_images(ImageIds=[image])["Images"][0]["Tags"]
    assert {"Key": "proxy-test", "Value": "held"} in tags  # AWS did it; the caller has not heard yet
    hold.release.set()
    worker.join(30)
    assert done.is_set()
