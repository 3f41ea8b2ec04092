"""The VM tables on SQLite and PostgreSQL: what create stores, and the constraints."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from fleetboot.inventory.db import Database
from fleetboot.vm import planner as P
from fleetboot.vm.models import Instance, Nic
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, SpecError, parse_disk, parse_nic


@pytest.fixture
def service(db: Database, tmp_path: Path, need_qemu: None) -> VmService:
    # create asks QEMU for its machine types and PCI drivers
    return VmService(db, VmSettings(run_dir=tmp_path / "run", image_dir=tmp_path / "img"))


def test_schema_has_vm_tables(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert {"vm_instances", "vm_nics", "vm_disks", "vm_devices"} <= tables


async def test_create_stores_pinned_machine_layout_and_devices(service: VmService) -> None:
    spec = CreateSpec(
        "db1", P.Family.Q35, vcpus=2, memory_mib=512,
        nics=(parse_nic("model=e1000,mac=52:54:00:AA:00:01,boot"), parse_nic("model=rtl8139")),
        disks=(parse_disk("size=1M,bus=virtio-scsi"), parse_disk("size=1M,boot")),
        balloon=True, rng=True, serial_log="/tmp/db1.log",
        extra_args=("-device", "virtio-rng-pci,id=myrng", "-rtc", "base=utc"),
    )
    view = await service.create(spec)
    assert view.machine_type.startswith("pc-q35-") and view.machine_type != "q35"
    assert view.nics[0].mac == "52:54:00:aa:00:01" and view.nics[0].is_boot
    assert view.layout.get("net0").bootindex == 1 and view.layout.get("net1").romfile == ""
    assert view.layout.get("disk1").bootindex == 2
    assert view.layout.find("scsi0") is not None and view.layout.find("myrng") is not None
    assert {d.device for d in view.devices} == {"balloon0", "rng0", "serial0"}
    assert all(Path(d.path).exists() for d in view.disks)
    again = service.read("db1")
    assert again == view  # the JSON layout and rows survive the round trip
    assert P.render(again.layout) == "I .....XRB NN______ SD______________ ________ I"


async def test_names_macs_and_boot_nics_are_unique(service: VmService, db: Database) -> None:
    await service.create(CreateSpec("u1", nics=(parse_nic("mac=52:54:00:00:00:09,boot"),)))
    with pytest.raises(SpecError, match="exists already"):
        await service.create(CreateSpec("u1"))
    with pytest.raises(SpecError, match="already used"):
        await service.create(CreateSpec("u2", nics=(parse_nic("mac=52:54:00:00:00:09"),)))
    assert [v.name for v in service.list_instances()] == ["u1"]
    with pytest.raises(IntegrityError), db.session() as s:  # one boot NIC per instance
        inst = s.query(Instance).filter_by(name="u1").one()
        s.add(Nic(instance_id=inst.id, device_id="net5", mac="52:54:00:00:00:0a",
                  is_boot=True))
    with pytest.raises(SpecError, match="exactly one boot NIC"):
        CreateSpec("u3", nics=(parse_nic("boot"), parse_nic("boot")))
