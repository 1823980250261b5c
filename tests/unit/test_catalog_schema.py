"""The catalogue declared once: every problem of a file at once, both YAML loaders alike, the JSON
Schema an editor completes from, and the generated reference page kept in step with the models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from bakery_lib.catalog import json_schema, load_catalog, parse_catalog, reference_markdown
from bakery_lib.catalog.yamlfile import StrictLoader, StrictPyLoader, parse_yaml
from bakery_lib.cli import bakery_main
from bakery_lib.errors import CatalogError
from devstack.samples import offline_catalog_data

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "bakery.yaml"
REFERENCE = REPO / "docs" / "reference" / "catalogue.md"
BASE = offline_catalog_data({"web": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"},
                             "db": {"platform": "linux", "base_ami": "ami-0123456789abcdef0"}}, scm_url=None)


def _problems(data: dict) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        parse_catalog(data, "cat.yaml")
    return info.value


# --- all the problems of a file at once ----------------------------------------------------------------


def test_every_problem_of_a_file_is_reported_at_once_on_one_line():
    data = copy.deepcopy(BASE)
    data["defaults"]["volume_type"] = "gp9"
    data["jenkins"] = {"job_prefx": "x"}
    data["roles"]["web"]["instnce_type"] = "t3.large"
    data["roles"]["db"]["ingress"] = [{"port": 70000, "cidr": "10.0.0.0/8"}]
    data["roles"]["Bad"] = {"platform": "linux", "base_ami": "ami-0123456789abcdef0"}
    err = _problems(data)
    text = str(err)
    assert err.exit_code == 2 and text.startswith("catalogue cat.yaml") and len(text.splitlines()) == 1
    for expected in ("key 'defaults.volume_type': expected one of gp2, gp3, io1, io2, got 'gp9'",
                     "key 'jenkins.job_prefx': unknown key (did you mean 'job_prefix'?)",
                     "role 'web', key 'instnce_type': unknown key (did you mean 'instance_type'?)",
                     "role 'db', key 'ingress.0.port': 70000 is out of range 0..65535",
                     "role 'Bad': invalid role name 'Bad'"):
        assert expected in text, text
    assert len(err.problems) == 5


def test_merge_problems_of_valid_roles_come_with_the_field_problems_of_others():
    """A role whose keys are fine still has its merged settings checked when another role is bad."""
    data = copy.deepcopy(BASE)
    data["roles"]["web"]["volume_size"] = "big"
    data["roles"]["db"]["chef"] = {"distribution": "chef"}
    text = str(_problems(data))
    assert "role 'web', key 'volume_size': expected an integer, got str 'big'" in text
    assert "role 'db', key 'chef.license_key_s3': missing: Chef's downloads" in text


def test_nine_bad_items_of_one_list_are_one_problem():
    data = copy.deepcopy(BASE)
    data["roles"]["web"]["copy_to_regions"] = [f"nowhere{i}" for i in range(9)]
    err = _problems(data)
    assert "key 'copy_to_regions.0'" in str(err) and len(err.problems) == 1


def test_the_first_problem_comes_first_for_scripts_that_read_one():
    data = copy.deepcopy(BASE)
    data["defaults"]["regin"] = "us-east-1"
    data["roles"]["web"]["keep"] = 0
    assert str(_problems(data)).startswith(
        "catalogue cat.yaml, key 'defaults.regin': unknown key (did you mean 'region'?); ")


# --- both YAML loaders give the same errors -------------------------------------------------------------


@pytest.mark.skipif(StrictLoader is StrictPyLoader, reason="PyYAML without libyaml")
@pytest.mark.parametrize("text", [
    "roles:\n  web: {platform: linux}\n  web: {platform: windows}\n",
    "roles: " + "[" * 5000 + "]" * 5000 + "\n",
    "roles: {a: [1, 2}\n",
    "roles:\n\tweb: {}\n",
    "roles: !!python/object/apply:os.system ['true']\n",
])
def test_c_and_python_loaders_refuse_alike(text: str):
    said = _refusals(parse_yaml, text)
    assert said[0] == said[1]
    assert said[0].startswith("catalogue c.yaml: ")


def _refusals(load, text: str) -> list[str]:
    """What ``load(text, "c.yaml", loader)`` refuses with, through the C loader, then the Python one."""
    said = []
    for loader in (StrictLoader, StrictPyLoader):
        with pytest.raises(CatalogError) as info:
            load(text, "c.yaml", loader)
        said.append(str(info.value))
    return said


def test_c_and_python_loaders_read_the_example_alike():
    text = EXAMPLE.read_text()
    assert parse_yaml(text, "e", StrictLoader) == parse_yaml(text, "e", StrictPyLoader)


def test_the_duplicate_key_names_the_key_and_line():
    with pytest.raises(CatalogError, match=r"line 3, column 3: duplicate key 'web'"):
        parse_yaml("roles:\n  web: {}\n  web: {}\n", "c.yaml")


# --- the JSON Schema ----------------------------------------------------------------------------------


def test_schema_is_valid_json_schema_and_accepts_the_example():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(EXAMPLE.read_text()))) == []
    assert list(validator.iter_errors(BASE)) == []


@pytest.mark.parametrize(("path", "value", "words"), [
    (("roles", "web", "instnce_type"), "t3.large", "instnce_type"),
    (("defaults", "chef", "server_urll"), "https://x", "server_urll"),
    (("roles", "web", "platform"), "solaris", "solaris"),
    (("roles", "web", "volume_size"), 4, "4"),
    (("roles", "web", "bootstrap_timeout"), "forever", "forever"),
])
def test_schema_rejects_what_the_loader_rejects(path, value, words):
    data = copy.deepcopy(BASE)
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    errors = list(jsonschema.Draft202012Validator(json_schema()).iter_errors(data))
    assert errors and any(words in e.message for e in errors), [e.message for e in errors]
    with pytest.raises(CatalogError):
        parse_catalog(data, "c.yaml")


def test_bakery_schema_writes_stdout_or_a_file(tmp_path: Path, capsys):
    assert bakery_main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == json_schema()
    out = tmp_path / "editor" / "bakery.schema.json"
    assert bakery_main(["schema", "--output", str(out)]) == 0
    assert out.read_text() == printed and capsys.readouterr().out.strip() == str(out)


# --- the generated reference ------------------------------------------------------------------------------


def test_reference_page_is_the_rendering_of_the_models():
    """docs/reference/catalogue.md is generated (also checked by docs/generate.py's own test)."""
    assert REFERENCE.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/reference/catalogue.md is stale: run .venv/bin/python docs/generate.py")


def test_reference_names_every_key_with_its_default():
    page = reference_markdown()
    for model_key in ("`region`", "`bootstrap_timeout`", "`license_key_ssm`", "`why_run`", "`job_prefix`",
                      "`source_group`", "`owners`"):
        assert f"| {model_key} |" in page
    assert "| `bootstrap_timeout` | duration" in page and "| 45m |" in page


def test_load_catalog_reads_the_example_with_the_c_loader():
    assert sorted(load_catalog(EXAMPLE).roles) == ["reporting", "web", "worker"]


@pytest.mark.skipif(StrictLoader is StrictPyLoader, reason="PyYAML without libyaml")
@pytest.mark.parametrize("text", [
    "roles:\n  web: {platform: linux}\n  web: {platform: windows}\n",
    "defaults: {chef: {a: 1, a: 2}}\n",
    "roles: !!python/object/apply:os.system ['true']\n",
])
def test_the_c_loader_itself_refuses_duplicates_and_unsafe_tags_as_the_python_one(text: str):
    """Not through the fallback: the C loader's own construction says the same."""
    from bakery_lib.catalog.yamlfile import _load

    said = _refusals(_load, text)
    assert said[0] == said[1]
