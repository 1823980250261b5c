"""The instance role of a licensed-Chef role reads its license key and nothing more (moto's IAM, read back).

``chef.license_key_s3``: ``s3:GetObject`` on exactly that object. ``chef.license_key_ssm``:
``ssm:GetParameter`` on exactly that parameter, in each region of the role and this account only
(``ssm:GetParameters`` too on Windows, which reads it with ``Get-SSMParameterValue``). No ``kms:Decrypt``
(see ``bakery_lib.stages.iam_role``). A Cinc role gets no license statement at all.
"""

from __future__ import annotations

import json
from typing import Any

from support.stages import new_aws

from bakery_lib.catalog import parse_catalog
from bakery_lib.settings import Settings
from bakery_lib.stages import iam_role
from bakery_lib.stages.base import RoleContext
from devstack.samples import SAMPLE_BASE_AMI, offline_catalog_data


def converge(moto_server, tmp_path, name: str, **role: Any) -> dict[str, Any]:
    """Converge the role's IAM role as a bake does; return the inline policy as IAM stores it."""
    data = offline_catalog_data({name: {"platform": "linux", "base_ami": SAMPLE_BASE_AMI, **role}})
    catalog = parse_catalog(data, str(tmp_path / "bakery.yaml"))
    ctx = RoleContext(catalog=catalog, role=catalog.roles[name], settings=Settings(poll_interval=0.05),
                      aws=new_aws(moto_server), log_fn=lambda m: None)
    iam_role.converge(ctx)
    policy = moto_server.client("iam").get_role_policy(RoleName=f"bakery-{name}",
                                                       PolicyName=iam_role.POLICY_NAME)["PolicyDocument"]
    return json.loads(policy) if isinstance(policy, str) else policy


def statements(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in policy["Statement"]}


def actions(policy: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for s in policy["Statement"]:
        out |= {s["Action"]} if isinstance(s["Action"], str) else set(s["Action"])
    return out


def test_license_key_in_s3_grants_get_object_on_that_object_only(moto_server, tmp_path):
    policy = converge(moto_server, tmp_path, "lic-s3", chef={
        "distribution": "chef", "license_key_s3": "s3://acme-licenses/chef/license.txt"})
    grant = statements(policy)["ReadChefLicenseKey"]
    assert grant["Action"] == "s3:GetObject"
    assert grant["Resource"] == "arn:aws:s3:::acme-licenses/chef/license.txt"
    assert not any(a.startswith(("ssm:", "kms:")) for a in actions(policy))


def test_license_key_in_ssm_grants_get_parameter_on_that_parameter_per_region(moto_server, tmp_path):
    policy = converge(moto_server, tmp_path, "lic-ssm", copy_to_regions=["eu-west-1"], chef={
        "distribution": "chef", "license_key_ssm": "/acme/chef-license"})
    grant = statements(policy)["ReadChefLicenseKey"]
    assert grant["Action"] == "ssm:GetParameter"
    account = moto_server.client("sts").get_caller_identity()["Account"]
    assert sorted(grant["Resource"]) == [f"arn:aws:ssm:eu-west-1:{account}:parameter/acme/chef-license",
                                         f"arn:aws:ssm:us-east-1:{account}:parameter/acme/chef-license"]
    assert not any(a.startswith("kms:") for a in actions(policy))
    assert "arn:aws:s3:::acme-licenses" not in json.dumps(policy)


def test_windows_ssm_license_also_allows_get_parameters_and_cinc_gets_nothing(moto_server, tmp_path):
    policy = converge(moto_server, tmp_path, "lic-win", platform="windows", chef={
        "distribution": "chef", "license_key_ssm": "chef-license"})
    grant = statements(policy)["ReadChefLicenseKey"]
    assert sorted(grant["Action"]) == ["ssm:GetParameter", "ssm:GetParameters"]
    assert [r.split(":", 5)[5] for r in grant["Resource"]] == ["parameter/chef-license"]

    cinc = converge(moto_server, tmp_path, "lic-cinc")
    assert "ReadChefLicenseKey" not in statements(cinc)
    assert not any(a.startswith(("ssm:", "kms:")) for a in actions(cinc))
