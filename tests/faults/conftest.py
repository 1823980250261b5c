"""Fixtures of the fault-injection tests: one proxy per module in front of the session's moto."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bakery_lib.devstack import DevStack

from .proxy import FaultProxy


@pytest.fixture(scope="module")
def module_proxy(devstack: DevStack) -> Iterator[FaultProxy]:
    with FaultProxy(devstack.moto.url) as proxy:
        yield proxy


@pytest.fixture()
def proxy(module_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The module's proxy with no rule and an empty call log."""
    module_proxy.reset()
    yield module_proxy
    module_proxy.reset()
