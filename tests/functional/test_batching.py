"""Polls of many in-flight bakes are batched: one Describe call covers many ids."""

from __future__ import annotations

import threading
import uuid

from bakery_lib.aws import Aws
from bakery_lib.stages.preflight import reusable_among
from devstack._boto import session as shared_session
from devstack.moto import seed_base_image


def test_concurrent_polls_share_one_describe_call(moto_server):
    ec2 = moto_server.client("ec2")
    base = seed_base_image(ec2, name="batching-base-1")
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=base, MinCount=12, MaxCount=12)["Instances"]]
    aws = Aws(endpoint_url=moto_server.url,
              session=shared_session(aws_access_key_id="testing", aws_secret_access_key="testing"))
    # Every bake asks once to register its id (as the first poll of each bake does).
    for i in ids:
        aws.instances.get("us-east-1", i, max_age=60)
    before = aws.counter.counts["ec2.DescribeInstances"]
    barrier = threading.Barrier(len(ids))
    seen: dict[str, str] = {}

    def poll(instance_id: str) -> None:
        barrier.wait()
        for _ in range(3):  # three poll rounds per bake
            inst = aws.instances.get("us-east-1", instance_id, max_age=60)
            seen[instance_id] = inst["State"]["Name"]

    threads = [threading.Thread(target=poll, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen) == set(ids)
    # 12 bakes x 3 polls answered from the shared cache: no call per bake per poll.
    assert aws.counter.counts["ec2.DescribeInstances"] - before == 0
    # A fresh round (max_age 0) costs one call for all twelve ids, not twelve.
    before = aws.counter.counts["ec2.DescribeInstances"]
    barrier = threading.Barrier(len(ids))

    def fresh(instance_id: str) -> None:
        barrier.wait()
        aws.instances.get("us-east-1", instance_id, max_age=0)

    threads = [threading.Thread(target=fresh, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = aws.counter.counts["ec2.DescribeInstances"] - before
    assert 1 <= calls <= 3, calls
    ec2.terminate_instances(InstanceIds=ids)


def test_vanished_id_does_not_fail_the_batch(moto_server):
    ec2 = moto_server.client("ec2")
    base = seed_base_image(ec2, name="batching-base-1")
    real = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    aws = Aws(endpoint_url=moto_server.url,
              session=shared_session(aws_access_key_id="testing", aws_secret_access_key="testing"))
    assert aws.instances.get("us-east-1", "i-0123456789abcdef0") is None
    assert aws.instances.get("us-east-1", real)["InstanceId"] == real
    ec2.terminate_instances(InstanceIds=[real])


def test_reuse_look_up_wants_an_image_wait_image_finished(moto_server):
    """An available AMI with the bake key is reused only once wait-image required IMDSv2 on it
    (the ``bakery:imds-support`` tag it sets in the same call as the snapshot tags); preflight's
    look-up lists the role's AMIs, and the bake key is matched among them."""
    ec2 = moto_server.client("ec2")
    base = seed_base_image(ec2, name="batching-base-1")
    inst = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    key, role = "f" * 32, f"reuse-{uuid.uuid4().hex[:8]}"
    image = ec2.create_image(InstanceId=inst, Name="batching-reuse-1", TagSpecifications=[{
        "ResourceType": "image", "Tags": [{"Key": "bakery:role", "Value": role},
                                          {"Key": "bakery:bake-key", "Value": key}]}],
    )["ImageId"]
    aws = Aws(endpoint_url=moto_server.url,
              session=shared_session(aws_access_key_id="testing", aws_secret_access_key="testing"))

    def reusable() -> dict | None:
        return reusable_among(aws.amis_by_role.get("us-east-1", role, max_age=0) or [], key, boot_tested=True)
    assert [i["ImageId"] for i in aws.amis_by_role.get("us-east-1", role)] == [image]
    assert reusable() is None
    ec2.create_tags(Resources=[image], Tags=[{"Key": "bakery:imds-support", "Value": "v2.0"}])
    # ... and once it passed its boot test (boot-test tags it; an untested image is never reused).
    assert reusable() is None
    ec2.create_tags(Resources=[image], Tags=[{"Key": "bakery:boot-test", "Value": "passed"}])
    assert reusable()["ImageId"] == image
    assert reusable_among(aws.amis_by_role.get("us-east-1", role, max_age=0), "e" * 32, boot_tested=True) is None
    ec2.deregister_image(ImageId=image)
    ec2.terminate_instances(InstanceIds=[inst])
