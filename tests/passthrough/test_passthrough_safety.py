"""Safe passthrough: an allowlist, whole IOMMU groups, and never a device the host uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.inventory.db import Database
from fleetboot.passthrough import catalog, claims, hosts, hostuse
from fleetboot.passthrough.errors import NoHostError
from fleetboot.passthrough.flavors import Flavor, parse_requests
from fleetboot.passthrough.sysfs_builder import FakeDevice, FakeSysfs

NVIDIA = "10de"
UUIDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 4)]


def _gpu_host(root: Path) -> None:
    """Three GPU functions behind one bridge, all in IOMMU group 50."""
    fs = FakeSysfs(root)
    fs.add(FakeDevice("0000:3f:00.0", "8086", "2030", "060400", iommu_group=50))
    for fn in range(3):
        fs.add(FakeDevice(f"0000:40:00.{fn}", NVIDIA, "20b0", "030200", driver="vfio-pci",
                          iommu_group=50))
    fs.add(FakeDevice("0000:41:00.0", NVIDIA, "20b0", "030200", driver="vfio-pci",
                      iommu_group=51))


@pytest.fixture
def gpu_db(sqlite_db: Database, tmp_path: Path) -> Database:
    _gpu_host(tmp_path / "sys")
    hosts.scan_host(sqlite_db, "gpu-host", tmp_path / "sys")
    gpu = Flavor.create("gpu", vendor=NVIDIA)
    with sqlite_db.session() as s:
        catalog.add_flavor(s, gpu)
    hosts.allow_devices(sqlite_db, "gpu-host", gpu)
    return sqlite_db


def test_one_iommu_group_never_goes_to_two_instances(gpu_db: Database) -> None:
    """Regression: three members of one group went to three different instances."""
    got = claims.claim(gpu_db, UUIDS[0], parse_requests("1 x gpu"))
    first = got.devices[0].address
    others = {"0000:40:00.0", "0000:40:00.1", "0000:40:00.2"} - {first}
    second = claims.claim(gpu_db, UUIDS[1], parse_requests("1 x gpu"))
    assert second.devices[0].address == "0000:41:00.0"  # the only other group
    with pytest.raises(NoHostError, match="IOMMU group mate is in use"):
        claims.claim(gpu_db, UUIDS[2], parse_requests("1 x gpu"))
    claims.release(gpu_db, UUIDS[0])  # the group is free again, whole
    third = claims.claim(gpu_db, UUIDS[2], parse_requests("3 x gpu"))
    assert {d.address for d in third.devices} == others | {first}


def test_nothing_is_claimable_until_allowed(sqlite_db: Database, tmp_path: Path) -> None:
    _gpu_host(tmp_path / "sys")
    hosts.scan_host(sqlite_db, "gpu-host", tmp_path / "sys")
    with sqlite_db.session() as s:
        catalog.add_flavor(s, Flavor.create("gpu", vendor=NVIDIA))
    with pytest.raises(NoHostError, match="4 not allowed for passthrough"):
        claims.claim(sqlite_db, UUIDS[0], parse_requests("1 x gpu"))
    hosts.allow_devices(sqlite_db, "gpu-host", Flavor.create("one-slot",
                                                             address_globs=["0000:41:*"]))
    got = claims.claim(sqlite_db, UUIDS[0], parse_requests("1 x gpu"))
    assert got.devices[0].address == "0000:41:00.0"


def test_this_machines_own_disk_controller_is_never_claimable(sqlite_db: Database) -> None:
    """Regression: on a real /sys, a flavor of the root disk's class claimed and attached
    this machine's own root disk controller."""
    uses = hostuse.host_use("/sys", "/proc")
    root_disk = [a for a, why in uses.items() if why.endswith("mounted on /")]
    if not root_disk:
        pytest.skip("/ is not on a PCI block device here")
    hosts.scan_host(sqlite_db, "this-machine", "/sys")
    with sqlite_db.session() as s:
        row = next(d for d in hosts.get_host(s, "this-machine").devices
                   if d.address == root_disk[-1])
        flavor = Flavor.create("own-disk", vendor=row.vendor_id, class_prefix=row.class_code)
        catalog.add_flavor(s, flavor)
        views = hosts.device_views(s, hosts.get_host(s, "this-machine"), [flavor])
    hosts.allow_devices(sqlite_db, "this-machine", flavor)  # even when allowed
    status = {v.row.address: v.status for v in views}
    assert status[root_disk[-1]].startswith("used by the host: holds ")
    assert "mounted on /" in status[root_disk[-1]]
    with pytest.raises(NoHostError, match="used by the host"):
        claims.claim(sqlite_db, UUIDS[0], parse_requests("1 x own-disk"))


def test_host_use_spreads_over_the_iommu_group(sqlite_db: Database, tmp_path: Path) -> None:
    _gpu_host(tmp_path / "sys")
    result_uses = {"0000:40:00.1": "drives the console's display (boot_vga)"}
    (tmp_path / "sys/bus/pci/devices/0000:40:00.1/boot_vga").write_text("1\n")
    hosts.scan_host(sqlite_db, "gpu-host", tmp_path / "sys")
    with sqlite_db.session() as s:
        use = {d.address: d.host_use for d in hosts.get_host(s, "gpu-host").devices}
    assert use["0000:40:00.1"] == result_uses["0000:40:00.1"]
    assert use["0000:40:00.0"] == use["0000:40:00.2"] == (
        "shares IOMMU group 50 with 0000:40:00.1, which the host uses (drives the console's "
        "display (boot_vga))")
    assert use["0000:3f:00.0"] is None and use["0000:41:00.0"] is None  # bridge, other group


def test_proc_parsers() -> None:
    mounts = ("/dev/vda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n"
              "/dev/sdb2 /mnt/my\\040disk xfs rw 0 0\n/dev/vda1 /bind ext4 rw 0 0\n")
    assert hostuse.mounted_block_devices(mounts) == {"vda1": "/", "sdb2": "/mnt/my disk"}
    route = ("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
             "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n"
             "eth1\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    assert hostuse.default_route_interfaces(route) == {"eth0"}
    path = "/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/nvme/nvme0/nvme0n1"
    assert hostuse.pci_addresses_on(path) == ["0000:00:1c.0", "0000:02:00.0"]


@given(st.text(max_size=400))
def test_proc_parsers_take_any_text(text: str) -> None:
    hostuse.mounted_block_devices(text)
    hostuse.default_route_interfaces(text)
    hostuse.pci_addresses_on(text)
