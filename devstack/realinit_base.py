"""Base images of the real-init runner: a debootstrapped Debian 12, cached under ``.tools/realinit/``.

Two variants, as the estates' bases differ (issue "boot for real"):

- ``nocli``: Debian 12 ``minbase`` + systemd, dbus, curl, CA certificates and Debian's ``cloud-init``,
  **without** the AWS CLI (like Debian's own cloud images). Its apt sources are one local flat
  repository inside the image (``/var/local/bakery-apt``, ``trusted=yes``) holding ``awscli`` and
  its dependencies, downloaded when the base is built; no package lists are present, so a bake that
  wants the distribution's ``awscli`` must run ``apt-get update`` first, as on a fresh AMI, and apt
  never reaches the network during a test;
- ``awscli``: an overlay layer on ``nocli`` with Debian's ``awscli`` installed.

Both carry what a test AMI needs: a NoCloud-only cloud-init (``datasource_list: [ NoCloud, None ]``,
network configuration disabled -- the container shares the host's network), the stub Chef client
as the omnibus installs it (``/opt/cinc/bin/cinc-client``, ``/opt/chef/bin/chef-client``), which
runs :mod:`devstack.stub_chef_client` from ``/opt/bakery-test/src`` (the runner bind-mounts the
repository there, read-only) with the venv's packages from ``/opt/bakery-test/site-packages``, and
a populated ``/etc/machine-id`` (a base that has one, as most do).

The mirror is the one apt on this machine uses (``/etc/apt/sources.list`` or ``sources.list.d``).
Building needs root, ``debootstrap`` and ``dpkg-scanpackages`` (package ``dpkg-dev``); about two
minutes, once per clone (the cache key is :data:`RECIPE_VERSION`).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / ".tools" / "realinit"
SUITE = "bookworm"
RECIPE_VERSION = "3"  # bump when the recipe below changes: a cached base of another version is rebuilt
# debootstrap resolves no virtual packages (cloud-init's python3-cryptography needs one): cloud-init
# is installed by apt inside the new root instead.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "curl", "ca-certificates")
# Timers that would run apt or fsck jobs under a test's bake; the console login is not needed.
DISABLED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
                  "fstrim.timer", "e2scrub_reap.service")
MASKED_UNITS = ("console-getty.service", "getty@tty1.service")
LOCAL_REPO = "/var/local/bakery-apt"
SRC_MOUNT = "/opt/bakery-test/src"
SITE_MOUNT = "/opt/bakery-test/site-packages"

CLOUD_CFG = """\
# AMI Bakery test base: the instance's seed is written by the real-init runner (NoCloud), never
# fetched from a metadata address; the container shares the host's network, which stays as it is.
datasource_list: [ NoCloud, None ]
network: {config: disabled}
locale: C.UTF-8
apt:
  preserve_sources_list: true
"""

STUB_CLIENT = f"""#!/bin/sh
# AMI Bakery test base: the devstack stub Chef client (registers with the test Chef server, runs no recipe).
PYTHONPATH={SRC_MOUNT}:{SITE_MOUNT} exec /usr/bin/python3 -c 'import sys; from devstack.stub_chef_client import main; sys.exit(main())' "$@"
"""


class BaseImageError(RuntimeError):
    """The base image cannot be built on this machine (the message says what is missing)."""


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt is configured with here (deb822 ``.sources`` or one-line ``.list``)."""
    files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line + " ")
            if m:
                return m.group(1)
    raise BaseImageError(f"no apt source for Debian {SUITE} in {sources_dir}/sources.list*")


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise BaseImageError(f"{what} failed (exit {proc.returncode}): {' '.join(argv[:4])} ...\n{tail}")


def _in_root(root: Path, *argv: str, what: str) -> None:
    """A command inside ``root`` (not booted): nspawn mounts /proc and /dev; the host's network."""
    _run(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(root), "--", *argv], what)


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    dest.chmod(mode)


