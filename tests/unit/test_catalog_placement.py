"""Catalogue keys of the capacity fallback and of the Windows generalize wait.

``instance_types`` / ``subnet_ids`` (lists; the singular keys stay accepted) and ``sysprep_timeout``:
how they merge with ``defaults``, the order ``launch`` tries, and bad values refused with exit 2
naming the file, the role and the key before anything is done.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from bakery_lib.catalog import parse_catalog
from bakery_lib.ec2.instances import placements
from bakery_lib.errors import CatalogError

BASE: dict[str, Any] = {
    "defaults": {
        "region": "us-east-1",
        "runlist_bucket": "acme-bakery",
        "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:bakery-alerts",
        "chef": {"server_url": "https://chef.example.com/organizations/acme",
                 "validation_client_name": "acme-validator",
                 "validation_key_s3": "s3://acme-bakery/chef/validator.pem"},
    },
    "roles": {"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"}},
}


def catalog(defaults: dict[str, Any] | None = None, role: dict[str, Any] | None = None):
    data = copy.deepcopy(BASE)
    data["defaults"].update(defaults or {})
    data["roles"]["web"].update(role or {})
    return parse_catalog(data, "bakery.yaml")


def test_lists_singulars_and_defaults_merge():
    web = catalog().role("web")
    assert (web.instance_types, web.subnet_ids, web.sysprep_timeout) == (("t3.medium",), (), 20 * 60)
    web = catalog({"instance_types": ["t3.medium", "t3a.medium"], "subnet_ids": ["subnet-0aaaaaaaa", "subnet-0bbbbbbbb"]}
                  ).role("web")
    assert web.instance_type == "t3.medium" and web.subnet_id == "subnet-0aaaaaaaa"
    assert placements(web) == [("t3.medium", "subnet-0aaaaaaaa"), ("t3.medium", "subnet-0bbbbbbbb"),
                               ("t3a.medium", "subnet-0aaaaaaaa"), ("t3a.medium", "subnet-0bbbbbbbb")]
    # A role's singular replaces the defaults' list whole; its list replaces the defaults' singular.
    web = catalog({"instance_types": ["t3.medium", "t3a.medium"]}, {"instance_type": "m5.large"}).role("web")
    assert web.instance_types == ("m5.large",)
    web = catalog({"instance_type": "m5.large"}, {"instance_types": ["c5.large", "c5a.large"],
                                                 "sysprep_timeout": "30m"}).role("web")
    assert (web.instance_type, web.instance_types, web.sysprep_timeout) == ("c5.large", ("c5.large", "c5a.large"), 1800)
    assert placements(catalog().role("web")) == [("t3.medium", None)]


@pytest.mark.parametrize("defaults, role, key, words", [
    ({}, {"instance_types": []}, "instance_types", "must not be empty"),
    ({}, {"instance_types": ["t3.medium", "t3.medium"]}, "instance_types", "twice"),
    ({}, {"instance_types": "t3.medium"}, "instance_types", "expected a list"),
    ({}, {"instance_types": ["T3 medium"]}, "instance_types.0", "instance type"),
    ({}, {"subnet_ids": ["subnet-zz"]}, "subnet_ids.0", "subnet id"),
    ({}, {"instance_type": "t3.large", "instance_types": ["t3.small"]}, "instance_types", "not both"),
    ({"subnet_id": "subnet-0aaaaaaaa", "subnet_ids": ["subnet-0bbbbbbbb"]}, {}, "defaults.subnet_ids", "not both"),
    ({}, {"sysprep_timeout": "soon"}, "sysprep_timeout", ""),
])
def test_bad_values_name_file_role_and_key(defaults, role, key, words):
    with pytest.raises(CatalogError) as info:
        catalog(defaults, role)
    text = str(info.value)
    assert "bakery.yaml" in text and f"key '{key}'" in text and words in text
    if not key.startswith("defaults."):
        assert "role 'web'" in text


def test_cli_exits_2_with_nothing_done(run_cli, tmp_path, workspace):
    path = tmp_path / "bakery.yaml"
    data = copy.deepcopy(BASE)
    data["roles"]["web"]["subnet_ids"] = []
    path.write_text(yaml.safe_dump(data))
    proc = run_cli(["--catalog", str(path), "stage", "preflight", "--role", "web", "--release", "1"])
    assert proc.returncode == 2
    assert "role 'web', key 'subnet_ids': must not be empty" in proc.stderr and "Traceback" not in proc.stderr
    assert not (workspace / ".bakery").exists() or not any((workspace / ".bakery").iterdir())
