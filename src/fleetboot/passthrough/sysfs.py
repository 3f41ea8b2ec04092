"""Host PCI inventory from sysfs (``<root>/bus/pci/devices/*``).

Reading and parsing are separate: :func:`read_raw` collects the few files and
symlinks of one device directory into a :class:`RawDevice` (I/O only), and
:func:`parse_device` turns that into a :class:`PciDevice` (pure, so it is
tested with generated input). :func:`scan` does both for a whole tree and
reports devices it could not understand instead of failing the scan.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleetboot.passthrough.errors import SysfsError
from fleetboot.passthrough.pci import PciAddressError, normalize_address

# Attribute files we read; everything else in a device directory is ignored.
ATTRIBUTE_FILES = (
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "class",
    "numa_node",
    "sriov_totalvfs",
    "sriov_numvfs",
)
_VIRTFN = re.compile(r"^virtfn(\d+)$")


@dataclass(frozen=True)
class RawDevice:
    """What one ``bus/pci/devices/<address>`` directory holds, unparsed."""

    address: str
    files: Mapping[str, str] = field(default_factory=dict)
    # Symlink name -> last component of its target (driver name, group number, address).
    links: Mapping[str, str] = field(default_factory=dict)
    netdevs: Sequence[str] = ()


@dataclass(frozen=True)
class PciDevice:
    """One host PCI function as the kernel describes it. Ids are 4 lowercase hex digits."""

    address: str
    vendor_id: str
    product_id: str
    class_code: str  # 6 hex digits: class, subclass, programming interface
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    driver: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    physfn: str | None = None  # the PF's address, for an SR-IOV virtual function
    virtfns: tuple[str, ...] = ()  # a PF's enabled VFs, by VF index
    sriov_totalvfs: int = 0
    sriov_numvfs: int = 0
    netdevs: tuple[str, ...] = ()

    @property
    def device_type(self) -> str:
        """``vf``, ``pf`` (SR-IOV capable) or ``pci`` (neither)."""
        if self.physfn is not None:
            return "vf"
        if self.sriov_totalvfs > 0 or self.virtfns:
            return "pf"
        return "pci"


@dataclass(frozen=True)
class ScanResult:
    root: str
    devices: tuple[PciDevice, ...]
    problems: tuple[str, ...] = ()


# ---------------------------------------------------------------- pure parsing


def _hex_id(raw: str | None, name: str, width: int, address: str) -> str:
    if raw is None:
        raise SysfsError(f"{address}: sysfs attribute {name!r} is missing")
    text = raw.strip().lower()
    text = text.removeprefix("0x")
    if not text or len(text) > width or any(c not in "0123456789abcdef" for c in text):
        raise SysfsError(f"{address}: sysfs attribute {name!r} is {raw.strip()!r}, not a "
                         f"{width}-digit hex number")
    return text.zfill(width)


def _optional_hex(raw: str | None, name: str, width: int, address: str) -> str | None:
    return None if raw is None else _hex_id(raw, name, width, address)


def _int_or_none(raw: str | None, name: str, address: str) -> int | None:
    """NUMA node and counters; the kernel writes -1 for "no NUMA node"."""
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise SysfsError(f"{address}: sysfs attribute {name!r} is {raw.strip()!r}, "
                         "not a number") from None
    return None if value < 0 else value


def _address_link(links: Mapping[str, str], name: str, address: str) -> str:
    try:
        return normalize_address(links[name])
    except PciAddressError:
        raise SysfsError(f"{address}: symlink {name!r} points at {links[name]!r}, "
                         "not a PCI device") from None


def _virtfns(links: Mapping[str, str], address: str) -> tuple[str, ...]:
    indexed = []
    for name in links:
        match = _VIRTFN.match(name)
        if match:
            indexed.append((int(match[1]), _address_link(links, name, address)))
    return tuple(addr for _, addr in sorted(indexed))


def parse_device(raw: RawDevice) -> PciDevice:
    """Turn the raw contents of one device directory into a :class:`PciDevice`."""
    try:
        address = normalize_address(raw.address)
    except PciAddressError as exc:
        raise SysfsError(f"{raw.address!r} in bus/pci/devices is not a PCI address") from exc
    files, links = raw.files, raw.links
    group = links.get("iommu_group")
    if group is not None and not group.isdigit():
        raise SysfsError(f"{address}: iommu_group points at {group!r}, not a group number")
    return PciDevice(
        address=address,
        vendor_id=_hex_id(files.get("vendor"), "vendor", 4, address),
        product_id=_hex_id(files.get("device"), "device", 4, address),
        class_code=_hex_id(files.get("class"), "class", 6, address),
        subsystem_vendor_id=_optional_hex(files.get("subsystem_vendor"), "subsystem_vendor", 4,
                                          address),
        subsystem_device_id=_optional_hex(files.get("subsystem_device"), "subsystem_device", 4,
                                          address),
        driver=links.get("driver"),
        numa_node=_int_or_none(files.get("numa_node"), "numa_node", address),
        iommu_group=int(group) if group is not None else None,
        physfn=_address_link(links, "physfn", address) if "physfn" in links else None,
        virtfns=_virtfns(links, address),
        sriov_totalvfs=_int_or_none(files.get("sriov_totalvfs"), "sriov_totalvfs", address) or 0,
        sriov_numvfs=_int_or_none(files.get("sriov_numvfs"), "sriov_numvfs", address) or 0,
        netdevs=tuple(sorted(set(raw.netdevs))),
    )


# ---------------------------------------------------------------- reading


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        # Some attributes are unreadable for some devices (permissions, hot-removal
        # mid-scan): treat them as absent, parse_device says what is missing.
        return None


def _link_target(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _list_dir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _netdevs(devdir: Path) -> list[str]:
    names = _list_dir(devdir / "net")
    # virtio NICs hang their interface under the virtio child device, not the PCI function.
    for child in _list_dir(devdir):
        if child.startswith("virtio"):
            names += _list_dir(devdir / child / "net")
    return names


def read_raw(devdir: Path) -> RawDevice:
    """Read one device directory (its files and symlinks; no parsing)."""
    files = {}
    for name in ATTRIBUTE_FILES:
        text = _read_text(devdir / name)
        if text is not None:
            files[name] = text
    links = {}
    for name in ("driver", "iommu_group", "physfn", *_virtfn_names(devdir)):
        target = _link_target(devdir / name)
        if target is not None:
            links[name] = target
    return RawDevice(devdir.name, files, links, tuple(_netdevs(devdir)))


def _virtfn_names(devdir: Path) -> list[str]:
    return [n for n in _list_dir(devdir) if _VIRTFN.match(n)]


def devices_dir(root: str | os.PathLike[str]) -> Path:
    path = Path(root) / "bus" / "pci" / "devices"
    if not path.is_dir():
        raise SysfsError(f"{path} does not exist: {os.fspath(root)!r} is not a sysfs root "
                         "with PCI devices (pass the directory sysfs is mounted on, e.g. /sys)")
    return path


def scan(root: str | os.PathLike[str] = "/sys") -> ScanResult:
    """Every PCI function under ``root``; unparseable devices are listed as problems."""
    base = devices_dir(root)
    devices: list[PciDevice] = []
    problems: list[str] = []
    for name in _list_dir(base):
        try:
            devices.append(parse_device(read_raw(base / name)))
        except SysfsError as exc:
            problems.append(str(exc))
    devices.sort(key=lambda d: d.address)
    return ScanResult(os.fspath(root), tuple(devices), tuple(problems))
