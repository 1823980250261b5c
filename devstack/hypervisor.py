"""What both instance runners do as the hypervisor, not as API clients of the bakery.

:class:`devstack.runner.InstanceRunner` (a sandbox per instance) and
:class:`devstack.realinit.RealInitRunner` (systemd-nspawn per instance) find the instances moto
runs, read their user data, hand each one a metadata service of its own and show its console the
same way; this module is that shared part, so the two runners differ only in how they boot.

User data: ``DescribeInstanceAttribute`` with ``Attribute=userData`` answers ``UserData.Value``
base64-encoded, and no ``Value`` when the instance has none (EC2 API reference,
DescribeInstanceAttribute: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceAttribute.html).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .imds import ImdsDouble
from .moto import ACCOUNT_ID


def describe_instances(ec2: Any, filters: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every instance moto knows (or those ``filters`` match), over all pages of DescribeInstances.

    A runner that boots only one owner's instances passes a tag filter: a shared moto holds every
    earlier test's instances, and describing them all several times a second cost more CPU (moto's
    rendering and botocore's parsing) than the tests themselves as a session went on."""
    instances: list[dict[str, Any]] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters or []):
        for reservation in page.get("Reservations", []):
            instances.extend(reservation.get("Instances", []))
    return instances


def poll_round(ec2: Any, handle: Callable[[dict[str, Any]], None], errors: list[str],
               filters: list[dict[str, Any]] | None = None) -> None:
    """One poll round: ``handle`` each instance; an error (moto busy or restarting, a transient
    failure) is noted in ``errors`` and the next round tries again."""
    try:
        for instance in describe_instances(ec2, filters):
            handle(instance)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def user_data(ec2: Any, instance_id: str) -> bytes | None:
    """The instance's user data, decoded; None when it has none."""
    attr = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    value = (attr.get("UserData") or {}).get("Value")
    return base64.b64decode(value) if value else None


def metadata_service(instance: dict[str, Any], region: str, data: bytes | None) -> ImdsDouble:
    """The instance's own metadata service (started): its identity from its DescribeInstances entry."""
    return ImdsDouble(instance_id=instance["InstanceId"], region=region, account_id=ACCOUNT_ID,
                      image_id=instance.get("ImageId", ""),
                      instance_type=instance.get("InstanceType", "t3.medium"),
                      availability_zone=(instance.get("Placement") or {}).get("AvailabilityZone"),
                      private_ip=instance.get("PrivateIpAddress") or "10.0.0.10",
                      user_data=data).start()


def wait_finished(cond: threading.Condition, results: dict[str, dict[str, Any]], instance_id: str,
                  timeout: float, why_not: Callable[[], str], *, every: float) -> dict[str, Any]:
    """A copy of ``results[instance_id]`` once it is there and no longer ``running`` (the runner
    notifies ``cond`` when a result changes; ``every`` bounds each wait); after ``timeout`` seconds,
    TimeoutError with ``why_not()``."""
    deadline = time.monotonic() + timeout
    with cond:
        while instance_id not in results or results[instance_id].get("running"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(why_not())
            cond.wait(min(left, every))
        return dict(results[instance_id])


def read_console(path: Path) -> str:
    """An instance's console output so far ("" when it never booted)."""
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
