"""The boot test's deadline per platform: a Windows test instance goes through specialize, OOBE and a
metadata wait before its first boot's own deadline (the role's bootstrap_timeout) even starts."""

from __future__ import annotations

from typing import Any

from bakery_lib.catalog import parse_catalog

BASE: dict[str, Any] = {
    "region": "us-east-1", "instance_type": "t3.medium", "runlist_bucket": "acme-bakery",
    "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:bakery-alerts",
    "chef": {"server_url": "https://chef.example.com/organizations/acme", "validation_client_name": "acme-validator",
             "validation_key_s3": "s3://acme-bakery/chef/validator.pem"},
}


def roles(**defaults: Any) -> dict[str, Any]:
    data = {"defaults": {**BASE, **defaults}, "roles": {
        "web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"},
        "reporting": {"platform": "windows", "base_ami": "ami-0123456789abcdef1", "bootstrap_timeout": "90m"},
    }}
    return parse_catalog(data, "bakery.yaml").roles


def test_the_default_boot_test_timeout_is_per_platform_and_follows_the_first_boot_deadline() -> None:
    got = roles()
    assert got["web"].boot_test_timeout == 15 * 60
    assert got["reporting"].boot_test_timeout == 30 * 60 + 90 * 60


def test_a_boot_test_timeout_in_the_catalogue_wins_on_every_platform() -> None:
    got = roles(boot_test={"timeout": "25m"})
    assert got["web"].boot_test_timeout == got["reporting"].boot_test_timeout == 25 * 60
