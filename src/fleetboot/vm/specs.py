"""What users ask for: NIC, disk and instance specifications, parsed from CLI text (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fleetboot.inventory.addr import normalize_mac
from fleetboot.vm.errors import VmError
from fleetboot.vm.firmware import Firmware, check_memory
from fleetboot.vm.models import DiskBus, NicBackend
from fleetboot.vm.planner import Family, PoolSizes

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_MODEL = re.compile(r"[a-z0-9][a-z0-9_-]*")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_SIZE = re.compile(r"(\d+)([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SpecError(VmError, ValueError):
    pass


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise SpecError(f"instance name {name!r}: use up to 63 letters, digits, '_', '.', '-'")
    return name


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1GiB`` or plain bytes."""
    found = _SIZE.fullmatch(text.strip())
    if not found:
        raise SpecError(f"size {text!r}: write it like 512M or 2G")
    size = int(found.group(1)) * _UNITS[found.group(2).upper()]
    if size <= 0:
        raise SpecError(f"size {text!r} must be more than zero")
    return size


def _pairs(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        out[key.strip()] = value.strip() if sep else "true"
    if not out:
        raise SpecError(f"empty {what} specification")
    return out


def _flag(value: str, key: str) -> bool:
    if value.lower() in ("true", "yes", "on", "1"):
        return True
    if value.lower() in ("false", "no", "off", "0"):
        return False
    raise SpecError(f"{key}={value!r}: use yes or no")


@dataclass(frozen=True)
class NicSpec:
    model: str = "virtio-net-pci"
    mac: str | None = None  # None: Fleetboot makes one up
    backend: NicBackend = NicBackend.USER
    target: str | None = None  # tap or bridge name
    boot: bool = False
    rom: str | None = None  # a custom option ROM for the boot NIC

    def __post_init__(self) -> None:
        if not _MODEL.fullmatch(self.model):
            raise SpecError(f"NIC model {self.model!r}: give a QEMU device like e1000")
        if self.mac is not None:
            object.__setattr__(self, "mac", normalize_mac(self.mac))
        if self.backend is NicBackend.USER and self.target:
            raise SpecError("a user-mode NIC takes no tap or bridge name")
        if self.backend is not NicBackend.USER and not (
            self.target and _IFNAME.fullmatch(self.target)
        ):
            raise SpecError(f"backend {self.backend}: name the device, like {self.backend}:br0")
        if self.rom is not None and not self.boot:
            raise SpecError("rom= applies to the boot NIC only; other NICs never load a ROM")


def parse_backend(text: str) -> tuple[NicBackend, str | None]:
    kind, _, target = text.partition(":")
    try:
        backend = NicBackend(kind)
    except ValueError:
        raise SpecError(f"backend {text!r}: use user, tap:NAME or bridge:NAME") from None
    return backend, target or None


def parse_nic(text: str) -> NicSpec:
    """``model=e1000,mac=52:54:00:..,backend=bridge:br0,boot,rom=/path``."""
    pairs = _pairs(text, "NIC")
    known = {"model", "mac", "backend", "boot", "rom"}
    if unknown := set(pairs) - known:
        raise SpecError(f"NIC {text!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"use {', '.join(sorted(known))}")
    backend, target = parse_backend(pairs.get("backend", "user"))
    return NicSpec(pairs.get("model", "virtio-net-pci"), pairs.get("mac"), backend, target,
                   _flag(pairs.get("boot", "no"), "boot"), pairs.get("rom"))


@dataclass(frozen=True)
class DiskSpec:
    size: int | None = None  # bytes; None: use the existing image at ``path``
    path: str | None = None  # None: <image dir>/<instance>-<device>.qcow2
    bus: DiskBus = DiskBus.VIRTIO_BLK
    boot: bool = False

    def __post_init__(self) -> None:
        if self.size is None and self.path is None:
            raise SpecError("a disk needs size= (a new image) or path= (an existing one)")


def parse_disk(text: str) -> DiskSpec:
    """``size=1G,bus=virtio-scsi,path=/var/lib/x.qcow2,boot``."""
    pairs = _pairs(text, "disk")
    known = {"size", "path", "bus", "boot"}
    if unknown := set(pairs) - known:
        raise SpecError(f"disk {text!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"use {', '.join(sorted(known))}")
    try:
        bus = DiskBus(pairs.get("bus", DiskBus.VIRTIO_BLK.value))
    except ValueError:
        raise SpecError(f"disk bus {pairs['bus']!r}: use virtio-blk or virtio-scsi") from None
    size = parse_size(pairs["size"]) if "size" in pairs else None
    return DiskSpec(size, pairs.get("path"), bus, _flag(pairs.get("boot", "no"), "boot"))


@dataclass(frozen=True)
class CreateSpec:
    name: str
    family: Family = Family.Q35
    machine_type: str | None = None  # None: pin what the family's alias means today
    vcpus: int = 1
    memory_mib: int = 256
    nics: tuple[NicSpec, ...] = ()
    disks: tuple[DiskSpec, ...] = ()
    balloon: bool = False
    rng: bool = False
    serial_log: str | None = None
    extra_args: tuple[str, ...] = ()
    pools: PoolSizes | None = None
    accel: str = "tcg"
    netns: str | None = None
    passthrough: tuple[str, ...] = field(default=())  # host PCI addresses for vfio-pci
    firmware: Firmware | None = None  # None: the vm.firmware setting (default bios)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not 1 <= self.vcpus <= 64:
            raise SpecError(f"vcpus {self.vcpus}: use 1 to 64")
        if not 16 <= self.memory_mib <= 1 << 20:
            raise SpecError(f"memory {self.memory_mib} MiB: use 16 MiB or more")
        if self.firmware is not None:
            check_memory(self.firmware, self.memory_mib)
        if sum(n.boot for n in self.nics) > 1:
            raise SpecError("more than one NIC has boot set; designate exactly one boot NIC")
        if sum(d.boot for d in self.disks) > 1:
            raise SpecError("more than one disk has boot set")
        macs = [n.mac for n in self.nics if n.mac]
        if len(set(macs)) != len(macs):
            raise SpecError("two NICs share a MAC address")
