"""The e2e layer: the console scripts as Jenkins and operators call them, in subprocesses, against the
session's moto server and goiardi, with the instance runner playing EC2 (root conftest fixtures
``run_cli``, ``cli_env``, ``instance_runner``, ``catalog_path``, ``workspace``).
"""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
