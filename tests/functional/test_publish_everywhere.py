"""publish against moto server: every region's launch template gets a new default version built on
``$Default`` (not ``$Latest``), and the SSM ``aws:ec2:image`` value is read back (SSM validates it
asynchronously and does not store a value that fails; AWS Systems Manager User Guide, "Native
parameter support for Amazon Machine Image IDs").
"""

from __future__ import annotations

import pytest
from support.stages import baked_image, publish_ctx, unique_role

from bakery_lib.clock import Clock
from bakery_lib.errors import BakeryError
from bakery_lib.stages import publish


@pytest.fixture()
def baked(moto_server, request):
    role = unique_role(request)
    image_id, base = baked_image(moto_server, f"bakery-{role}-1.0-x", role)
    return role, image_id, base


def _ctx(moto_server, tmp_path, role, image_id, **overrides):
    return publish_ctx(moto_server, tmp_path, role, image_id, overrides, bake_id="b-" + role)


def test_every_regions_template_from_its_default_version(moto_server, tmp_path, baked):
    role, image_id, base = baked
    name = f"lt-{role}"
    for region in ("us-east-1", "eu-west-1"):
        ec2 = moto_server.client("ec2", region)
        ec2.create_launch_template(LaunchTemplateName=name,
                                   LaunchTemplateData={"ImageId": base, "InstanceType": "m5.large"})
        # Someone's draft: the newest version, not the default. Publishing must not build on it.
        ec2.create_launch_template_version(LaunchTemplateName=name, SourceVersion="1",
                                           LaunchTemplateData={"InstanceType": "x1e.32xlarge"})
    ctx = _ctx(moto_server, tmp_path, role, image_id, copy_to_regions=["eu-west-1"], launch_template=name)
    sent = []
    ctx.aws.add_hook("provide-client-params.ec2.CreateLaunchTemplateVersion",
                     lambda params, **_: sent.append(params["SourceVersion"]))
    message = publish.run(ctx)
    # moto stores only the data sent (it does not merge SourceVersion's), so the request is what shows
    # the new version is built on the default one.
    assert sent == ["$Default", "$Default"]
    for region in ("us-east-1", "eu-west-1"):
        data = moto_server.client("ec2", region).describe_launch_template_versions(
            LaunchTemplateName=name, Versions=["$Default"])["LaunchTemplateVersions"][0]
        assert data["VersionNumber"] == 3, region
        assert data["LaunchTemplateData"]["ImageId"] == ctx.state.amis[region], region
        assert f"in {region} default version 3" in message


def test_template_missing_in_a_copy_region_is_noted(moto_server, tmp_path, baked):
    role, image_id, base = baked
    name = f"lt-{role}"
    moto_server.client("ec2").create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": base})
    ctx = _ctx(moto_server, tmp_path, role, image_id, copy_to_regions=["eu-north-1"], launch_template=name)
    message = publish.run(ctx)
    assert f"launch template {name} not in eu-north-1: left alone" in message
    assert ctx.state.outcome == "succeeded"


def test_ssm_value_read_back(moto_server, tmp_path, baked):
    """SSM that never stores the value (validation failed): publish fails saying so, not 'published'."""
    role, image_id, _ = baked
    ctx = _ctx(moto_server, tmp_path, role, image_id)
    ctx.clock = VirtualClock()

    def swallow(params, **_):
        params["Value"] = "ami-0000000000000dead"  # what SSM keeps is not what was written

    ctx.aws.add_hook("provide-client-params.ssm.PutParameter", swallow)
    with pytest.raises(BakeryError, match=r"SSM parameter /bakery/.*/latest in us-east-1 still reads "
                                          r"ami-0000000000000dead .* did not accept it"):
        publish.run(ctx)
    assert not ctx.state.closed


class VirtualClock(Clock):
    """Time that passes only by sleeping: the read-back's five minutes pass at once."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def pause(self, seconds: float) -> bool:
        self.t += max(0.0, seconds) + 1.0
        return False
