"""Hosts in the inventory: scans, rescans (add, vanish, return, conflicts), tags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pt_helpers import INSTANCE, Fleet

from fleetboot.inventory.db import Database
from fleetboot.passthrough import catalog, claims, hosts
from fleetboot.passthrough.errors import HostError
from fleetboot.passthrough.flavors import parse_requests
from fleetboot.passthrough.models import DeviceState
from fleetboot.passthrough.sysfs_builder import X710_VF, FakeDevice, build_example_host


def _views(db: Database, host: str) -> dict[str, hosts.DeviceView]:
    with db.session() as s:
        flavors = catalog.list_flavors(s)
        return {v.row.address: v for v in hosts.device_views(s, hosts.get_host(s, host), flavors)}


def test_scan_registers_devices(fleet: Fleet) -> None:
    views = _views(fleet.db, "compute-a")
    assert len(views) == 13
    vf = views["0000:3b:02.0"]
    assert vf.row.device_type == "vf" and vf.row.pf_address == "0000:3b:00.0"
    # A VF inherits its PF's physical_network tag and so matches two flavors.
    assert vf.attrs.tag("physical_network") == "physnet1"
    assert vf.flavors == {"sriov-physnet1", "x710-vf", "intel-nic"}
    assert views["0000:3b:0a.0"].flavors == {"x710-vf", "intel-nic"}  # physnet2
    assert views["0000:86:00.0"].flavors == {"gpu-a100"}
    assert views["0000:5e:00.0"].kind == "network-passthrough"
    assert views["0000:3b:02.0"].kind == "network-hostdev"
    assert views["0000:86:00.0"].kind == "hostdev"
    assert all(v.status == "usable" for v in views.values())


def test_rescan_is_idempotent(fleet: Fleet) -> None:
    report = hosts.scan_host(fleet.db, "compute-a", fleet.roots["a"])
    assert (report.added, report.updated, report.vanished, report.returned) == ([], [], [], [])
    assert report.devices == 13


def test_rescan_adds_marks_vanished_and_returns(fleet: Fleet) -> None:
    fs = fleet.fakes["b"]
    fs.remove("0000:3d:00.0")
    fs.add_vfs("0000:18:00.0", [FakeDevice(f"0000:18:02.{i}", "8086", X710_VF, "020000",
                                           driver="vfio-pci", iommu_group=60 + i, numa_node=0)
                                for i in range(3)])
    report = hosts.scan_host(fleet.db, "compute-b", fleet.roots["b"])
    assert report.added == ["0000:18:02.2"]
    assert report.vanished == ["0000:3d:00.0"]
    assert report.updated == ["0000:18:00.0: sriov_numvfs"]
    views = _views(fleet.db, "compute-b")
    assert views["0000:3d:00.0"].status == "absent"
    assert views["0000:18:02.2"].attrs.tag("physical_network") == "physnet1"  # from the PF
    build_example_host(fleet.roots["b"], "b")
    report = hosts.scan_host(fleet.db, "compute-b", fleet.roots["b"])
    assert report.returned == ["0000:3d:00.0"]
    assert _views(fleet.db, "compute-b")["0000:3d:00.0"].status == "usable"


def test_rescan_keeps_claims_and_flags_conflicts(fleet: Fleet) -> None:
    got = claims.claim(fleet.db, INSTANCE, parse_requests("1 x gpu-a100"), host="compute-b")
    assert [d.address for d in got.devices] == ["0000:3d:00.0"]
    fleet.fakes["b"].remove("0000:3d:00.0")
    report = hosts.scan_host(fleet.db, "compute-b", fleet.roots["b"])
    assert report.conflicts and "vanished" in report.conflicts[0]
    view = _views(fleet.db, "compute-b")["0000:3d:00.0"]
    assert view.row.state == DeviceState.CLAIMED and view.instance_uuid == INSTANCE
    assert view.row.conflict and not view.row.present
    # Same card back: the claim simply holds again.
    build_example_host(fleet.roots["b"], "b")
    hosts.scan_host(fleet.db, "compute-b", fleet.roots["b"])
    view = _views(fleet.db, "compute-b")["0000:3d:00.0"]
    assert view.row.present and view.row.conflict is None and view.status == "claimed"
    # A different card in the slot of a claimed device is a conflict.
    fleet.fakes["b"].write_attr("0000:3d:00.0", "device", "0x2236")
    report = hosts.scan_host(fleet.db, "compute-b", fleet.roots["b"])
    assert report.conflicts and "changed identity" in report.conflicts[0]
    claims.release(fleet.db, INSTANCE)
    view = _views(fleet.db, "compute-b")["0000:3d:00.0"]
    assert view.row.conflict is None and view.status == "usable"


def test_tags(fleet: Fleet) -> None:
    tags = hosts.set_tags(fleet.db, "compute-a", "3b:02.0", {"physical_network": "physnet9"})
    assert tags == {"physical_network": "physnet9"}
    assert _views(fleet.db, "compute-a")["0000:3b:02.0"].flavors == {"x710-vf", "intel-nic"}
    assert hosts.set_tags(fleet.db, "compute-a", "0000:3b:02.0", remove=["physical_network"]) == {}
    with pytest.raises(HostError, match="no tag"):
        hosts.set_tags(fleet.db, "compute-a", "0000:3b:02.0", remove=["nope"])
    with pytest.raises(HostError, match="no PCI device"):
        hosts.set_tags(fleet.db, "compute-a", "0000:99:00.0", {"a": "b"})
    with pytest.raises(HostError, match="unknown host"):
        hosts.set_tags(fleet.db, "nope", "0000:99:00.0", {"a": "b"})


def test_real_host_scan(sqlite_db: Database) -> None:
    report = hosts.scan_host(sqlite_db, "this-machine", "/sys")
    assert report.devices == len(report.added) > 0 and report.problems == []


def test_bad_host_name(sqlite_db: Database, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="host name"):
        hosts.scan_host(sqlite_db, "Bad Name", tmp_path)
