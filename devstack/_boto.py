"""boto3 clients for the devstack's and the tests' own plumbing (product code uses ``bakery_lib.aws``).

A client made from a fresh ``boto3.session.Session()`` parses its service's model (EC2's is several
MB of JSON) and botocore's endpoint data again: 30-60 ms of CPU per client. The plumbing makes
thousands of them in a test session (a runner per test, a client per assertion), which was half of
the test process's CPU. Here every session shares one botocore data loader, which keeps what it has
parsed (botocore's ``Loader`` caches per instance), and :func:`client` hands out one client per
service, endpoint, Region and key: boto3 clients are thread-safe and these carry no per-use state
(no event handlers are registered on them). What a client sends and receives is unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_loader: Any = None
_clients: dict[tuple[str, str | None, str | None, str | None, str | None], Any] = {}


def session(**kwargs: Any) -> Any:
    """A ``boto3.session.Session(**kwargs)`` whose service models are parsed once per process."""
    import boto3
    import botocore.loaders
    import botocore.session

    global _loader
    with _lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        core = botocore.session.get_session()
        core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core, **kwargs)


def client(service: str, *, endpoint_url: str | None = None, region_name: str | None = None,
           aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
           config: Any = None) -> Any:
    """A shared client for these settings; with a ``config`` (not hashable), a new one each call."""
    def make() -> Any:
        return session().client(service, endpoint_url=endpoint_url, region_name=region_name,
                                aws_access_key_id=aws_access_key_id,
                                aws_secret_access_key=aws_secret_access_key, config=config)

    if config is not None:
        return make()
    key = (service, endpoint_url, region_name, aws_access_key_id, aws_secret_access_key)
    with _lock:
        found = _clients.get(key)
    if found is None:
        found = make()
        with _lock:
            found = _clients.setdefault(key, found)
    return found
