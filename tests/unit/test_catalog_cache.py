"""The validated catalogue kept in a workspace's ``.bakery/`` (``bakery_lib.catalog.cache``): a later
process gets what a validation of the file as it is now would give, never an older answer."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from bakery_lib.catalog import load_catalog
from bakery_lib.catalog.cache import CACHE_NAME, load_catalog_cached
from bakery_lib.errors import CatalogError
from devstack.samples import offline_catalog_data


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "bakery.yaml"
    path.write_text(yaml.safe_dump(offline_catalog_data(["web", "worker"])), encoding="utf-8")
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ws" / ".bakery"
    path.mkdir(parents=True)
    return path


def test_a_kept_catalogue_equals_a_fresh_validation(catalogue: Path, state_dir: Path) -> None:
    first = load_catalog_cached(catalogue, state_dir)
    assert (state_dir / CACHE_NAME).is_file()
    again = load_catalog_cached(catalogue, state_dir)
    assert again == first == load_catalog(catalogue)
    assert again.raw == load_catalog(catalogue).raw


def test_a_changed_file_is_validated_again_and_its_error_named(catalogue: Path, state_dir: Path) -> None:
    load_catalog_cached(catalogue, state_dir)
    data = yaml.safe_load(catalogue.read_text(encoding="utf-8"))
    data["roles"]["web"]["volume_size"] = "huge"
    catalogue.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(CatalogError) as exc:
        load_catalog_cached(catalogue, state_dir)
    assert "web" in str(exc.value) and "volume_size" in str(exc.value)


def test_an_edit_that_keeps_the_file_valid_is_seen(catalogue: Path, state_dir: Path) -> None:
    assert load_catalog_cached(catalogue, state_dir).role("web").volume_size != 77
    data = yaml.safe_load(catalogue.read_text(encoding="utf-8"))
    data["roles"]["web"]["volume_size"] = 77
    catalogue.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_catalog_cached(catalogue, state_dir).role("web").volume_size == 77


def test_another_path_to_the_same_text_is_its_own_entry(catalogue: Path, state_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_bytes(catalogue.read_bytes())
    assert load_catalog_cached(catalogue, state_dir).path == str(catalogue)
    assert load_catalog_cached(other, state_dir).path == str(other)


def test_nothing_is_written_without_a_records_directory(catalogue: Path, tmp_path: Path) -> None:
    missing = tmp_path / "empty" / ".bakery"
    assert load_catalog_cached(catalogue, missing) == load_catalog(catalogue)
    assert not missing.exists()


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps(("a key", "not a catalogue")),
                                     pickle.dumps({"something": "else"})])
def test_a_torn_or_foreign_cache_file_is_only_a_miss(catalogue: Path, state_dir: Path, content: bytes) -> None:
    (state_dir / CACHE_NAME).write_bytes(content)
    assert load_catalog_cached(catalogue, state_dir) == load_catalog(catalogue)


def test_a_missing_catalogue_says_so_as_before(tmp_path: Path, state_dir: Path) -> None:
    with pytest.raises(CatalogError) as exc:
        load_catalog_cached(tmp_path / "nope.yaml", state_dir)
    assert "file not found" in str(exc.value)
