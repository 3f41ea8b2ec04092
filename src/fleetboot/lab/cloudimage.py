"""A real Debian system with systemd and cloud-init, built from Debian's packages for lab VMs.

``debootstrap`` fills a directory once (cached: the downloads take minutes), and
``mkfs.ext4 -d`` turns it into a disk image without loop mounts or root-only
mount calls. The kernel and the initramfs Debian generated inside the tree are
copied out, so a profile can boot them by iPXE with ``root=/dev/vda``. Nothing
of Fleetboot is installed: the system configures itself with cloud-init from
Fleetboot's NoCloud-net datasource.

``python -m fleetboot.lab.cloudimage`` fills the cache (Makefile, CI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetboot.errors import FleetbootError
from fleetboot.lab.guest import _locked

DEFAULT_CACHE = "/var/cache/fleetboot/debian-cloudinit"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a cloud image has: systemd, cloud-init and a network stack cloud-init renders to.
# python3-cffi-backend by name: debootstrap does not resolve the virtual package
# (python3-cffi-backend-api-*) python3-cryptography, thus cloud-init, needs.
PACKAGES = ("systemd-sysv", "cloud-init", "python3-cffi-backend", "linux-image-cloud-amd64",
            "initramfs-tools", "ifupdown", "isc-dhcp-client", "curl", "sudo", "iproute2",
            "netbase")
VERSION = 1  # bump to rebuild every cache when PACKAGES or the recipe change


class CloudImageError(FleetbootError):
    """The Debian image could not be built."""


@dataclass(frozen=True)
class CloudImage:
    disk: Path  # raw ext4 file system image: -drive file=...,format=raw,if=virtio
    vmlinuz: Path
    initrd: Path


def cache_dir() -> Path:
    return Path(os.environ.get("FLEETBOOT_CLOUDIMAGE_CACHE", DEFAULT_CACHE))


def _run(argv: Sequence[str], timeout: float = 3600) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise CloudImageError(f"{argv[0]} is missing: run scripts/install-system-deps.sh"
                              ) from None
    if done.returncode != 0:
        raise CloudImageError(f"{' '.join(argv[:3])} ... failed: "
                              f"{(done.stderr or done.stdout).strip()[-800:]}")


def _mounts_under(tree: Path) -> list[str]:
    prefix = str(tree.resolve()) + "/"
    with open("/proc/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


def _remove_unmounted(tree: Path) -> None:
    """Remove a half-built tree, never through a mount an interrupted debootstrap left."""
    if not tree.exists():
        return
    left = _mounts_under(tree)
    if left:
        raise CloudImageError(f"an interrupted debootstrap left {', '.join(left)} mounted: "
                              f"unmount them, then remove {tree}")
    shutil.rmtree(tree)


def _prepare_tree(tree: Path) -> None:
    """What a cloud image sets up beyond debootstrap: a root fs, a serial console."""
    (tree / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (tree / "etc/hostname").write_text("debian\n")
    # Only NoCloud: the other datasources would probe for minutes under TCG.
    (tree / "etc/cloud/cloud.cfg.d/90-fleetboot.cfg").write_text(
        "datasource_list: [ NoCloud, None ]\n")
    getty = tree / "etc/systemd/system/getty.target.wants"
    getty.mkdir(parents=True, exist_ok=True)
    link = getty / "serial-getty@ttyS0.service"
    if not link.exists():
        link.symlink_to("/lib/systemd/system/serial-getty@.service")


def build(cache: Path | None = None, size_mb: int = 2048) -> CloudImage:
    """The image, from the cache or built (debootstrap: several minutes, once)."""
    cache = cache or cache_dir()
    root = cache / f"v{VERSION}"
    image = CloudImage(root / "disk.img", root / "vmlinuz", root / "initrd.img")
    if image.disk.exists():
        return image
    with _locked(cache):
        if image.disk.exists():
            return image
        root.mkdir(parents=True, exist_ok=True)
        tree = root / "tree"
        if not (tree / ".complete").exists():
            _remove_unmounted(tree)
            debs = cache / "debs"  # kept: a failed build does not download them again
            debs.mkdir(parents=True, exist_ok=True)
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                  f"--cache-dir={debs.resolve()}", SUITE, str(tree), MIRROR])
            _prepare_tree(tree)
            (tree / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
            for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()  # smaller image; the tree stays the cache
            (tree / ".complete").touch()
        boot = sorted((tree / "boot").glob("vmlinuz-*"))
        inits = sorted((tree / "boot").glob("initrd.img-*"))
        if not boot or not inits:
            raise CloudImageError(f"{tree}/boot holds no kernel or initramfs")
        shutil.copyfile(boot[-1], image.vmlinuz)
        shutil.copyfile(inits[-1], image.initrd)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            disk = Path(tmp) / "disk.img"
            _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(disk),
                  f"{size_mb}M"])
            os.replace(disk, image.disk)
    return image


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    image = build()
    print(f"disk {image.disk} kernel {image.vmlinuz} initrd {image.initrd}")


if __name__ == "__main__":
    main()
