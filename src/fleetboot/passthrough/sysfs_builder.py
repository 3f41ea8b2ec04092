"""Writes synthetic sysfs trees laid out like the kernel's, for tests, benchmarks and demos.

Devices live under ``devices/pci<domain>:<bus>/<address>`` and are linked from
``bus/pci/devices``; ``driver``, ``iommu_group``, ``physfn`` and ``virtfn<N>``
are relative symlinks as on a real machine, so the scanner reads a fake tree
exactly as it reads ``/sys``.

:func:`build_example_host` writes the two hosts the tests migrate between.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetboot.passthrough.pci import PciAddress, normalize_address


@dataclass(frozen=True)
class FakeDevice:
    address: str
    vendor: str
    device: str
    class_code: str
    driver: str | None = None
    numa_node: int = -1
    iommu_group: int | None = None
    subsystem: tuple[str, str] | None = None
    netdevs: Sequence[str] = ()
    sriov_totalvfs: int | None = None


class FakeSysfs:
    """A sysfs root being written. Addresses may be given short (``3b:00.0``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / "bus" / "pci" / "devices").mkdir(parents=True, exist_ok=True)

    def _devdir(self, address: str) -> Path:
        addr = PciAddress.parse(address)
        return self.root / "devices" / f"pci{addr.domain:04x}:{addr.bus:02x}" / str(addr)

    def _link(self, path: Path, target: Path) -> None:
        if path.is_symlink():
            path.unlink()
        path.symlink_to(os.path.relpath(target, path.parent))

    def add(self, dev: FakeDevice) -> str:
        address = normalize_address(dev.address)
        devdir = self._devdir(address)
        devdir.mkdir(parents=True, exist_ok=True)
        sub_vendor, sub_device = dev.subsystem or (dev.vendor, dev.device)
        attrs = {
            "vendor": f"0x{dev.vendor}",
            "device": f"0x{dev.device}",
            "class": f"0x{dev.class_code}",
            "subsystem_vendor": f"0x{sub_vendor}",
            "subsystem_device": f"0x{sub_device}",
            "numa_node": str(dev.numa_node),
        }
        if dev.sriov_totalvfs is not None:
            attrs["sriov_totalvfs"] = str(dev.sriov_totalvfs)
            attrs["sriov_numvfs"] = "0"
        for name, value in attrs.items():
            (devdir / name).write_text(value + "\n")
        if dev.driver:
            self.bind(address, dev.driver)
        if dev.iommu_group is not None:
            group = self.root / "kernel" / "iommu_groups" / str(dev.iommu_group) / "devices"
            group.mkdir(parents=True, exist_ok=True)
            self._link(devdir / "iommu_group", group.parent)
            self._link(group / address, devdir)
        for netdev in dev.netdevs:
            (devdir / "net" / netdev).mkdir(parents=True, exist_ok=True)
        self._link(self.root / "bus" / "pci" / "devices" / address, devdir)
        return address

    def bind(self, address: str, driver: str | None) -> None:
        """Point the device's ``driver`` link at ``driver`` (None: unbind)."""
        devdir = self._devdir(address)
        link = devdir / "driver"
        if link.is_symlink():
            link.unlink()
        if driver:
            target = self.root / "bus" / "pci" / "drivers" / driver
            target.mkdir(parents=True, exist_ok=True)
            self._link(link, target)

    def add_vfs(self, pf: str, vfs: Sequence[FakeDevice]) -> list[str]:
        """Enable ``vfs`` on ``pf``: ``physfn``/``virtfn<N>`` links and ``sriov_numvfs``."""
        pf_dir = self._devdir(pf)
        added = []
        for index, vf in enumerate(vfs):
            address = self.add(vf)
            self._link(self._devdir(address) / "physfn", pf_dir)
            self._link(pf_dir / f"virtfn{index}", self._devdir(address))
            added.append(address)
        (pf_dir / "sriov_numvfs").write_text(f"{len(vfs)}\n")
        return added

    def remove(self, address: str) -> None:
        """Hot-remove a device (its directory and its bus link)."""
        address = normalize_address(address)
        (self.root / "bus" / "pci" / "devices" / address).unlink(missing_ok=True)
        shutil.rmtree(self._devdir(address), ignore_errors=True)

    def write_attr(self, address: str, name: str, value: str) -> None:
        (self._devdir(address) / name).write_text(value + "\n")


