"""Reading sysfs: the fixture hosts, malformed input, and this machine's real /sys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.passthrough import sysfs
from fleetboot.passthrough.errors import SysfsError
from fleetboot.passthrough.sysfs import RawDevice, parse_device
from fleetboot.passthrough.sysfs_builder import FakeDevice, FakeSysfs, build_example_host


def test_example_host_a(tmp_path: Path) -> None:
    build_example_host(tmp_path, "a")
    result = sysfs.scan(tmp_path)
    assert result.problems == ()
    by = {d.address: d for d in result.devices}
    assert len(by) == 13
    pf = by["0000:3b:00.0"]
    assert (pf.vendor_id, pf.product_id, pf.class_code) == ("8086", "1572", "020000")
    assert pf.device_type == "pf" and pf.driver == "i40e" and pf.netdevs == ("ens1f0",)
    assert pf.virtfns == tuple(f"0000:3b:02.{i}" for i in range(4))
    assert (pf.sriov_totalvfs, pf.sriov_numvfs, pf.numa_node, pf.iommu_group) == (64, 4, 0, 10)
    vf = by["0000:3b:02.3"]
    assert vf.device_type == "vf" and vf.physfn == "0000:3b:00.0" and vf.driver == "vfio-pci"
    assert vf.iommu_group == 23 and vf.netdevs == ()
    gpu = by["0000:86:00.0"]
    assert gpu.device_type == "pci" and gpu.subsystem_device_id == "145f"
    assert gpu.numa_node == 1
    bridge = by["0000:00:00.0"]
    assert bridge.driver is None and bridge.numa_node is None  # numa_node -1
    cx5 = by["0000:5e:00.0"]
    assert cx5.device_type == "pf" and cx5.virtfns == () and cx5.sriov_numvfs == 0


def test_virtfn_order_is_numeric(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path)
    fs.add(FakeDevice("0000:01:00.0", "8086", "1572", "020000", sriov_totalvfs=16))
    vfs = [FakeDevice(f"0000:01:{2 + i // 8:02x}.{i % 8}", "8086", "154c", "020000")
           for i in range(12)]
    fs.add_vfs("0000:01:00.0", vfs)
    pf = next(d for d in sysfs.scan(tmp_path).devices if d.address == "0000:01:00.0")
    # virtfn10 sorts before virtfn2 as text; the kernel's order is numeric.
    assert pf.virtfns == tuple(v.address for v in vfs)


def test_bad_device_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path)
    fs.add(FakeDevice("0000:01:00.0", "8086", "1572", "020000"))
    fs.add(FakeDevice("0000:02:00.0", "8086", "1572", "020000"))
    fs.write_attr("0000:02:00.0", "vendor", "garbage")
    result = sysfs.scan(tmp_path)
    assert [d.address for d in result.devices] == ["0000:01:00.0"]
    assert len(result.problems) == 1 and "vendor" in result.problems[0]


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SysfsError, match="not a sysfs root"):
        sysfs.scan(tmp_path / "nope")


def test_removed_device_disappears(tmp_path: Path) -> None:
    fs = build_example_host(tmp_path, "b")
    fs.remove("0000:3d:00.0")
    assert "0000:3d:00.0" not in {d.address for d in sysfs.scan(tmp_path).devices}


_hex_text = st.text(alphabet="0123456789abcdefxX \n-g", max_size=10)


@given(
    files=st.dictionaries(st.sampled_from(sysfs.ATTRIBUTE_FILES), _hex_text),
    links=st.dictionaries(st.sampled_from(["driver", "iommu_group", "physfn", "virtfn0"]),
                          st.text(max_size=14)),
    address=st.sampled_from(["0000:3b:00.0", "3b:00.1", "zz", "0000:3b:20.0"]),
)
def test_parse_device_never_crashes(files: dict[str, str], links: dict[str, str],
                                    address: str) -> None:
    try:
        dev = parse_device(RawDevice(address, files, links))
    except SysfsError:
        return
    assert len(dev.vendor_id) == 4 and len(dev.class_code) == 6


@given(vendor=st.integers(0, 0xFFFF), device=st.integers(0, 0xFFFF),
       cls=st.integers(0, 0xFFFFFF), numa=st.integers(-1, 7))
def test_parse_device_roundtrip(vendor: int, device: int, cls: int, numa: int) -> None:
    raw = RawDevice("0000:3b:00.0", {"vendor": f"0x{vendor:04x}\n", "device": f"0x{device:04X}\n",
                                     "class": f"0x{cls:06x}\n", "numa_node": f"{numa}\n"})
    dev = parse_device(raw)
    assert int(dev.vendor_id, 16) == vendor and int(dev.product_id, 16) == device
    assert int(dev.class_code, 16) == cls
    assert dev.numa_node == (None if numa < 0 else numa)


@pytest.mark.skipif(not os.path.isdir("/sys/bus/pci/devices"), reason="no PCI sysfs here")
def test_real_sysfs() -> None:
    """This machine's own PCI devices parse without a single problem."""
    result = sysfs.scan("/sys")
    assert result.problems == ()
    names = sorted(os.listdir("/sys/bus/pci/devices"))
    assert [d.address for d in result.devices] == names
    for dev in result.devices:
        base = Path("/sys/bus/pci/devices") / dev.address
        assert int(dev.vendor_id, 16) == int((base / "vendor").read_text(), 16)
        assert int(dev.class_code, 16) == int((base / "class").read_text(), 16)
        driver = base / "driver"
        assert dev.driver == (os.path.basename(os.readlink(driver)) if driver.is_symlink()
                              else None)
    # Every kernel network interface backed by a PCI device is found on its device.
    found = {n for d in result.devices for n in d.netdevs}
    for name in os.listdir("/sys/class/net"):
        real = os.path.realpath(f"/sys/class/net/{name}/device")
        # virtio NICs: .../0000:00:03.0/virtio2 is the device link's target.
        owner = os.path.basename(os.path.dirname(real) if "/virtio" in real else real)
        if "/pci" in real and owner in names:
            assert name in found
