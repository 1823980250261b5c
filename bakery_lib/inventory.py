"""Package inventory of a bake, its CycloneDX SBOM, and the package diff against the role's previous AMI.

What instances and the bakery keep about a bake in S3, in the role's ``runlist_bucket`` under
``bakes/ROLE/BAKE_ID/`` (the only prefix the instance role may write to, see ``stages.iam_role``):

- ``inventory.json`` — written by the bake instance after its converge: what is installed (Linux:
  dpkg's database, else rpm's; Windows: the Uninstall registry keys and ``Get-HotFix``);
- ``bootstrap-log.txt`` — written by the bake instance when its bake fails: the last lines of its log,
  scrubbed (the ``bakery:bootstrap-log`` tag names it; the bootstrap stage shows it);
- ``firstboot/INSTANCE_ID.log`` — written by an instance of the image whose first boot fails (its SNS
  alert names it);
- ``sbom.cdx.json`` — written by the bakery: the CycloneDX SBOM made from ``inventory.json``; the AMI's
  ``bakery:sbom`` tag is its S3 URI.

:func:`record_sbom` is the bootstrap stage's step after a successful bake run: it fetches the inventory,
writes ``artifacts/ROLE.cdx.json`` (CycloneDX 1.6 JSON, made with ``cyclonedx-python-lib``; its model:
``cyclonedx.model.bom.Bom`` / ``component.Component``, output ``cyclonedx.output.json.JsonV1Dot6``),
uploads it next to the inventory, records its URI in the state (the image stage tags the AMI with it),
then finds the role's previous AMI by its ``bakery:sbom`` tag and writes the package diff
``artifacts/ROLE.packages.json`` that the release summary shows. None of it fails the bake: a missing or
unreadable inventory is a warning in the stage's message (and so in its JUnit report), and the AMI then
has no ``bakery:sbom`` tag.
Calls: S3 GetObject (inventory), S3 PutObject (SBOM), S3 GetObject (the previous AMI's SBOM, when there is
one). The previous AMI comes from preflight's listing of the role's AMIs (``state.role_amis``, the
listing its reuse look-up makes anyway); only a record without that listing costs a DescribeImages here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AwsError, BakeryError
from .fsutil import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from .stages.base import Context

RECORDS_DIR = "bakes"
SBOM_TAG = "bakery:sbom"
BOOTSTRAP_LOG_TAG = "bakery:bootstrap-log"
S3_URI_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$")
# Most lines of an uploaded log tail the bakery prints (the instance uploads at most 60).
TAIL_LINES = 60


def role_records_prefix(role: str) -> str:
    """``bakes/ROLE/``: every record of the role's bakes, and all its instances may write."""
    return f"{RECORDS_DIR}/{role}/"


def bake_records_prefix(role: str, bake_id: str) -> str:
    return f"{role_records_prefix(role)}{bake_id}/"


def inventory_key(role: str, bake_id: str) -> str:
    return bake_records_prefix(role, bake_id) + "inventory.json"


def sbom_key(role: str, bake_id: str) -> str:
    return bake_records_prefix(role, bake_id) + "sbom.cdx.json"


def bootstrap_log_key(role: str, bake_id: str) -> str:
    return bake_records_prefix(role, bake_id) + "bootstrap-log.txt"


@dataclass(frozen=True, order=True)
class Package:
    """One installed package (or Windows program), or a Windows hotfix (``kind="hotfix"``)."""

    name: str
    version: str = ""
    arch: str = ""
    kind: str = "package"

    @property
    def key(self) -> str:
        """What the diff compares by: the name, with the architecture where one system may hold several."""
        if self.arch and self.arch not in ("all", "noarch", "any"):
            return f"{self.name}:{self.arch}"
        return self.name


@dataclass(frozen=True)
class Inventory:
    platform: str  # linux | windows
    manager: str  # dpkg | rpm | windows
    packages: tuple[Package, ...]
    os_id: str = ""
    os_version: str = ""


class InventoryError(BakeryError):
    """The inventory document is not what the instance scripts write."""


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise InventoryError(f"{where}: expected a string, got {type(value).__name__}")
    return str(value).strip()


