"""A catalogue whose endpoints point at nothing real: for rendering, validation and job generation
without any service running (tests, benchmarks). ``DevStack.catalog_data`` is the one for a live stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SAMPLE_BASE_AMI = "ami-0123456789abcdef0"


def offline_catalog_data(roles: Mapping[str, Any] | Iterable[str] = ("web",), **jenkins: Any) -> dict[str, Any]:
    """Catalogue data for ``roles`` (names: Linux roles from a fixed AMI id; or name -> settings).

    ``jenkins`` keywords override the ``jenkins`` section; a value of None leaves that key out.
    """
    if not isinstance(roles, Mapping):
        roles = {name: {"platform": "linux", "base_ami": SAMPLE_BASE_AMI} for name in roles}
    section = {
        "job_prefix": "ami-bake-",
        "upstream_jobs": ["deploy-release"],
        "scm_url": "https://git.example.com/ops/bakery.git",
        **jenkins,
    }
    return {
        "defaults": {
            "region": "us-east-1",
            "runlist_bucket": "acme-bakery",
            "alert_topic_arn": "arn:aws:sns:us-east-1:123456789012:bakery-alerts",
            "chef": {
                "server_url": "https://chef.example.com/organizations/acme",
                "validation_client_name": "acme-validator",
                "validation_key_s3": "s3://acme-bakery/chef/validator.pem",
            },
        },
        "jenkins": {k: v for k, v in section.items() if v is not None},
        "roles": {name: dict(spec) for name, spec in roles.items()},
    }
