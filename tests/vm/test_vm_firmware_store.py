"""The firmware of an instance in the inventory (SQLite and PostgreSQL), its variable store
on disk, and the Alembic revision that added it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from fleetboot.inventory.db import Database
from fleetboot.inventory.migrate import alembic_config
from fleetboot.vm import planner as P
from fleetboot.vm.firmware import OVMF_VARS, Firmware, FirmwareError
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, SpecError, parse_nic


@pytest.fixture
def service(db: Database, tmp_path: Path, need_qemu: None) -> VmService:
    if not OVMF_VARS.is_file():
        pytest.skip("needs the ovmf package")
    return VmService(db, VmSettings(run_dir=tmp_path / "run", image_dir=tmp_path / "img"))


async def test_uefi_is_stored_with_its_own_variable_store(service: VmService,
                                                          tmp_path: Path) -> None:
    view = await service.create(CreateSpec("u1", P.Family.Q35, firmware=Firmware.UEFI))
    assert view.firmware is Firmware.UEFI and view.uefi_vars is not None
    store = Path(view.uefi_vars)
    assert store.parent == tmp_path / "img"
    assert store.read_bytes() == OVMF_VARS.read_bytes()
    assert service.read("u1") == view
    bios = await service.create(CreateSpec("b1"))
    assert bios.firmware is Firmware.BIOS and bios.uefi_vars is None
    await service.delete("u1")
    assert not store.exists()


async def test_the_setting_is_the_default_for_new_vms(service: VmService) -> None:
    service.settings = replace(service.settings, firmware=Firmware.UEFI)
    assert (await service.create(CreateSpec("d1"))).firmware is Firmware.UEFI
    with pytest.raises(FirmwareError, match="at least 64 MiB"):
        await service.create(CreateSpec("d2", memory_mib=32))
    assert (await service.create(CreateSpec("d3", firmware=Firmware.BIOS))).uefi_vars is None


async def test_a_failed_create_leaves_no_store(service: VmService, tmp_path: Path) -> None:
    await service.create(CreateSpec("a1", nics=(parse_nic("mac=52:54:00:00:00:42"),)))
    with pytest.raises(SpecError, match="already used"):
        await service.create(CreateSpec("a2", nics=(parse_nic("mac=52:54:00:00:00:42"),),
                                        firmware=Firmware.UEFI))
    assert list((tmp_path / "img").glob("*.fd")) == []


async def test_missing_ovmf_names_the_package(service: VmService, tmp_path: Path) -> None:
    service.settings = replace(service.settings, ovmf_vars=tmp_path / "nope.fd")
    with pytest.raises(FirmwareError, match="install the ovmf package"):
        await service.create(CreateSpec("m1", firmware=Firmware.UEFI))
    assert service.list_instances() == []


def test_rows_from_before_the_revision_read_as_bios(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/old.db")
    command.upgrade(alembic_config(db.engine), "0002_vm")  # the VM tables as first released
    layout = json.dumps(P.to_dict(P.new_layout(P.Family.PC)))
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO vm_instances (name, uuid, family, machine_type, accel, vcpus, "
            "memory_mib, extra_args, layout, status, generation, created_at, updated_at) "
            "VALUES ('old', '11111111-2222-3333-4444-555555555555', 'pc', 'pc-i440fx-7.2', "
            "'tcg', 1, 128, '[]', :layout, 'stopped', 0, '2026-01-01', '2026-01-01')"),
            {"layout": layout})
    db.create_schema()  # every head, this revision included
    view = VmService(db, VmSettings(run_dir=tmp_path / "r", image_dir=tmp_path / "i")).read("old")
    assert view.firmware is Firmware.BIOS and view.uefi_vars is None
    db.dispose()