def parse_inventory(raw: bytes | str, where: str = "inventory") -> Inventory:
    """The instance's ``inventory.json`` (see ``templates/linux/bake.sh.j2``, ``templates/windows/bake.ps1.j2``)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{where} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("packages"), list):
        raise InventoryError(f"{where}: expected an object with a \"packages\" list")
    packages: list[Package] = []
    for i, item in enumerate(data["packages"]):
        if not isinstance(item, dict):
            raise InventoryError(f"{where}: packages[{i}] is not an object")
        name = _text(item.get("name"), f"{where}: packages[{i}].name")
        if name:
            packages.append(Package(name, _text(item.get("version"), f"{where}: packages[{i}].version"),
                                    _text(item.get("arch"), f"{where}: packages[{i}].arch")))
    for i, item in enumerate(data.get("hotfixes") or []):
        hotfix = _text(item.get("id") if isinstance(item, dict) else item, f"{where}: hotfixes[{i}]")
        if hotfix:
            packages.append(Package(hotfix, kind="hotfix"))
    os_info: dict[str, Any] = data["os"] if isinstance(data.get("os"), dict) else {}
    return Inventory(_text(data.get("platform"), f"{where}: platform") or "linux",
                     _text(data.get("manager"), f"{where}: manager"), tuple(sorted(set(packages))),
                     _text(os_info.get("id"), f"{where}: os.id"), _text(os_info.get("version_id"), f"{where}: os.version_id"))


def _purl(inv: Inventory, pkg: Package) -> Any:
    # Loaded only when an SBOM is made: userdata imports this module for its key names alone.
    from packageurl import PackageURL

    # purl-spec types: deb (namespace = the distribution), rpm (namespace = the vendor/distribution).
    kind = {"dpkg": "deb", "rpm": "rpm"}.get(inv.manager)
    if kind is None or pkg.kind != "package" or not pkg.version:
        return None
    qualifiers = {"arch": pkg.arch} if pkg.arch else {}
    if inv.os_id and inv.os_version:
        qualifiers["distro"] = f"{inv.os_id}-{inv.os_version}"
    return PackageURL(kind, inv.os_id or None, pkg.name, pkg.version, qualifiers or None)


def build_sbom(inv: Inventory, *, role: str, release: str, bake_id: str, base_ami: str = "") -> str:
    """The CycloneDX 1.6 JSON document of the image baked from ``inv``."""
    # Loaded only when an SBOM is made: userdata imports this module for its key names alone.
    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    bom = Bom()
    image = Component(type=ComponentType.OPERATING_SYSTEM, name=role, version=release, bom_ref=f"image:{role}:{bake_id}",
                      description=f"AMI Bakery image of role {role}, release {release}, bake {bake_id}",
                      properties=[Property(name="bakery:bake-id", value=bake_id),
                                  Property(name="bakery:package-manager", value=inv.manager or "unknown"),
                                  *([Property(name="bakery:base-ami", value=base_ami)] if base_ami else []),
                                  *([Property(name="bakery:os", value=f"{inv.os_id} {inv.os_version}".strip())]
                                    if inv.os_id else [])])
    bom.metadata.component = image
    parts = []
    for n, pkg in enumerate(inv.packages):
        props = [Property(name="bakery:kind", value=pkg.kind)]
        if pkg.arch:
            props.append(Property(name="bakery:arch", value=pkg.arch))
        purl = _purl(inv, pkg)
        component = Component(type=ComponentType.LIBRARY if inv.platform == "linux" else ComponentType.APPLICATION,
                              name=pkg.name, version=pkg.version or None, purl=purl, properties=props,
                              bom_ref=str(purl) if purl is not None else f"{pkg.kind}:{n}:{pkg.key}")
        bom.components.add(component)
        parts.append(component)
    bom.register_dependency(image, parts)
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def sbom_packages(raw: bytes | str, where: str = "SBOM") -> list[Package]:
    """The packages of a CycloneDX JSON SBOM (one this module wrote, or any with name/version components)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{where} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("bomFormat") != "CycloneDX":
        raise InventoryError(f"{where} is not a CycloneDX JSON document")
    out = []
    for comp in data.get("components") or []:
        if not isinstance(comp, dict) or not comp.get("name"):
            continue
        props = {p.get("name"): p.get("value") for p in comp.get("properties") or [] if isinstance(p, dict)}
        out.append(Package(str(comp["name"]), str(comp.get("version") or ""), str(props.get("bakery:arch") or ""),
                           str(props.get("bakery:kind") or "package")))
    return sorted(set(out))


