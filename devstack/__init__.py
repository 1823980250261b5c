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

from .goiardi import GoiardiServer
from .imds import ImdsDouble
from .moto import MotoServer, aws_env, isolated_env, seed_base_image
from .realinit import RealInitRunner
from .runner import InstanceRunner
from .stack import DevStack
from .stub_chef_client import write_stub_bin

__all__ = [
    "DevStack", "GoiardiServer", "ImdsDouble", "InstanceRunner", "MotoServer", "RealInitRunner", "aws_env", "isolated_env",
    "seed_base_image", "write_stub_bin",
]