# --------------------------------------------------------------- example hosts

INTEL, NVIDIA, MELLANOX = "8086", "10de", "15b3"
X710_PF, X710_VF = "1572", "154c"
E810_PF, E810_VF = "1593", "1889"
A100, CX5 = "20b0", "1017"
ETHERNET, GPU_3D, NVME = "020000", "030200", "010802"


def _vf(address: str, product: str, numa: int, group: int) -> FakeDevice:
    return FakeDevice(address, INTEL, product, ETHERNET, driver="vfio-pci", numa_node=numa,
                      iommu_group=group)


def _host_a(fs: FakeSysfs) -> None:
    fs.add(FakeDevice("0000:00:00.0", INTEL, "2020", "060000", iommu_group=0))
    fs.add(FakeDevice("0000:00:17.0", INTEL, "0a54", NVME, driver="nvme", iommu_group=1))
    fs.add(FakeDevice("0000:3b:00.0", INTEL, X710_PF, ETHERNET, driver="i40e", numa_node=0,
                      iommu_group=10, netdevs=["ens1f0"], sriov_totalvfs=64))
    fs.add_vfs("0000:3b:00.0", [_vf(f"0000:3b:02.{i}", X710_VF, 0, 20 + i) for i in range(4)])
    fs.add(FakeDevice("0000:3b:00.1", INTEL, X710_PF, ETHERNET, driver="i40e", numa_node=0,
                      iommu_group=11, netdevs=["ens1f1"], sriov_totalvfs=64))
    fs.add_vfs("0000:3b:00.1", [_vf(f"0000:3b:0a.{i}", X710_VF, 0, 30 + i) for i in range(2)])
    fs.add(FakeDevice("0000:5e:00.0", MELLANOX, CX5, ETHERNET, driver="mlx5_core", numa_node=1,
                      iommu_group=12, netdevs=["ens2f0"], sriov_totalvfs=8))
    fs.add(FakeDevice("0000:86:00.0", NVIDIA, A100, GPU_3D, driver="vfio-pci", numa_node=1,
                      iommu_group=40, subsystem=(NVIDIA, "145f")))
    fs.add(FakeDevice("0000:af:00.0", NVIDIA, A100, GPU_3D, driver="vfio-pci", numa_node=1,
                      iommu_group=41, subsystem=(NVIDIA, "145f")))


def _host_b(fs: FakeSysfs) -> None:
    fs.add(FakeDevice("0000:00:00.0", INTEL, "2020", "060000", iommu_group=0))
    # An E810 sorts before the X710 here, so "same flavor" alone would pick it.
    fs.add(FakeDevice("0000:17:00.0", INTEL, E810_PF, ETHERNET, driver="ice", numa_node=0,
                      iommu_group=10, netdevs=["ens4f0"], sriov_totalvfs=128))
    fs.add_vfs("0000:17:00.0", [_vf(f"0000:17:01.{i}", E810_VF, 0, 50 + i) for i in range(2)])
    fs.add(FakeDevice("0000:18:00.0", INTEL, X710_PF, ETHERNET, driver="i40e", numa_node=0,
                      iommu_group=11, netdevs=["ens5f0"], sriov_totalvfs=64))
    fs.add_vfs("0000:18:00.0", [_vf(f"0000:18:02.{i}", X710_VF, 0, 60 + i) for i in range(2)])
    fs.add(FakeDevice("0000:d8:00.0", MELLANOX, CX5, ETHERNET, driver="mlx5_core", numa_node=1,
                      iommu_group=12, netdevs=["ens6f0"], sriov_totalvfs=8))
    fs.add(FakeDevice("0000:3d:00.0", NVIDIA, A100, GPU_3D, driver="vfio-pci", numa_node=0,
                      iommu_group=42, subsystem=(NVIDIA, "1463")))


def build_example_host(root: str | os.PathLike[str], which: str) -> FakeSysfs:
    """Write example host ``a`` or ``b`` under ``root``.

    Host a: two X710 PFs with 4 and 2 VFs (NUMA 0), a ConnectX-5 PF with a netdev
    and no VFs enabled, two A100 GPUs (NUMA 1), an NVMe drive and a host bridge.
    Host b: an E810 and an X710 with 2 VFs each, a ConnectX-5, one A100.
    """
    fs = FakeSysfs(root)
    {"a": _host_a, "b": _host_b}[which](fs)
    return fs