@dataclass
class PackageDiff:
    """What changed in a role's packages between its previous AMI and this bake."""

    role: str
    release: str = ""
    sbom: str = ""
    packages: int = 0
    bake_id: str = ""
    previous_ami: str = ""
    previous_release: str = ""
    previous_sbom: str = ""
    added: list[Package] = field(default_factory=list)
    removed: list[Package] = field(default_factory=list)
    changed: list[tuple[Package, Package]] = field(default_factory=list)  # (before, after)
    note: str = ""  # why there is no diff (first AMI of the role, previous SBOM unreadable...)

    @property
    def compared(self) -> bool:
        return bool(self.previous_ami) and not self.note

    def to_json(self) -> dict[str, Any]:
        def pkg(p: Package) -> dict[str, str]:
            return {"name": p.name, "version": p.version, "arch": p.arch, "kind": p.kind}

        return {"role": self.role, "release": self.release, "bake_id": self.bake_id, "sbom": self.sbom,
                "packages": self.packages,
                "previous": {"ami": self.previous_ami, "release": self.previous_release, "sbom": self.previous_sbom}
                if self.previous_ami else None,
                "added": [pkg(p) for p in self.added], "removed": [pkg(p) for p in self.removed],
                "changed": [{"name": a.name, "arch": a.arch, "kind": a.kind, "from": a.version, "to": b.version}
                            for a, b in self.changed],
                "note": self.note}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PackageDiff:
        def pkg(d: Mapping[str, Any]) -> Package:
            return Package(str(d.get("name", "")), str(d.get("version", "")), str(d.get("arch", "")),
                           str(d.get("kind", "package")))

        prev = data.get("previous") or {}
        return cls(str(data.get("role", "")), str(data.get("release", "")), str(data.get("sbom", "")),
                   int(data.get("packages") or 0), str(data.get("bake_id", "")), str(prev.get("ami", "")), str(prev.get("release", "")),
                   str(prev.get("sbom", "")), [pkg(p) for p in data.get("added") or []],
                   [pkg(p) for p in data.get("removed") or []],
                   [(Package(str(c.get("name", "")), str(c.get("from", "")), str(c.get("arch", "")),
                             str(c.get("kind", "package"))),
                     Package(str(c.get("name", "")), str(c.get("to", "")), str(c.get("arch", "")),
                             str(c.get("kind", "package")))) for c in data.get("changed") or []],
                   str(data.get("note", "")))


def _by_key(packages: Iterable[Package]) -> dict[str, list[Package]]:
    out: dict[str, list[Package]] = {}
    for p in packages:
        out.setdefault(p.key, []).append(p)
    return out


def diff_packages(before: Sequence[Package], after: Sequence[Package]) -> tuple[list[Package], list[Package],
                                                                                  list[tuple[Package, Package]]]:
    """(added, removed, changed) from ``before`` to ``after``, compared by :attr:`Package.key`; a key held
    in several versions (Windows programs installed twice) compares as the sorted list of its versions."""
    old, new = _by_key(before), _by_key(after)
    added = sorted(p for k in new.keys() - old.keys() for p in new[k])
    removed = sorted(p for k in old.keys() - new.keys() for p in old[k])
    changed = []
    for k in sorted(old.keys() & new.keys()):
        a = sorted(p.version for p in old[k])
        b = sorted(p.version for p in new[k])
        if a != b:
            first = old[k][0]
            changed.append((Package(first.name, ", ".join(a), first.arch, first.kind),
                            Package(first.name, ", ".join(b), first.arch, first.kind)))
    return added, removed, changed


def split_s3_uri(uri: str) -> tuple[str, str]:
    m = S3_URI_RE.match(uri)
    if not m:
        raise BakeryError(f"{uri!r} is not an s3://BUCKET/KEY URI")
    return m.group(1), m.group(2)


def _get(ctx: Context, bucket: str, key: str) -> bytes:
    body = ctx.aws.call("s3", ctx.region, "GetObject", Bucket=bucket, Key=key)["Body"]
    data: bytes = body.read()
    return data


_MISSING = ("NoSuchKey", "404", "NotFound")


def previous_image(ctx: Context) -> dict[str, Any] | None:
    """The role's newest other AMI with an SBOM (``bakery:sbom`` tag), in the build region: from preflight's
    listing of the role's AMIs (``state.role_amis``), or, for a record without it, DescribeImages."""
    state = ctx.require_state()
    if state.role_amis is not None:
        images = list(state.role_amis)
    else:
        images = ctx.aws.describe_images(ctx.region, Owners=["self"], Filters=[
            {"Name": "tag:bakery:role", "Values": [ctx.role.name]}, {"Name": "tag-key", "Values": [SBOM_TAG]}])
    images = [i for i in images if i.get("State") == "available" and _tags(i).get(SBOM_TAG)
              and _tags(i).get("bakery:bake-id") != state.bake_id]
    return max(images, key=lambda i: str(i.get("CreationDate") or ""), default=None)


def _tags(image: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in image.get("Tags") or []}


