"""Building blocks of the one-stage tests: a context on the session's moto, a bake record opened by hand
(for tests that start in the middle of a bake), what preflight records of the role's AMIs, the package
inventory a bake instance uploads, an AMI as wait-image leaves it and a context ready to publish it, a name
per test, a direct AWS client.
"""

from __future__ import annotations

import copy
import json

from bakery_lib.aws import Aws
from bakery_lib.catalog import parse_catalog
from bakery_lib.ec2.images import image_tags
from bakery_lib.inventory import inventory_key
from bakery_lib.settings import Settings
from bakery_lib.stages.base import Context
from bakery_lib.stages.preflight import recorded_role_amis, role_images
from bakery_lib.state import BakeState, Workspace, new_bake_id
from devstack._boto import session as shared_session
from devstack.moto import MotoServer, seed_base_image

CATALOG = {
    "defaults": {
        "region": "us-east-1",
        "runlist_bucket": "acme-bakery",
        "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:bakery-alerts",
        "chef": {"server_url": "http://127.0.0.1:1", "validation_client_name": "acme-validator",
                 "validation_key_s3": "s3://acme-bakery/chef/validator.pem"},
    },
    "roles": {"web": {"platform": "linux", "base_ami": {"name": "stages-base-*", "owners": ["self"]}}},
}


def make_ctx(moto_server, tmp_path, role_overrides=None, *, role="web") -> Context:
    data = copy.deepcopy(CATALOG)
    data["roles"] = {role: {"platform": "linux", "base_ami": {"name": "stages-base-*", "owners": ["self"]},
                            **(role_overrides or {})}}
    catalog = parse_catalog(data, str(tmp_path / "bakery.yaml"))
    session = shared_session(aws_access_key_id="testing", aws_secret_access_key="testing")
    aws = Aws(endpoint_url=moto_server.url, session=session)
    ctx = Context(ws=Workspace(tmp_path), catalog=catalog, role=catalog.roles[role], aws=aws,
                  settings=Settings(poll_interval=0.05), log_fn=lambda m: None)
    return ctx


def open_bake(ctx: Context, base_ami: str, **fields) -> BakeState:
    bake_id = new_bake_id()
    ctx.state = BakeState(role=ctx.role.name, bake_id=bake_id, release="1.0", region="us-east-1",
                          platform="linux", base_ami=base_ami, bake_key="k" * 32,
                          chef_node=f"bake-{ctx.role.name}-{bake_id}", **fields)
    ctx.state.stage("preflight").status = "succeeded"
    ctx.save()
    return ctx.state


def baked_image(moto_server, name: str, role: str | None = None) -> tuple[str, str]:
    """(image id, base image id): an available AMI in us-east-1 made from a seeded base, as wait-image
    leaves it -- tagged as the bakery tags a bake's image when ``role`` is given -- and the bucket
    publish writes the run list to."""
    ec2 = moto_server.client("ec2")
    s3 = moto_server.client("s3")
    try:
        s3.create_bucket(Bucket="acme-bakery")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    base = seed_base_image(ec2, name="publish-base-1")
    inst = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    tagged = {} if role is None else {"TagSpecifications": [
        {"ResourceType": "image", "Tags": [{"Key": "bakery:role", "Value": role},
                                           {"Key": "bakery:created-by", "Value": "bakery"},
                                           {"Key": "bakery:bake-id", "Value": "b-" + role}]}]}
    return ec2.create_image(InstanceId=inst, Name=name, **tagged)["ImageId"], base


def publish_ctx(moto_server, tmp_path, role: str, image_id: str, overrides=None, *,
                bake_id: str | None = None) -> Context:
    """A context for ``role`` whose bake is at publish: ``image_id`` is its AMI in us-east-1."""
    ctx = make_ctx(moto_server, tmp_path, overrides, role=role)
    open_bake(ctx, "ami-00000000")
    if bake_id is not None:
        ctx.state.bake_id = bake_id
    ctx.state.image_id = image_id
    ctx.state.amis = {"us-east-1": image_id}
    ctx.save()
    return ctx


def unique_role(request) -> str:
    return "r" + str(abs(hash(request.node.name)) % 10**8)


def new_aws(moto: MotoServer) -> Aws:
    session = shared_session(aws_access_key_id="testing", aws_secret_access_key="testing")
    return Aws(endpoint_url=moto.url, session=session)


def record_role_amis(ctx: Context) -> None:
    """What preflight records of its listing of the role's AMIs (``state.role_amis``), for a bake record
    opened by hand. Through ``ctx.aws``: contexts sharing one ``Aws`` share the batched listing."""
    state = ctx.require_state()
    state.role_amis = recorded_role_amis(role_images(ctx), state.bake_id)
    ctx.save()


def upload_inventory(s3, ctx: Context, packages: dict[str, str]) -> None:
    """The package inventory as the bake instance uploads it after its converge (a dpkg system), with the
    S3 client ``s3``."""
    doc = {"schema": 1, "platform": "linux", "manager": "dpkg", "os": {"id": "debian", "version_id": "12"},
           "packages": [{"name": n, "version": v, "arch": "amd64"} for n, v in packages.items()]}
    state = ctx.require_state()
    s3.put_object(Bucket=ctx.role.runlist_bucket, Key=inventory_key(ctx.role.name, state.bake_id),
                  Body=json.dumps(doc).encode())


def register_baked_ami(ec2, ctx: Context) -> str:
    """The bake's AMI as wait-image leaves it (tagged as the image stage tags it, ``bakery:sbom`` included),
    registered with the EC2 client ``ec2`` and recorded in the state: the bake is at boot-test / publish."""
    state = ctx.require_state()
    image_id = seed_base_image(ec2, f"bakery-{ctx.role.name}-{state.bake_id}",
                               tags={**image_tags(ctx), "bakery:imds-support": "v2.0", "bakery:boot-test": "passed"})
    state.image_id, state.image_state, state.amis = image_id, "available", {ctx.region: image_id}
    ctx.save()
    return image_id
