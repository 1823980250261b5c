"""Unit tests of the roles catalogue: defaults merged, AMI filters, and every error names file/role/key."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bakery_lib.catalog import AmiFilter, load_catalog, parse_catalog
from bakery_lib.errors import CatalogError
from devstack.samples import offline_catalog_data

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bakery.yaml"

BASE = offline_catalog_data({
    "web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"},
    "reporting": {"platform": "windows",
                  "base_ami": {"name": "Windows_Server-2022-English-Full-Base-*", "owners": ["amazon"]}},
}, scm_url=None)


def variant(**changes):
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node[p]
        if value is KeyError:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return data


def test_example_catalogue_loads_with_defaults_merged():
    cat = load_catalog(EXAMPLE)
    web = cat.roles["web"]
    assert web.region == "us-east-1" and web.instance_type == "t3.medium"
    assert web.run_list_ami == ("recipe[roles::web_ami]",)
    assert web.run_list_launch == ("recipe[roles::web_launch]",)
    assert web.bootstrap_timeout == 45 * 60
    assert isinstance(web.base_ami, AmiFilter)
    assert cat.roles["reporting"].instance_type == "m5.large"
    assert cat.jenkins.job_name("web") == "ami-bake-web"


def test_role_overrides_default_and_run_lists():
    data = variant(roles__web={"platform": "linux", "base_ami": "ami-0123456789abcdef0", "region": "eu-west-1",
                               "run_lists": {"ami": ["recipe[base]", "role[web]"]}})
    web = parse_catalog(data, "c.yaml").roles["web"]
    assert web.region == "eu-west-1"
    assert web.run_list_ami == ("recipe[base]", "role[web]")
    assert web.run_list_launch == ("recipe[roles::web_launch]",)


@pytest.mark.parametrize(
    ("data", "role", "key", "words"),
    [
        (variant(roles__web__instnce_type="t3.large"), "web", "instnce_type", "unknown key"),
        (variant(defaults__regin="us-east-1"), None, "defaults.regin", "did you mean 'region'"),
        (variant(roles__web__platform="solaris"), "web", "platform", "linux, windows"),
        (variant(roles__web__platform=KeyError), "web", "platform", "missing"),
        (variant(roles__web__base_ami="ubuntu"), "web", "base_ami", "AMI id"),
        (variant(roles__web__base_ami={"owners": ["amazon"]}), "web", "base_ami.name", "missing"),
        (variant(roles__web__volume_size="big"), "web", "volume_size", "integer"),
        (variant(roles__web__volume_size=True), "web", "volume_size", "integer"),
        (variant(defaults__region=KeyError), "web", "region", "missing"),
        (variant(defaults__chef__server_url="https://x/$(reboot)"), None, "defaults.chef.server_url", "URL"),
        (variant(roles__web__run_lists={"ami": ["recipe[a];rm -rf /"]}), "web", "run_lists.ami.0", "run list item"),
        (variant(roles__web__tags={"bakery:role": "x"}), "web", "tags.bakery:role", "reserved"),
        (variant(roles__web__ingress=[{"port": 22}]), "web", "ingress.0.cidr", "exactly one"),
        (variant(jenkins__job_prefx="x"), None, "jenkins.job_prefx", "unknown key"),
        (variant(jenkins__job_prefix=""), None, "jenkins.job_prefix", "non-empty"),
        (variant(roles__web__bootstrap_timeout="forever"), "web", "bootstrap_timeout", "duration"),
    ],
)
def test_errors_name_file_role_and_key(data, role, key, words):
    with pytest.raises(CatalogError) as err:
        parse_catalog(data, "cat.yaml")
    text = str(err.value)
    assert text.startswith("catalogue cat.yaml")
    if role:
        assert f"role {role!r}" in text
    assert f"key {key!r}" in text
    assert words in text
    assert err.value.exit_code == 2


@pytest.mark.parametrize("name", ["Web", "web;reboot", "$(id)", "../etc", "a b", "w<b", "wéb", "1web", "", "x" * 64])
def test_bad_role_names_rejected(name):
    data = copy.deepcopy(BASE)
    data["roles"] = {name: {"platform": "linux", "base_ami": "ami-0123456789abcdef0"}}
    with pytest.raises(CatalogError, match="invalid role name"):
        parse_catalog(data, "cat.yaml")


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("defaults:\n  region: [us-east-1\nroles: {}\n")
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert str(path) in str(err.value) and "invalid YAML at line" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(CatalogError, match="file not found"):
        load_catalog(tmp_path / "nope.yaml")


def test_cli_bad_catalogue_exit_2_no_traceback(tmp_path):
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump(variant(roles__web__instnce_type="t3.large")))
    proc = subprocess.run([sys.executable, "-m", "bakery_lib", "--catalog", str(path), "--workspace", str(tmp_path),
                           "stage", "preflight", "--role", "web", "--release", "1.0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "'web'" in proc.stderr and "instnce_type" in proc.stderr
    assert not (tmp_path / ".bakery" / "web.json").exists()


def test_cli_bad_role_name_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bakery_lib", "--catalog", str(EXAMPLE), "--workspace", str(tmp_path),
                           "stage", "preflight", "--role", "web;id", "--release", "1.0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid role name" in proc.stderr and "Traceback" not in proc.stderr


# --- outputs that never lie: tags merge, artifact names cannot collide, values AWS refuses ----------


def test_role_tags_merge_with_default_tags_role_wins():
    data = variant(defaults__tags={"team": "platform", "env": "prod"},
                   roles__web__tags={"env": "staging", "service": "web"})
    cat = parse_catalog(data, "c.yaml")
    assert dict(cat.roles["web"].tags) == {"team": "platform", "env": "staging", "service": "web"}
    assert dict(cat.roles["reporting"].tags) == {"team": "platform", "env": "prod"}


def test_too_many_tags_after_merge_refused():
    data = variant(defaults__tags={f"d{i}": "x" for i in range(30)},
                   roles__web__tags={f"r{i}": "x" for i in range(11)})
    with pytest.raises(CatalogError, match=r"41 tags .* at most 40") as err:
        parse_catalog(data, "c.yaml")
    assert "role 'web'" in str(err.value) and "key 'tags'" in str(err.value)


def _with_roles(*names: str, **extra) -> dict:
    data = copy.deepcopy(BASE)
    data["roles"] = {n: {"platform": "linux", "base_ami": "ami-0123456789abcdef0", **extra.get(n, {})} for n in names}
    return data


@pytest.mark.parametrize(("names", "extra", "words"), [
    (("amis",), {}, "role name 'amis' is reserved"),
    (("orders-api", "orders_api"), {}, "both write AMI_ORDERS_API="),
    (("web", "web-eu-west-1"), {"web": {"copy_to_regions": ["eu-west-1"]}}, "both write AMI_WEB_EU_WEST_1="),
])
def test_artifact_collisions_refused(names, extra, words):
    with pytest.raises(CatalogError) as err:
        parse_catalog(_with_roles(*names, **extra), "cat.yaml")
    assert words in str(err.value) and str(err.value).startswith("catalogue cat.yaml")
    assert err.value.exit_code == 2


def test_distinct_names_do_not_collide():
    cat = parse_catalog(_with_roles("orders-api", "orders", "amis-web"), "c.yaml")
    assert sorted(cat.roles) == ["amis-web", "orders", "orders-api"]


@pytest.mark.parametrize(("rule", "key", "words"), [
    ({"port": 22, "cidr": "10.20.0.0/33"}, "ingress.0.cidr", "not an IPv4 CIDR"),
    ({"port": 22, "cidr": "300.1.2.3/8"}, "ingress.0.cidr", "not an IPv4 CIDR"),
    ({"port": 22, "cidr": "10.0.0.28/29"}, "ingress.0.cidr", "write 10.0.0.24/29"),
    ({"port": 22, "cidr": "10.0.0.1"}, "ingress.0.cidr", "no prefix length"),
    ({"port": 22, "cidr": "::/0"}, "ingress.0.cidr", "not an IPv4 CIDR"),
    ({"port": 65536, "cidr": "10.0.0.0/8"}, "ingress.0.port", "out of range 0..65535"),
    ({"port": -1, "cidr": "10.0.0.0/8"}, "ingress.0.port", "out of range 0..65535"),
    ({"from_port": 9000, "to_port": 8000, "cidr": "10.0.0.0/8"}, "ingress.0.from_port", "greater than to_port"),
    ({"protocol": "icmp", "port": 256, "cidr": "10.0.0.0/8"}, "ingress.0.port", "out of range -1..255"),
    ({"protocol": "-1", "port": 22, "cidr": "10.0.0.0/8"}, "ingress.0.port", "takes no ports"),
    ({"protocol": "gre", "port": 22, "cidr": "10.0.0.0/8"}, "ingress.0.protocol", "expected one of"),
    ({"port": 22, "from_port": 1, "to_port": 2, "cidr": "10.0.0.0/8"}, "ingress.0.port", "not both"),
])
def test_ingress_values_aws_refuses_are_refused(rule, key, words):
    with pytest.raises(CatalogError) as err:
        parse_catalog(variant(roles__web__ingress=[rule]), "cat.yaml")
    text = str(err.value)
    assert "role 'web'" in text and f"key {key!r}" in text and words in text, text


def test_ingress_all_traffic_and_icmp_accepted():
    data = variant(roles__web__ingress=[{"protocol": "-1", "cidr": "10.0.0.0/8"},
                                        {"protocol": "icmp", "from_port": 8, "to_port": -1, "cidr": "0.0.0.0/0"},
                                        {"from_port": 0, "to_port": 65535, "source_group": "sg-0123456789abcdef0"}])
    rules = parse_catalog(data, "c.yaml").roles["web"].ingress
    assert [(r.protocol, r.from_port, r.to_port) for r in rules] == [("-1", -1, -1), ("icmp", 8, -1), ("tcp", 0, 65535)]


def test_cli_bad_cidr_exit_2_before_anything(tmp_path):
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump(variant(roles__web__ingress=[{"port": 443, "cidr": "10.20.0.0/33"}])))
    proc = subprocess.run([sys.executable, "-m", "bakery_lib", "--catalog", str(path), "--workspace", str(tmp_path),
                           "bake", "--role", "web", "--release", "1.0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "'web'" in proc.stderr and "ingress.0.cidr" in proc.stderr
    assert "10.20.0.0/33" in proc.stderr
    assert not (tmp_path / ".bakery").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize(("changes", "key", "words"), [
    ({"roles__web__fast_launch": {"enabled": True}}, "fast_launch", "Windows Fast Launch is for Windows AMIs only"),
    ({"roles__reporting__fast_launch": {"max_parallel_launches": 5}}, "fast_launch.max_parallel_launches",
     "out of range 6..1000"),
    ({"roles__reporting__fast_launch": {"target_snapshots": 0}}, "fast_launch.target_snapshots", "out of range"),
    ({"roles__reporting__fast_launch": {"enable": True}}, "fast_launch.enable", "unknown key"),
    ({"roles__web__fast_snapshot_restore": ["us-east-1"]}, "fast_snapshot_restore.0", "not an Availability Zone"),
    ({"roles__web__fast_snapshot_restore": ["eu-west-1a"]}, "fast_snapshot_restore", "not in a region of the role"),
    ({"roles__web__fast_snapshot_restore": ["us-east-1a", "us-east-1a"]}, "fast_snapshot_restore", "twice"),
])
def test_fast_launch_and_restore_keys_are_validated_at_load(changes, key, words):
    with pytest.raises(CatalogError, match=rf"role '(web|reporting)', key '{re.escape(key)}': .*{words}"):
        parse_catalog(variant(**changes), "bakery.yaml")


def test_fast_launch_and_restore_keys_load():
    data = variant(roles__reporting__fast_launch={"max_parallel_launches": 8},
                   roles__web__copy_to_regions=["eu-west-1"],
                   roles__web__fast_snapshot_restore=["us-east-1a", "eu-west-1b"])
    roles = parse_catalog(data, "bakery.yaml").roles
    assert roles["reporting"].fast_launch is not None
    assert (roles["reporting"].fast_launch.max_parallel_launches, roles["reporting"].fast_launch.target_snapshots) == (8, 5)
    assert roles["web"].fast_launch is None
    assert roles["web"].restore_zones("eu-west-1") == ["eu-west-1b"]
    off = parse_catalog(variant(roles__reporting__fast_launch={"enabled": False}), "bakery.yaml").roles["reporting"]
    assert off.fast_launch is None


def test_cli_fast_launch_on_linux_exit_2_naming_the_key(tmp_path):
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump(variant(roles__web__fast_launch={"enabled": True})))
    proc = subprocess.run([sys.executable, "-m", "bakery_lib", "--catalog", str(path), "--workspace", str(tmp_path),
                           "validate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "'web'" in proc.stderr and "fast_launch" in proc.stderr