def _build_nocli(dest: Path) -> None:
    for tool in ("debootstrap", "systemd-nspawn", "systemctl", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            raise BaseImageError(f"{tool} is not installed (make deps installs it)")
    tmp = dest.with_name(dest.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(tmp),
          debian_mirror()], "debootstrap")
    _in_root(tmp, "apt-get", "install", "-y", "-q", "--no-install-recommends", "cloud-init", what="installing cloud-init")
    _run(["systemctl", f"--root={tmp}", "disable", *DISABLED_UNITS], "disabling timers")
    _run(["systemctl", f"--root={tmp}", "mask", *MASKED_UNITS], "masking the console login")
    # The AWS CLI's packages, for the image's own apt; the lists and the network mirror go.
    _in_root(tmp, "apt-get", "install", "-y", "-q", "--download-only", "awscli", what="downloading awscli")
    repo = tmp / LOCAL_REPO.lstrip("/")
    repo.mkdir(parents=True)
    for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
        shutil.move(str(deb), repo / deb.name)
    with (repo / "Packages").open("w") as fh:
        subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=repo, stdout=fh, stderr=subprocess.DEVNULL,
                       check=True)
    for old in [tmp / "etc/apt/sources.list", *(tmp / "etc/apt/sources.list.d").glob("*")]:
        old.unlink(missing_ok=True)
    _write(tmp, "/etc/apt/sources.list.d/bakery-test.list", f"deb [trusted=yes] file:{LOCAL_REPO} ./\n")
    shutil.rmtree(tmp / "var/lib/apt/lists", ignore_errors=True)
    (tmp / "var/lib/apt/lists/partial").mkdir(parents=True)
    machine_id = tmp / "etc/machine-id"
    if not machine_id.exists() or len(machine_id.read_text().strip()) != 32:
        _run(["systemd-machine-id-setup", f"--root={tmp}"], "systemd-machine-id-setup")
    (tmp / "etc/hostname").write_text("bakery-test-base\n")
    tmp.rename(dest)


def _configure(root: Path) -> None:
    """What a test AMI carries besides its packages; idempotent, applied to the cached base on each use
    (so changing it needs no new debootstrap)."""
    _write(root, "/etc/cloud/cloud.cfg.d/90-bakery-test.cfg", CLOUD_CFG)
    for path in ("/opt/cinc/bin/cinc-client", "/opt/chef/bin/chef-client"):
        _write(root, path, STUB_CLIENT, 0o755)
    for mount in (SRC_MOUNT, SITE_MOUNT):
        (root / mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
    # The stub client's pychef loads libcrypto by its development name (ctypes: "libcrypto.so").
    for lib in root.glob("usr/lib/*-linux-gnu/libcrypto.so.3"):
        link = lib.with_name("libcrypto.so")
        if not link.is_symlink():
            link.symlink_to(lib.name)


def _build_awscli(dest: Path, lower: Path) -> None:
    """Installs Debian's awscli in an overlay layer on ``lower``."""
    tmp = dest.with_name(dest.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    work, merged = tmp.with_name(tmp.name + ".work"), tmp.with_name(tmp.name + ".merged")
    for d in (tmp, work, merged):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    mount_overlay(merged, [lower], upper=tmp, work=work)
    try:
        _in_root(merged, "apt-get", "update", "-q", what="apt-get update")
        _in_root(merged, "apt-get", "install", "-y", "-q", "--no-install-recommends", "awscli",
                 what="installing awscli")
        _in_root(merged, "sh", "-c", "apt-get clean && rm -rf /var/lib/apt/lists/*", what="apt-get clean")
    finally:
        umount(merged)
    shutil.rmtree(work, ignore_errors=True)
    merged.rmdir()
    tmp.rename(dest)


def mount_overlay(target: Path, lowers: list[Path], *, upper: Path | None = None, work: Path | None = None) -> None:
    """An overlay of ``lowers`` (first on top) at ``target``: read-write with ``upper``, else read-only."""
    options = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work}"
    else:
        options += ",ro"
    _run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], f"mounting the overlay {target}")


def umount(target: Path) -> None:
    if os.path.ismount(target):
        _run(["umount", str(target)], f"unmounting {target}")


def base_layers(variant: str, cache: Path = CACHE) -> list[Path]:
    """The layers (top first) of base ``variant`` (``nocli`` or ``awscli``), built once and cached."""
    if variant not in ("nocli", "awscli"):
        raise ValueError(f"unknown base variant {variant!r} (nocli or awscli)")
    if os.geteuid() != 0:
        raise BaseImageError("the real-init base images are built and booted as root")
    top = cache / f"v{RECIPE_VERSION}"
    top.mkdir(parents=True, exist_ok=True)
    nocli, awscli = top / "debian12-nocli", top / "debian12-awscli"
    # One builder at a time across pytest workers and sessions; the others wait and reuse it.
    with (top / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not nocli.is_dir():
            _build_nocli(nocli)
        _configure(nocli)
        if variant == "awscli" and not awscli.is_dir():
            _build_awscli(awscli, nocli)
    return [nocli] if variant == "nocli" else [awscli, nocli]


def site_packages() -> str:
    """This venv's site-packages (bind-mounted into instances for the stub Chef client)."""
    return sysconfig.get_paths()["purelib"]


if __name__ == "__main__":  # `make deps`: build (or find) both bases before any test needs them
    for name in ("nocli", "awscli"):
        print(f"real-init base {name}: {' over '.join(str(p) for p in base_layers(name))}")
