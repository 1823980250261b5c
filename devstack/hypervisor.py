"""What both instance runners do as the hypervisor, not as API clients of the bakery.

:class:`devstack.runner.InstanceRunner` (a sandbox per instance) and
:class:`devstack.realinit.RealInitRunner` (systemd-nspawn per instance) find the instances moto
runs, read their user data, hand each one a metadata service of its own and show its console the
same way; this module is that shared part, so the two runners differ only in how they boot.

User data: ``DescribeInstanceAttribute`` with ``Attribute=userData`` answers ``UserData.Value``
base64-encoded, and no ``Value`` when the instance has none (EC2 API reference,
DescribeInstanceAttribute: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceAttribute.html).

When to look: an instance's state changes only in a call that reaches moto through the AMI layer,
which counts those calls (``devstack.ami_layer``, "Instance state changes"). A runner describes its
instances, then waits on :class:`Doorbell` until the count moves past what it had seen before that
describe, so no change falls between the two; it looks again at least every ``DOORBELL_WAIT``
seconds whatever the count says, and falls back to its ``poll_interval`` where there is no layer
(a plain moto) or the layer does not answer.
"""

from __future__ import annotations

import base64
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .imds import ImdsDouble
from .moto import ACCOUNT_ID

# A runner looks at its instances at least this often, even when the layer counts no change.
DOORBELL_WAIT = 10.0


class Doorbell:
    """The AMI layer's count of instance state changes, for one runner's polling thread.

    :meth:`count` and :meth:`wait` answer None when there is nothing to ask (no layer at the endpoint,
    the layer unreachable, or :meth:`close` called): the caller then falls back to its clock.
    :meth:`close` (from any thread) ends a wait in progress at once."""

    def __init__(self, endpoint: str):
        url = urllib.parse.urlsplit(endpoint)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 80
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False
        self._absent = False  # the endpoint answered 404: not a layer, never ask again

    def count(self) -> int | None:
        return self._ask(-1, 0.0)

    def wait(self, after: int, timeout: float = DOORBELL_WAIT) -> int | None:
        """The count once it is past ``after`` (or after ``timeout`` seconds)."""
        return self._ask(after, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None and self._conn.sock is not None:
                try:
                    self._conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _ask(self, after: int, wait: float) -> int | None:
        with self._lock:
            if self._closed or self._absent:
                return None
            conn = http.client.HTTPConnection(self._host, self._port, timeout=wait + 30)
            try:
                conn.connect()
            except OSError:
                return None
            self._conn = conn
        try:
            conn.request("GET", f"/_ami-layer/instance-changes?after={after}&wait={wait:g}")
            response = conn.getresponse()
            body = response.read()
            if response.status == 404:
                self._absent = True
            return int(body) if response.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            with self._lock:
                self._conn = None
            conn.close()


def next_round(doorbell: Doorbell, stop: threading.Event, seen: int | None, interval: float) -> int | None:
    """Wait for the next poll round: until the layer's count moves past ``seen`` (the count read before
    the round just done), or without an answer from the layer, ``interval`` seconds. Returns the count
    to pass to the next call (read before the round it starts), None when there is none."""
    if seen is not None and not stop.is_set():
        now = doorbell.wait(seen)
        if now is not None:
            return now
    stop.wait(interval)
    return doorbell.count()


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
