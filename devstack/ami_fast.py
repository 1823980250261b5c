"""Windows Fast Launch and EBS Fast Snapshot Restore for the AMI layer (moto 5.2 has neither).

From the EC2 API reference (docs.aws.amazon.com/AWSEC2/latest/APIReference/), botocore's EC2 model
(``botocore/data/ec2/2016-11-15/service-2.json``) and the user guides:

Fast Launch (``API_EnableFastLaunch``, ``API_DescribeFastLaunchImages``, ``API_DisableFastLaunch``;
EC2 User Guide, "Use EC2 Fast Launch for your Windows instances" and its prerequisites page):

- ``ImageId`` is required; "You can only change these settings for Windows AMIs that you own or that
  have been shared with you": a Linux image is refused (``InvalidParameterValue``), an image of
  another owner too (``UnauthorizedOperation``); an unknown image is ``InvalidAMIID.NotFound``.
- ``MaxParallelLaunches``: "Value must be 6 or greater" (``InvalidParameterValue``); ``ResourceType``:
  only ``snapshot``; ``SnapshotConfiguration`` needs that resource type; ``LaunchTemplate``: "either
  the name or ID of the launch template, but not both" (``InvalidParameterCombination``).
- States (``FastLaunchStateCode``): ``enabling`` -> ``enabled``, or ``enabling-failed`` with a
  ``stateTransitionReason``; ``disabling`` -> gone from DescribeFastLaunchImages (there is no
  ``disabled`` code: a disabled image is no longer configured). "Amazon EC2 must remove all
  pre-provisioned snapshots before you can enable Windows fast launch again": EnableFastLaunch
  while ``disabling`` is ``IncorrectState``.
- Prerequisite: "If you don't use a launch template ..., ensure that a default VPC is configured for
  the Region": without either, enabling fails (``enabling-failed``, the reason says why).
- The layer counts: an ``enabling`` (or ``disabling``) image is reported so by one DescribeFastLaunchImages
  and moves on at the next (AWS takes minutes; tests wait on calls, not on time).
  ``POST /_ami-layer/fast-launch-fails?region=R&reason=TEXT`` makes the next EnableFastLaunch in R end
  ``enabling-failed`` with that reason (a test's way to meet AWS's failures).

Fast Snapshot Restore (``API_EnableFastSnapshotRestores``, ``API_DisableFastSnapshotRestores``,
``API_DescribeFastSnapshotRestores``; Amazon EBS User Guide, "Amazon EBS fast snapshot restore" and
"Configure fast snapshot restore"):

- Per (snapshot, Availability Zone); states ``enabling`` -> ``optimizing`` -> ``enabled``, ``disabling``
  -> ``disabled`` (``FastSnapshotRestoreStateCode``), one step per DescribeFastSnapshotRestores.
- Either ``AvailabilityZone`` or ``AvailabilityZoneId``, not both. An unknown snapshot is
  ``InvalidSnapshot.NotFound`` for the whole request; a zone not of the region is that pair's entry
  in ``unsuccessful`` (``InvalidParameterValue``), as is a sixth snapshot of the Region ("You can
  enable up to 5 snapshots for fast snapshot restore per Region", code ``FastSnapshotRestoreLimitExceeded``).
- "When you delete a snapshot that you own, fast snapshot restore is automatically disabled for that
  snapshot": DeleteSnapshot drops its entries.

EnableFastLaunch on an ``enabled`` image takes the new settings and goes through ``enabling`` again
(the user guide changes settings with the same call). DescribeFastLaunchImages and
DescribeFastSnapshotRestores ignore ``Filters`` (the bakery asks by image id; a filtered describe
here answers more than AWS would).

Assumptions (the reference names no code for them): the codes of a Linux image, another owner's
image, EnableFastLaunch while enabling or disabling, DisableFastLaunch of an image without Fast Launch
(``InvalidParameterValue``), the FSR limit's code; and DeregisterImage of an image whose Fast Launch is
not yet disabled, which the layer refuses (``IncorrectState``): AWS documents no automatic clean-up of
the pre-provisioned snapshots on deregistration, so the bakery disables first and the layer holds it to that.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import escape

FSR_LIMIT = 5
MIN_PARALLEL = 6


class FastError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _listed(params: dict[str, str], name: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(name)}\.(\d+)$")
    found = sorted((int(m.group(1)), v) for k, v in params.items() if (m := pattern.match(k)))
    return [v for _, v in found]


@dataclass
class FastLaunch:
    image_id: str
    owner: str
    state: str
    reason: str
    since: datetime
    max_parallel: int
    targets: int
    template: dict[str, str] = field(default_factory=dict)
    fails_with: str = ""
    seen: int = 0

    def xml(self) -> str:
        template = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in self.template.items())
        return (f"<imageId>{self.image_id}</imageId><resourceType>snapshot</resourceType>"
                f"<snapshotConfiguration><targetResourceCount>{self.targets}</targetResourceCount>"
                f"</snapshotConfiguration><launchTemplate>{template}</launchTemplate>"
                f"<maxParallelLaunches>{self.max_parallel}</maxParallelLaunches><ownerId>{self.owner}</ownerId>"
                f"<state>{self.state}</state><stateTransitionReason>{escape(self.reason)}</stateTransitionReason>"
                f"<stateTransitionTime>{_iso(self.since)}</stateTransitionTime>")


@dataclass
class Restore:
    snapshot_id: str
    zone: str
    owner: str
    state: str
    times: dict[str, datetime] = field(default_factory=dict)

    def xml(self) -> str:
        times = "".join(f"<{k}Time>{_iso(v)}</{k}Time>" for k, v in self.times.items())
        return (f"<snapshotId>{self.snapshot_id}</snapshotId><availabilityZone>{self.zone}</availabilityZone>"
                f"<state>{self.state}</state><stateTransitionReason>Client.UserInitiated</stateTransitionReason>"
                f"<ownerId>{self.owner}</ownerId>{times}")


_FSR_NEXT = {"enabling": "optimizing", "optimizing": "enabled", "disabling": "disabled"}


class FastFeatures:
    """Fast Launch per (region, image) and fast snapshot restores per (region, snapshot, zone)."""

    def __init__(self, account: str):
        self.account = account
        self.lock = threading.Lock()
        self.launch: dict[tuple[str, str], FastLaunch] = {}
        self.restores: dict[tuple[str, str, str], Restore] = {}
        self.failures: dict[str, str] = {}  # region -> reason of the next EnableFastLaunch's failure

    # --- Fast Launch ------------------------------------------------------------------------------
    def enable_launch(self, region: str, params: dict[str, str], image: dict[str, Any], default_vpc: bool,
                      now: datetime) -> str:
        image_id = image["ImageId"]
        if image.get("Platform") != "windows":
            raise FastError("InvalidParameterValue", f"The image {image_id} is not a Windows AMI: Windows fast "
                            "launch supports Windows AMIs only")
        if image.get("OwnerId") != self.account:
            raise FastError("UnauthorizedOperation", f"You can only change the fast launch settings of images you "
                            f"own or that are shared with you; {image_id} is owned by {image.get('OwnerId')}", 403)
        if params.get("ResourceType", "snapshot") != "snapshot":
            raise FastError("InvalidParameterValue", f"Value ({params['ResourceType']}) for parameter ResourceType "
                            "is invalid: supported values are snapshot")
        parallel = self._int(params, "MaxParallelLaunches", MIN_PARALLEL)
        if parallel < MIN_PARALLEL:
            raise FastError("InvalidParameterValue", f"Value ({parallel}) for parameter MaxParallelLaunches is "
                            f"invalid: it must be {MIN_PARALLEL} or greater")
        targets = self._int(params, "SnapshotConfiguration.TargetResourceCount", 5)
        if targets < 1:
            raise FastError("InvalidParameterValue", f"Value ({targets}) for parameter "
                            "SnapshotConfiguration.TargetResourceCount is invalid")
        template = {k.split(".", 1)[1][0].lower() + k.split(".", 1)[1][1:]: v for k, v in params.items()
                    if k.startswith("LaunchTemplate.")}
        if "launchTemplateName" in template and "launchTemplateId" in template:
            raise FastError("InvalidParameterCombination", "Specify either the launch template name or its ID, "
                            "not both")
        with self.lock:
            current = self.launch.get((region, image_id))
            if current is not None and current.state in ("enabling", "disabling"):
                raise FastError("IncorrectState", f"Windows fast launch of {image_id} is {current.state}; "
                                "wait until that ends")
            reason = self.failures.pop(region, "")
            if not reason and not template and not default_vpc:
                reason = (f"Client.InvalidConfiguration: no default VPC in {region} and no launch template given "
                          "(Windows fast launch needs one or the other)")
            entry = FastLaunch(image_id, self.account, "enabling", "Client.UserInitiated", now, parallel,
                               targets, template, fails_with=reason)
            self.launch[(region, image_id)] = entry
            return entry.xml()

    @staticmethod
    def _int(params: dict[str, str], name: str, default: int) -> int:
        raw = params.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise FastError("InvalidParameterValue", f"Value ({raw}) for parameter {name} is invalid") from None

    def describe_launch(self, region: str, params: dict[str, str], now: datetime) -> str:
        wanted = set(_listed(params, "ImageId"))
        items = []
        with self.lock:
            for (where, image_id), entry in sorted(self.launch.items()):
                if where != region or (wanted and image_id not in wanted):
                    continue
                items.append(f"<item>{entry.xml()}</item>")
                entry.seen += 1
                if entry.state == "enabling":
                    entry.state, entry.since = ("enabling-failed", now) if entry.fails_with else ("enabled", now)
                    entry.reason = entry.fails_with or "Client.UserInitiated - Lifecycle state transition"
                elif entry.state == "disabling":
                    del self.launch[(where, image_id)]  # disabled: no longer configured
        return f"<fastLaunchImageSet>{''.join(items)}</fastLaunchImageSet>"

    def disable_launch(self, region: str, image_id: str, now: datetime) -> str:
        with self.lock:
            entry = self.launch.get((region, image_id))
            if entry is None:
                raise FastError("InvalidParameterValue", f"Windows fast launch is not enabled for image {image_id}")
            if entry.state != "disabling":
                entry.state, entry.reason, entry.since = "disabling", "Client.UserInitiated", now
            return entry.xml()

    def refuse_deregister(self, region: str, image_id: str) -> None:
        with self.lock:
            entry = self.launch.get((region, image_id))
        if entry is not None:
            raise FastError("IncorrectState", f"The image {image_id} has Windows fast launch {entry.state}: "
                            "disable Windows fast launch (DisableFastLaunch) and wait until it is removed")

    # --- Fast Snapshot Restore --------------------------------------------------------------------
    def enable_restores(self, region: str, params: dict[str, str], owners: dict[str, str], zones: set[str],
                        now: datetime) -> str:
        snapshots, wanted = self._pairs(params)
        ok, bad = [], []
        with self.lock:
            for snap in snapshots:
                errors = []
                for zone in wanted:
                    if zone not in zones:
                        errors.append((zone, "InvalidParameterValue",
                                       f"The Availability Zone {zone} is not valid in {region}"))
                        continue
                    active = {s for (r, s, _z), e in self.restores.items() if r == region and e.state != "disabled"}
                    if snap not in active and len(active) >= FSR_LIMIT:
                        errors.append((zone, "FastSnapshotRestoreLimitExceeded",
                                       f"At most {FSR_LIMIT} snapshots may have fast snapshot restore per Region"))
                        continue
                    entry = self.restores.get((region, snap, zone))
                    if entry is None or entry.state in ("disabling", "disabled"):
                        entry = Restore(snap, zone, owners[snap], "enabling", {"enabling": now})
                        self.restores[(region, snap, zone)] = entry
                    ok.append(f"<item>{entry.xml()}</item>")
                if errors:
                    bad.append(f"<item><snapshotId>{snap}</snapshotId><fastSnapshotRestoreStateErrorSet>" + "".join(
                        f"<item><availabilityZone>{z}</availabilityZone><error><code>{c}</code>"
                        f"<message>{escape(m)}</message></error></item>" for z, c, m in errors)
                        + "</fastSnapshotRestoreStateErrorSet></item>")
        return f"<successful>{''.join(ok)}</successful><unsuccessful>{''.join(bad)}</unsuccessful>"

    def disable_restores(self, region: str, params: dict[str, str], owners: dict[str, str], now: datetime) -> str:
        snapshots, wanted = self._pairs(params)
        ok = []
        with self.lock:
            for snap in snapshots:
                for zone in wanted:
                    entry = self.restores.get((region, snap, zone))
                    if entry is None:
                        entry = Restore(snap, zone, owners[snap], "disabled", {"disabled": now})
                    elif entry.state not in ("disabling", "disabled"):
                        entry.state, entry.times["disabling"] = "disabling", now
                    ok.append(f"<item>{entry.xml()}</item>")
        return f"<successful>{''.join(ok)}</successful><unsuccessful></unsuccessful>"

    @staticmethod
    def _pairs(params: dict[str, str]) -> tuple[list[str], list[str]]:
        zones, zone_ids = _listed(params, "AvailabilityZone"), _listed(params, "AvailabilityZoneId")
        if zones and zone_ids:
            raise FastError("InvalidParameterCombination", "Specify either AvailabilityZone or AvailabilityZoneId, "
                            "not both")
        snapshots = _listed(params, "SourceSnapshotId")
        if not snapshots:
            raise FastError("MissingParameter", "The request must contain the parameter SourceSnapshotId")
        if not (zones or zone_ids):
            raise FastError("MissingParameter", "The request must contain the parameter AvailabilityZone")
        return snapshots, zones or zone_ids

    def describe_restores(self, region: str, now: datetime) -> str:
        items = []
        with self.lock:
            for key, entry in sorted(self.restores.items()):
                if key[0] != region:
                    continue
                items.append(f"<item>{entry.xml()}</item>")
                following = _FSR_NEXT.get(entry.state)
                if following:
                    entry.state, entry.times[following] = following, now
                elif entry.state == "disabled":
                    del self.restores[key]
        return f"<fastSnapshotRestoreSet>{''.join(items)}</fastSnapshotRestoreSet>"

    def snapshot_deleted(self, region: str, snapshot_id: str) -> None:
        with self.lock:
            for key in [k for k in self.restores if k[0] == region and k[1] == snapshot_id]:
                del self.restores[key]

    def fail_next(self, region: str, reason: str) -> None:
        with self.lock:
            self.failures[region] = reason
