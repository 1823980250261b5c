"""Local stand-ins for AWS, the Chef server and EC2 instances, for the tests and ``make demo``.

Everything listens on 127.0.0.1 only and is started by the caller:

- :class:`MotoServer` -- moto server in a subprocess (the AWS API), :func:`seed_base_image`;
- :class:`GoiardiServer` -- goiardi, a real Chef server with authentication;
- :class:`ImdsDouble` -- an IMDSv2 double for one simulated instance;
- :func:`write_stub_bin` -- a stub ``chef-client`` that registers with goiardi as the real one does;
- :class:`InstanceRunner` -- runs each moto instance's user data in a sandbox (EC2's part);
- :class:`RealInitRunner` -- the same interface, each instance a Debian 12 booted under systemd and
  cloud-init (``systemd-nspawn -b``; needs root), its bases from :mod:`devstack.realinit_base`;
- :class:`DevStack` -- all of the above, seeded (bucket, validator key, topic, cookbook, base AMI).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Each name is imported when first used: the instance sandbox's stub chef-client (devstack.stub_chef_client)
# starts once per converge and needs none of the servers, so importing the package must not load them.
_HOMES = {
    "DevStack": "stack", "GoiardiServer": "goiardi", "ImdsDouble": "imds", "InstanceRunner": "runner",
    "MotoServer": "moto", "RealInitRunner": "realinit", "aws_env": "moto", "isolated_env": "moto",
    "seed_base_image": "moto", "write_stub_bin": "stub_chef_client",
}
__all__ = [
    "DevStack", "GoiardiServer", "ImdsDouble", "InstanceRunner", "MotoServer", "RealInitRunner", "aws_env", "isolated_env",
    "seed_base_image", "write_stub_bin",
]

if TYPE_CHECKING:
    from .goiardi import GoiardiServer
    from .imds import ImdsDouble
    from .moto import MotoServer, aws_env, isolated_env, seed_base_image
    from .realinit import RealInitRunner
    from .runner import InstanceRunner
    from .stack import DevStack
    from .stub_chef_client import write_stub_bin


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
