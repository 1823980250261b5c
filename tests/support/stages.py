"""Building blocks of the one-stage tests: a context on the session's moto, a bake record opened by hand
(for tests that start in the middle of a bake), a name per test, a direct AWS client.
"""

from __future__ import annotations

import copy

import boto3

from bakery_lib.aws import Aws
from bakery_lib.catalog import parse_catalog
from bakery_lib.settings import Settings
from bakery_lib.stages.base import Context
from bakery_lib.state import BakeState, Workspace, new_bake_id
from devstack.moto import MotoServer

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
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
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


def unique_role(request) -> str:
    return "r" + str(abs(hash(request.node.name)) % 10**8)


def new_aws(moto: MotoServer) -> Aws:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    return Aws(endpoint_url=moto.url, session=session)
