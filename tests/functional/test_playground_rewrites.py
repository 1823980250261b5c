"""The playground says what it changes in the user's catalogue: one line per key its copy points at the
local services (region, bucket, topic, Chef server, each role's base AMI, removed subnets), nothing else.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from devstack.runner import OWNER_TAG

REPO = Path(__file__).resolve().parents[2]


def test_every_rewrite_of_the_example_catalogue_is_listed(devstack, tmp_path):
    example = REPO / "examples" / "bakery.yaml"
    changes = devstack.example_rewrites(example)
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    copy = yaml.safe_load(devstack.write_example_catalog(tmp_path / "bakery.yaml", example).read_text())
    moved = {r for r in data["roles"] if data["roles"][r].get("base_ami") != copy["roles"][r]["base_ami"]}
    assert moved, "the example has no role whose base AMI the playground replaces"
    assert {line.split(".")[1] for line in changes if line.startswith("roles.") and ".base_ami" in line} == moved
    assert any(line.startswith("defaults.chef.server_url: ") for line in changes)
    # Instance types, tags, timeouts of the user's roles are kept, so never listed (the owner tag is the
    # test harness's own: a test's catalogues carry it so that only its runner boots their instances).
    ours = [line for line in changes if not line.startswith(f"defaults.tags.{OWNER_TAG}:")]
    assert not [line for line in ours if ".instance_type" in line or ".tags" in line], changes
    assert copy["roles"].keys() == data["roles"].keys()
