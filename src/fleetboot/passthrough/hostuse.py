"""Which PCI devices the host itself needs: never to be handed to a guest.

A device that holds a mounted file system, carries the default route or drives
the console would take the host down with it if vfio-pci took it over. The
parsers are pure; :func:`host_use` reads ``/proc`` and follows sysfs links.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
VGA_CLASS_PREFIX = "0300"


def mounted_block_devices(mounts: str) -> dict[str, str]:
    """``/proc/mounts`` text -> {block device name: mount point} for /dev/* sources."""
    found: dict[str, str] = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("/dev/"):
            # Mount points escape spaces as \040; the first mount of a device names it.
            found.setdefault(os.path.basename(fields[0]), fields[1].replace("\\040", " "))
    return found


def default_route_interfaces(route: str) -> set[str]:
    """``/proc/net/route`` text -> the interfaces of default routes (destination 0)."""
    names = set()
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            names.add(fields[0])
    return names


def pci_addresses_on(path: str) -> list[str]:
    """The PCI functions a resolved sysfs device path runs through, root port first."""
    return [part for part in Path(path).parts if _PCI_ADDRESS.match(part)]


def _resolve(sys_root: Path, link: str) -> str | None:
    path = sys_root / link
    return os.path.realpath(path) if path.exists() else None


def _block_paths(sys_root: Path, name: str, depth: int = 0) -> list[str]:
    """Device paths under a block device, through device-mapper/md slaves."""
    resolved = _resolve(sys_root, f"class/block/{name}")
    if resolved is None or depth > 8:
        return []
    paths = [resolved]
    slaves = Path(resolved) / "slaves"
    if not slaves.is_dir():  # a partition: its disk holds the slaves
        slaves = Path(resolved).parent / "slaves"
    if slaves.is_dir():
        for slave in sorted(os.listdir(slaves)):
            paths += _block_paths(sys_root, slave, depth + 1)
    return paths


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def host_use(sys_root: str | os.PathLike[str] = "/sys",
             proc_root: str | os.PathLike[str] = "/proc") -> dict[str, str]:
    """PCI address -> why the host needs it (mounted disks, default route, console)."""
    sys_path, proc_path = Path(sys_root), Path(proc_root)
    uses: dict[str, str] = {}

    def mark(paths: Iterable[str], reason: str) -> None:
        for path in paths:
            for address in pci_addresses_on(path):
                uses.setdefault(address, reason)

    for device, mount_point in mounted_block_devices(_read(proc_path / "mounts")).items():
        mark(_block_paths(sys_path, device), f"holds {device}, mounted on {mount_point}")
    for iface in sorted(default_route_interfaces(_read(proc_path / "net/route"))):
        mark(filter(None, [_resolve(sys_path, f"class/net/{iface}")]),
             f"carries the default route ({iface})")
    for address, reason in console_devices(sys_path).items():
        uses.setdefault(address, reason)
    return uses


def console_devices(sys_root: Path) -> dict[str, str]:
    """The console's display (the boot VGA device) and PCI serial ports of the console."""
    found: dict[str, str] = {}
    devices = sys_root / "bus/pci/devices"
    if devices.is_dir():
        for entry in sorted(os.listdir(devices)):
            if _read(devices / entry / "boot_vga").strip() == "1":
                found[entry] = "drives the console's display (boot_vga)"
    for tty in _read(sys_root / "class/tty/console/active").split():
        resolved = _resolve(sys_root, f"class/tty/{tty}/device")
        for address in pci_addresses_on(resolved or ""):
            found.setdefault(address, f"holds the console ({tty})")
    return found


def group_mates(groups: Mapping[str, int | None], address: str) -> list[str]:
    """The other functions of ``address``'s IOMMU group (none without a group)."""
    group = groups.get(address)
    if group is None:
        return []
    return sorted(a for a, g in groups.items() if g == group and a != address)
