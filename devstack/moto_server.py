"""``python -m devstack.moto_server -H HOST -p PORT``: moto's own server, with its EC2 tag look-up indexed.

moto 5.2 answers every EC2 resource's tags (``TaggedEC2Resource.get_tags``, used when a Describe call
renders a resource and when a ``tag:`` filter is matched) by scanning every tag of every resource in
the Region with a regular expression per tag (``TagBackend.describe_tags`` with a ``resource-id``
filter). A DescribeInstances of N instances then costs O(N x all tags): with 300 instances in one
moto, a ``tag:`` filtered DescribeInstances took 165 ms of moto's CPU against 15 ms by instance id, and
it grows with every test a session runs. AWS's cost does not grow so; nothing the bakery or a test
sees depends on it.

This module changes only that look-up, for what ``get_tags`` asks (one literal resource id: no
``*``/``?``/``[`` that ``fnmatch`` would treat as a pattern): the resource's own tags, read from the
backend's per-resource map, in the same shape and order ``describe_tags`` gives. Every other use of
``describe_tags`` (the DescribeTags API, pattern filters) is moto's own code.

Two answers moto works out again for every request are kept instead (a quarter of its CPU in a bake
test): the method names of a response class (``inspect.getmembers`` of the class, to find the
action's handler) and the list of its service packages (a directory scan, to route the request).
Both depend only on the installed moto.
"""

from __future__ import annotations

from typing import Any

PATTERN_CHARS = frozenset("*?[")


def _fast_get_tags(self: Any) -> list[dict[str, str]]:
    resource_id = getattr(self, "id", None)
    if not resource_id:
        return []
    backend = self.ec2_backend
    if PATTERN_CHARS.intersection(resource_id):  # a pattern: moto's own scan decides
        return list(backend.describe_tags(filters={"resource-id": [resource_id]}))
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    tags = backend.tags.get(resource_id) or {}
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [{"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
            for key, value in list(tags.items())]


def patch() -> None:
    """Index moto's per-resource tag look-up; keep what depends only on moto's code (idempotent)."""
    import functools

    from moto import backends
    from moto.core import responses, utils
    from moto.ec2.models.core import TaggedEC2Resource

    TaggedEC2Resource.get_tags = _fast_get_tags  # type: ignore[method-assign]
    if not hasattr(responses.method_names_from_class, "cache_info"):
        responses.method_names_from_class = functools.lru_cache(maxsize=None)(utils.method_names_from_class)
    if not hasattr(backends.list_of_moto_modules, "cache_info"):
        modules = tuple(backends.list_of_moto_modules())
        backends.list_of_moto_modules = functools.lru_cache(maxsize=1)(lambda: modules)


def main() -> None:
    patch()
    from moto.server import main as moto_main

    moto_main()


if __name__ == "__main__":
    main()
