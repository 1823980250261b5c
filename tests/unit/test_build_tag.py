"""The Jenkins build that made an AMI: ``bakery:build`` from Jenkins' ``BUILD_URL`` (or ``JOB_NAME`` +
``BUILD_NUMBER``), so that ``bakery summary --from-aws`` can name it from the account alone."""

from __future__ import annotations

import copy

from support.stages import CATALOG

from bakery_lib.aws import Aws
from bakery_lib.catalog import parse_catalog
from bakery_lib.ec2.images import image_tags
from bakery_lib.settings import Settings
from bakery_lib.stages.base import Context
from bakery_lib.state import BakeState, Workspace


def _tags(tmp_path, settings: Settings) -> dict[str, str]:
    catalog = parse_catalog(copy.deepcopy(CATALOG), str(tmp_path / "bakery.yaml"))
    ctx = Context(ws=Workspace(tmp_path), catalog=catalog, role=catalog.roles["web"],
                  aws=Aws(endpoint_url="http://127.0.0.1:9"), settings=settings)
    ctx.state = BakeState(role="web", bake_id="20260101000000-abcdef", release="1.0", region="us-east-1",
                          platform="linux", base_ami="ami-0123456789abcdef0", bake_key="k" * 32)
    return image_tags(ctx)


def test_the_build_is_tagged_from_jenkins_variables(tmp_path):
    url = "https://jenkins.example.com/job/ami-bake-web/42/"
    assert Settings.from_env({"BUILD_URL": url, "JOB_NAME": "x", "BUILD_NUMBER": "1"}).build == url
    assert Settings.from_env({"JOB_NAME": "folder/ami-bake-web", "BUILD_NUMBER": "42"}).build == "folder/ami-bake-web#42"
    assert Settings.from_env({"BUILD_URL": "https://j/" + "x" * 300}).build == ("https://j/" + "x" * 300)[:256]
    assert _tags(tmp_path, Settings.from_env({"BUILD_URL": url}))["bakery:build"] == url


def test_outside_jenkins_there_is_no_build_tag(tmp_path):
    assert Settings.from_env({"JOB_NAME": "only-a-name"}).build is None
    assert "bakery:build" not in _tags(tmp_path, Settings.from_env({}))