def _diff_against_previous(ctx: Context, diff: PackageDiff, packages: Sequence[Package]) -> None:
    try:
        image = previous_image(ctx)
    except AwsError as exc:
        diff.note = f"previous AMI not looked up ({exc.code}): no package diff"
        return
    if image is None:
        diff.note = "first AMI of the role with an SBOM: no package diff"
        return
    tags = {t["Key"]: t["Value"] for t in image.get("Tags") or []}
    diff.previous_ami = str(image["ImageId"])
    diff.previous_release = tags.get("bakery:release", "")
    diff.previous_sbom = tags.get(SBOM_TAG, "")
    try:
        bucket, key = split_s3_uri(diff.previous_sbom)
        before = sbom_packages(_get(ctx, bucket, key), diff.previous_sbom)
    except AwsError as exc:
        diff.note = f"the SBOM of {diff.previous_ami} ({diff.previous_sbom}) is unreadable ({exc.code}): no package diff"
        return
    except BakeryError as exc:
        diff.note = f"the SBOM of {diff.previous_ami} is unusable ({exc}): no package diff"
        return
    diff.added, diff.removed, diff.changed = diff_packages(before, packages)


def package_diff_path(artifacts_dir: Path, role: str) -> Path:
    return artifacts_dir / f"{role}.packages.json"


def load_package_diff(artifacts_dir: Path, role: str) -> PackageDiff | None:
    """The role's ``artifacts/ROLE.packages.json``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(package_diff_path(artifacts_dir, role).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return PackageDiff.from_json(data)
    except (TypeError, ValueError, AttributeError):
        return None


def diff_summary(diff: PackageDiff) -> str:
    if not diff.compared:
        return diff.note
    return (f"vs {diff.previous_ami} (release {diff.previous_release or '?'}): {len(diff.added)} added, "
            f"{len(diff.removed)} removed, {len(diff.changed)} changed")


def record_sbom(ctx: Context) -> str:
    """After a successful bake run: inventory -> SBOM artifact + S3 + state, then the package diff.

    Returns one line for the stage message; a line starting ``WARNING:`` when the AMI gets no SBOM."""
    state = ctx.require_state()
    role = ctx.role
    bucket = role.runlist_bucket
    inv_key = inventory_key(role.name, state.bake_id)
    where = f"s3://{bucket}/{inv_key}"
    try:
        inventory = parse_inventory(_get(ctx, bucket, inv_key), where)
    except AwsError as exc:
        why = "missing" if exc.code in _MISSING else f"unreadable ({exc.code}: {exc})"
        return (f"WARNING: the package inventory {where} is {why}: no SBOM for this AMI "
                f"(no {SBOM_TAG} tag; the bake instance's console output says why it uploaded none)")
    except InventoryError as exc:
        return f"WARNING: {exc}: no SBOM for this AMI (no {SBOM_TAG} tag)"
    text = build_sbom(inventory, role=role.name, release=state.release, bake_id=state.bake_id,
                      base_ami=state.base_ami or "")
    artifact = ctx.ws.artifacts_dir / f"{role.name}.cdx.json"
    atomic_write_text(artifact, text)
    key = sbom_key(role.name, state.bake_id)
    uri = f"s3://{bucket}/{key}"
    try:
        ctx.aws.call("s3", ctx.region, "PutObject", Bucket=bucket, Key=key, Body=text.encode("utf-8"),
                     ContentType="application/vnd.cyclonedx+json", ServerSideEncryption="AES256")
    except AwsError as exc:
        return (f"WARNING: SBOM written to {artifact} but not uploaded to {uri} ({exc.code}): "
                f"the AMI gets no {SBOM_TAG} tag")
    state.sbom_uri = uri
    ctx.save()
    diff = PackageDiff(role.name, state.release, uri, len(inventory.packages), state.bake_id)
    _diff_against_previous(ctx, diff, inventory.packages)
    atomic_write_json(package_diff_path(ctx.ws.artifacts_dir, role.name), diff.to_json())
    return f"SBOM {uri} ({len(inventory.packages)} packages, {inventory.manager}); {diff_summary(diff)}"


def fetch_log_tail(ctx: Context, uri: str) -> str:
    """The log tail an instance uploaded (its ``bakery:bootstrap-log`` tag), for a failure message; a
    sentence saying why when it cannot be read. Only URIs under the role's records prefix are read."""
    try:
        bucket, key = split_s3_uri(uri)
    except BakeryError:
        return f"(the instance named {uri!r} as its log tail: not an S3 URI)"
    if bucket != ctx.role.runlist_bucket or not key.startswith(role_records_prefix(ctx.role.name)):
        return f"(the log tail {uri} is outside s3://{ctx.role.runlist_bucket}/{role_records_prefix(ctx.role.name)}: not read)"
    try:
        text = _get(ctx, bucket, key).decode("utf-8", "replace")
    except AwsError as exc:
        return f"(the log tail {uri} is unreadable: {exc.code})"
    lines = text.splitlines()[-TAIL_LINES:]
    return "\n".join(lines)
