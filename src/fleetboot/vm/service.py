"""The VM operations the CLI calls: create, start, stop, show, hotplug, unplug, migrate.

Every operation follows one pattern so the inventory stays consistent even if
QEMU (or this process) dies half-way:

1. plan with the pure planner; a full pool or a bad request fails here,
   before QEMU is touched;
2. record the *intent* in the database (placement state ``plugging`` or
   ``unplugging``), so the slot is held while QEMU works on it;
3. talk to QEMU, undoing finished steps on failure;
4. record the outcome (``active``, or the placement and rows dropped).

Each command starts by reconciling the stored state with the real process
(:meth:`VmService.sync`): a dead QEMU marks the instance stopped, a pending
plug or unplug is resolved by asking QEMU whether the device exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fcntl
import json
import os
import secrets
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from fleetboot.config import Settings
from fleetboot.inventory.db import Database
from fleetboot.vm import blockcopy, planner, runtime
from fleetboot.vm.drift import DriftReport, compare
from fleetboot.vm.errors import (
    DriftError,
    QemuError,
    QemuGoneError,
    UnplugPendingError,
    VmError,
)
from fleetboot.vm.firmware import (
    OVMF_CODE,
    OVMF_VARS,
    Firmware,
    FirmwareError,
    check_memory,
    copy_vars,
    require_ovmf,
    vars_path,
)
from fleetboot.vm.models import Device as DeviceRow
from fleetboot.vm.models import (
    DeviceKind,
    Disk,
    DiskBus,
    Instance,
    Nic,
    NicBackend,
    VmHost,
    VmStatus,
)
from fleetboot.vm.net import check_bridge, create_tap, delete_tap, tap_name
from fleetboot.vm.planner import DeviceRequest, Kind, Layout, State
from fleetboot.vm.qemu_argv import (
    DeviceDef,
    DiskDef,
    DriverCatalog,
    MachineDef,
    NicDef,
    RunFiles,
    UefiDef,
    blockdev_props,
    controller_props,
    disk_device_props,
    extra_requests,
    hotpluggable,
    netdev_props,
    nic_device_props,
    parse_device_help,
    parse_extra_args,
    qemu_argv,
)
from fleetboot.vm.runtime import (
    QemuProcess,
    Qmp,
    RunPaths,
    Step,
    StepFailure,
    StepHook,
    UnplugOutcome,
)
from fleetboot.vm.specs import CreateSpec, DiskSpec, NicSpec, SpecError, check_name

DISK_BOOTINDEX = 2  # after the boot NIC (bootindex 1): PXE first, then the disk


class NotFoundError(VmError, LookupError):
    pass


class BusyError(VmError):
    """Another command holds the instance's lock."""


@dataclass(frozen=True)
class VmSettings:
    """Where VM files go and how long to wait. ``run_dir`` must be short (socket paths).

    Built from the configuration's ``vm:`` section by :func:`vm_settings`.
    """

    run_dir: Path
    image_dir: Path
    qemu: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    unplug_timeout: float = 10.0
    migrate_timeout: float = 120.0
    start_timeout: float = 60.0
    enumerate_timeout: float = 20.0
    firmware: Firmware = Firmware.BIOS  # for new VMs that do not name one
    ovmf_code: Path = OVMF_CODE
    ovmf_vars: Path = OVMF_VARS  # the template each UEFI VM's own store is copied from

    @classmethod
    def under(cls, state_dir: str | Path, **kwargs: Any) -> VmSettings:
        base = Path(state_dir)
        return cls(run_dir=base / "vm-run", image_dir=base / "vm-images", **kwargs)


# ---------------------------------------------------------------------------
# Snapshots: plain values read inside one transaction
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NicInfo:
    device: str
    model: str
    mac: str
    backend: NicBackend
    target: str | None
    is_boot: bool
    rom: str | None


@dataclass(frozen=True)
class DiskInfo:
    device: str
    path: str
    size_bytes: int
    format: str
    bus: DiskBus
    boot: bool
    created_image: bool


@dataclass(frozen=True)
class DeviceInfo:
    device: str
    kind: DeviceKind
    props: dict[str, Any]


@dataclass(frozen=True)
class InstanceView:
    id: int
    name: str
    uuid: str
    family: planner.Family
    machine_type: str
    accel: str
    firmware: Firmware
    uefi_vars: str | None  # a UEFI VM's own OVMF variable store
    vcpus: int
    memory_mib: int
    status: VmStatus
    pid: int | None
    qmp_socket: str | None
    netns: str | None
    generation: int
    extra_args: tuple[str, ...]
    layout: Layout
    nics: tuple[NicInfo, ...]
    disks: tuple[DiskInfo, ...]
    devices: tuple[DeviceInfo, ...]
    last_error: str | None
    migration_target: dict[str, Any] | None
    host: str | None = None  # the VM host it runs on; none: this machine
    drift: DriftReport | None = None

    @property
    def process(self) -> QemuProcess | None:
        if self.pid is None or self.qmp_socket is None:
            return None
        return QemuProcess(self.pid, self.qmp_socket)

    def nic(self, device: str) -> NicInfo | None:
        return next((n for n in self.nics if n.device == device), None)

    def disk(self, device: str) -> DiskInfo | None:
        return next((d for d in self.disks if d.device == device), None)


def _view(inst: Instance) -> InstanceView:
    return InstanceView(
        id=inst.id, name=inst.name, uuid=inst.uuid, family=planner.Family(inst.family),
        machine_type=inst.machine_type, accel=inst.accel,
        firmware=Firmware(inst.firmware or Firmware.BIOS.value), uefi_vars=inst.uefi_vars,
        vcpus=inst.vcpus,
        memory_mib=inst.memory_mib, status=VmStatus(inst.status), pid=inst.pid,
        qmp_socket=inst.qmp_socket, netns=inst.netns, generation=inst.generation,
        extra_args=tuple(inst.extra_args or ()), layout=planner.from_dict(inst.layout),
        nics=tuple(NicInfo(n.device_id, n.model, n.mac, NicBackend(n.backend), n.backend_target,
                           n.is_boot, n.rom) for n in inst.nics),
        disks=tuple(DiskInfo(d.device_id, d.path, d.size_bytes, d.format, DiskBus(d.bus),
                             d.boot, d.created_image) for d in inst.disks),
        devices=tuple(DeviceInfo(d.device_id, DeviceKind(d.kind), dict(d.props or {}))
                      for d in inst.devices),
        last_error=inst.last_error, migration_target=inst.migration_target, host=inst.host,
    )


@dataclass(frozen=True)
class HostInfo:
    """A VM host (see :class:`fleetboot.vm.models.VmHost`)."""

    name: str
    address: str
    netns: str | None
    run_dir: Path
    image_dir: Path


@dataclass(frozen=True)
class HotplugResult:
    device: str
    address: str
    latency_s: float | None  # device_add sent -> visible on the PCI bus
    slot_map: str
    hotplugged: bool  # False: the VM was stopped, the device waits for the next start


@dataclass(frozen=True)
class UnplugResult:
    device: str
    outcome: str
    slot_map: str


@dataclass(frozen=True)
class MigrateResult:
    uri: str
    seconds: float
    pid: int
    drift: DriftReport
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------


class VmService:
    def __init__(self, db: Database, settings: VmSettings) -> None:
        self.db = db
        self.settings = settings
        self._catalog: DriverCatalog | None = None

    # -- database helpers --------------------------------------------------

    @staticmethod
    def _get(session: Session, name: str) -> Instance:
        inst = session.scalars(
            select(Instance).where(Instance.name == name).options(
                selectinload(Instance.nics), selectinload(Instance.disks),
                selectinload(Instance.devices))
        ).one_or_none()
        if inst is None:
            raise NotFoundError(f"no VM named {name!r}; see fleetboot vm list")
        return inst

    def read(self, name: str) -> InstanceView:
        with self.db.session() as s:
            return _view(self._get(s, name))

    def list_instances(self) -> list[InstanceView]:
        with self.db.session() as s:
            rows = s.scalars(select(Instance).order_by(Instance.name).options(
                selectinload(Instance.nics), selectinload(Instance.disks),
                selectinload(Instance.devices))).all()
            return [_view(i) for i in rows]

    def _save_layout(self, name: str, layout: Layout) -> None:
        with self.db.session() as s:
            self._get(s, name).layout = planner.to_dict(layout)

    def _drop(self, name: str, devices: Iterable[str]) -> None:
        """Release the devices' slots and delete their rows (QEMU no longer has them).

        An image Fleetboot created for a dropped disk goes with it: nothing else
        refers to it, and it would block the next disk that gets the same id.
        """
        gone = set(devices)
        if not gone:
            return
        with self.db.session() as s:
            inst = self._get(s, name)
            layout = planner.from_dict(inst.layout)
            # SCSI disks before their controller.
            for device in sorted(gone, key=lambda d: d == planner.SCSI_CONTROLLER_ID):
                if layout.find(device) is not None:
                    layout = planner.remove(layout, device)
            inst.layout = planner.to_dict(layout)
            inst.nics = [n for n in inst.nics if n.device_id not in gone]
            created = [d.path for d in inst.disks if d.device_id in gone and d.created_image]
            inst.disks = [d for d in inst.disks if d.device_id not in gone]
            inst.devices = [d for d in inst.devices if d.device_id not in gone]
        _unlink(created)

    def _set_states(self, name: str, devices: Iterable[str], state: State) -> None:
        with self.db.session() as s:
            inst = self._get(s, name)
            layout = planner.from_dict(inst.layout)
            for device in devices:
                layout = planner.set_state(layout, device, state)
            inst.layout = planner.to_dict(layout)

    def _mark_stopped(self, name: str, error: str | None) -> None:
        with self.db.session() as s:
            inst = self._get(s, name)
            inst.status = VmStatus.STOPPED.value
            inst.pid = None
            inst.qmp_socket = None
            inst.migration_target = None
            inst.last_error = error

    # -- locking -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, name: str, timeout: float = 300.0) -> AsyncIterator[None]:
        """One operation per instance at a time, across processes (an flock).

        ``timeout=0`` tries once and raises :class:`BusyError` if another holds it.
        """
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.run_dir / f".lock-{name}"
        with open(path, "a+") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise BusyError(f"another fleetboot command is working on {name}; "
                                        "try again when it has finished") from None
                    await asyncio.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- QEMU facts ----------------------------------------------------------

    async def catalog(self) -> DriverCatalog:
        if self._catalog is None:
            self._catalog = parse_device_help(await runtime.device_help(self.settings.qemu))
        return self._catalog

    async def pin_machine_type(self, family: planner.Family, requested: str | None) -> str:
        types = await runtime.machine_types(self.settings.qemu)
        wanted = requested or family.value
        if wanted not in types:
            raise SpecError(f"machine type {wanted!r} is not supported by {self.settings.qemu}; "
                            "see qemu-system-x86_64 -machine help")
        pinned = types[wanted]
        prefix = "pc-q35-" if family is planner.Family.Q35 else "pc-i440fx-"
        if not pinned.startswith(prefix):
            raise SpecError(f"machine type {pinned} is not of the {family} family")
        return pinned

    # -- definitions -----------------------------------------------------------

    def _nic_def(self, view: InstanceView, nic: NicInfo, generation: int) -> NicDef:
        if nic.backend is NicBackend.USER:
            return NicDef(nic.device, nic.model, nic.mac, "user")
        ifname = nic.target if nic.backend is NicBackend.TAP else tap_name(
            view.id, nic.device, generation)
        return NicDef(nic.device, nic.model, nic.mac, "tap", ifname)

    def _uefi_def(self, view: InstanceView) -> UefiDef | None:
        if view.firmware is Firmware.BIOS:
            return None
        if not view.uefi_vars:
            raise FirmwareError(f"{view.name} is a UEFI VM without a variable store; "
                                "delete and re-create it")
        return UefiDef(str(self.settings.ovmf_code), view.uefi_vars)

    def _check_firmware_files(self, name: str, uefi: UefiDef | None) -> None:
        """Before QEMU runs: OVMF installed, and the VM's variable store still there."""
        if uefi is None:
            return
        require_ovmf(Path(uefi.code))
        if not Path(uefi.vars).is_file():
            raise FirmwareError(
                f"the UEFI variable store {uefi.vars} of {name} is missing; copy "
                f"{self.settings.ovmf_vars} there to start with empty boot entries")

    async def definition(self, view: InstanceView, generation: int) -> MachineDef:
        """What QEMU runs; the same for a start and a migration destination (firmware too)."""
        extras = parse_extra_args(view.extra_args, view.family, await self.catalog())
        return MachineDef(
            name=view.name, uuid=view.uuid, machine_type=view.machine_type, layout=view.layout,
            accel=view.accel, vcpus=view.vcpus, memory_mib=view.memory_mib,
            nics=tuple(self._nic_def(view, n, generation) for n in view.nics),
            disks=tuple(DiskDef(d.device, d.path, d.format) for d in view.disks),
            devices=tuple(DeviceDef(d.device, d.kind.value, d.props) for d in view.devices),
            extras=extras, uefi=self._uefi_def(view),
        )

    def _paths(self, view: InstanceView, generation: int) -> RunPaths:
        # The uuid keeps the path short and unique; the generation separates a
        # migration destination from its source.
        run_dir = self.host(view.host).run_dir if view.host else self.settings.run_dir
        return RunPaths(run_dir, f"{view.uuid[:8]}-{generation}")

    # -- hosts -------------------------------------------------------------------

    def add_host(self, name: str, address: str, *, netns: str | None = None,
                 run_dir: str | Path, image_dir: str | Path) -> HostInfo:
        check_name(name)
        with self.db.session() as s:
            if s.scalar(select(VmHost).where(VmHost.name == name)) is not None:
                raise VmError(f"a VM host named {name!r} exists already; see fleetboot vm "
                              "host list")
            s.add(VmHost(name=name, address=address, netns=netns, run_dir=str(run_dir),
                         image_dir=str(image_dir)))
        return self.host(name)

    def host(self, name: str) -> HostInfo:
        with self.db.session() as s:
            row = s.scalar(select(VmHost).where(VmHost.name == name))
            if row is None:
                raise NotFoundError(f"no VM host named {name!r}; add it with fleetboot vm "
                                    "host add")
            return HostInfo(row.name, row.address, row.netns, Path(row.run_dir),
                            Path(row.image_dir))

    def list_hosts(self) -> list[HostInfo]:
        with self.db.session() as s:
            names = list(s.scalars(select(VmHost.name).order_by(VmHost.name)))
        return [self.host(n) for n in names]

    async def argv(self, name: str, *, paused: bool = False) -> list[str]:
        """The command line ``start`` would run now (for show --argv and tests)."""
        view = self.read(name)
        generation = view.generation + 1
        paths = self._paths(view, generation)
        machine = await self.definition(view, generation)
        return qemu_argv(machine, RunFiles(paths.qmp_socket, paths.pidfile),
                         qemu=self.settings.qemu, paused=paused)

    # -- create / delete -----------------------------------------------------

    async def create(self, spec: CreateSpec) -> InstanceView:
        firmware = spec.firmware or self.settings.firmware
        check_memory(firmware, spec.memory_mib)
        if firmware is Firmware.UEFI:
            require_ovmf(self.settings.ovmf_code, self.settings.ovmf_vars)
        machine_type = await self.pin_machine_type(spec.family, spec.machine_type)
        catalog = await self.catalog()
        extras = parse_extra_args(spec.extra_args, spec.family, catalog)
        await _check_nics(spec.nics, catalog, spec.netns)
        with self.db.session() as s:
            if s.scalars(select(Instance.id).where(Instance.name == spec.name)).first():
                raise SpecError(f"a VM named {spec.name!r} exists already")
        plan = _initial_plan(spec, extras)
        images = _image_paths(spec, self.settings.image_dir)
        for disk, path in zip(spec.disks, images, strict=True):
            _check_default_image(disk, path)
        made = await self._make_images(spec.disks, images)
        uuid = str(uuidlib.uuid4())
        store: str | None = None
        try:
            if firmware is Firmware.UEFI:
                vars_file = vars_path(self.settings.image_dir, spec.name, uuid)
                copy_vars(self.settings.ovmf_vars, vars_file)
                store = str(vars_file)
                made.append(store)
            with self.db.session() as s:
                inst = Instance(
                    name=spec.name, uuid=uuid, family=spec.family.value,
                    machine_type=machine_type, accel=spec.accel, firmware=firmware.value,
                    uefi_vars=store, vcpus=spec.vcpus,
                    memory_mib=spec.memory_mib, extra_args=list(spec.extra_args),
                    layout=planner.to_dict(plan.layout), status=VmStatus.STOPPED.value,
                    netns=spec.netns,
                )
                s.add(inst)
                used = _used_macs(s)
                for device, nic in zip(plan.nic_ids, spec.nics, strict=True):
                    inst.nics.append(_nic_row(device, nic, used))
                for device, disk, path in zip(plan.disk_ids, spec.disks, images, strict=True):
                    inst.disks.append(_disk_row(device, disk, path, path in made))
                inst.devices.extend(DeviceRow(device_id=d, kind=k.value, props=p)
                                    for d, k, p in plan.other)
        except Exception:
            for path in made:
                Path(path).unlink(missing_ok=True)
            raise
        return self.read(spec.name)

    async def _make_images(self, disks: Sequence[DiskSpec], paths: Sequence[str]) -> list[str]:
        made: list[str] = []
        try:
            for disk, path in zip(disks, paths, strict=True):
                if await self._prepare_image(disk, path):
                    made.append(path)
        except Exception:
            for path in made:
                Path(path).unlink(missing_ok=True)
            raise
        return made

    async def _prepare_image(self, disk: DiskSpec, path: str) -> bool:
        """Create a qcow2 image, or check the existing one; True if created."""
        if Path(path).exists():
            info = json.loads(await runtime.qemu_img_info(path, self.settings.qemu_img))
            if info.get("format") != "qcow2":
                raise SpecError(f"{path} is a {info.get('format')} image; Fleetboot uses qcow2")
            return False
        if disk.size is None:
            raise SpecError(f"disk image {path} does not exist; give size= to create it")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        await runtime.qemu_img_create(path, disk.size, self.settings.qemu_img)
        return True

    async def delete(self, name: str, *, images: bool = False) -> None:
        async with self._locked(name):
            view = await self.sync(name)
            if view.status is not VmStatus.STOPPED:
                raise VmError(f"{name} is {view.status}; stop it first")
            with self.db.session() as s:
                s.delete(self._get(s, name))
            if view.uefi_vars:  # the VM's own firmware state: gone with the VM
                Path(view.uefi_vars).unlink(missing_ok=True)
            if images:
                for disk in view.disks:
                    if disk.created_image:
                        Path(disk.path).unlink(missing_ok=True)

    # -- reconcile -----------------------------------------------------------

    async def sync(self, name: str) -> InstanceView:
        """Bring the stored state in line with the real QEMU process."""
        view = self.read(name)
        if view.status is VmStatus.MIGRATING:
            await self._recover_migration(view)
            view = self.read(name)
        if view.status is not VmStatus.RUNNING:
            return view
        process = view.process
        if process is None or not process.alive():
            await self._crashed(view, f"QEMU (pid {view.pid}) exited unexpectedly")
            return self.read(name)
        pending = [p for p in view.layout.placements if p.state is not State.ACTIVE]
        if pending:
            try:
                async with runtime.connected(process) as qmp:
                    await self._resolve_pending(view, qmp, pending)
            except QemuGoneError:
                await self._crashed(view, f"QEMU (pid {view.pid}) went away")
        return self.read(name)

    async def _resolve_pending(self, view: InstanceView, qmp: Qmp,
                               pending: Sequence[planner.Placement]) -> None:
        adopt, drop = [], []
        for p in pending:
            exists = await runtime.device_exists(qmp, p.device)
            if p.state is State.PLUGGING and exists:
                adopt.append(p.device)  # the plug went through before we could record it
            elif not exists:
                await self._del_backend(qmp, view, p.device)
                drop.append(p.device)
        self._set_states(view.name, adopt, State.ACTIVE)
        self._drop(view.name, drop)
        await self._delete_taps(view, drop, view.generation)

    async def _crashed(self, view: InstanceView, reason: str) -> None:
        """QEMU is gone: the instance is stopped; pending plugs and unplugs are void/done."""
        view = self.read(view.name)  # the caller's view may predate a plug/unplug intent
        pending = [p.device for p in view.layout.placements if p.state is not State.ACTIVE]
        await self._delete_taps(view, None, view.generation)
        self._drop(view.name, pending)
        self._mark_stopped(view.name, reason)
        self._paths(view, view.generation).remove()

    async def _sync_alive(self, name: str, action: str) -> InstanceView:
        """:meth:`sync`, refusing to go on if it found that QEMU had died meanwhile.

        Otherwise a hotplug meant for the running guest would quietly become an edit
        of the stopped VM's definition.
        """
        was = self.read(name).status
        view = await self.sync(name)
        if was is VmStatus.RUNNING and view.status is VmStatus.STOPPED:
            raise QemuGoneError(
                f"cannot {action}: QEMU of {name} had exited ({view.last_error}); {name} is "
                "now marked stopped and nothing was changed. Start it again, or repeat the "
                "command to change the stopped VM's definition")
        return view

    async def _finalize_pending(self, view: InstanceView) -> InstanceView:
        """Before a fresh start: an unfinished plug did not happen, an unfinished unplug did."""
        pending = [p.device for p in view.layout.placements if p.state is not State.ACTIVE]
        self._drop(view.name, pending)
        return self.read(view.name)

    async def _del_backend(self, qmp: Qmp, view: InstanceView, device: str) -> None:
        if view.nic(device) is not None:
            await runtime.del_backend(qmp, "netdev_del", {"id": f"hn-{device}"})
        elif view.disk(device) is not None:
            await runtime.del_backend(qmp, "blockdev-del", {"node-name": f"drive-{device}"})

    # -- taps ----------------------------------------------------------------

    async def _make_taps(self, view: InstanceView, generation: int, netns: str | None,
                         devices: Iterable[str] | None = None) -> list[str]:
        wanted = None if devices is None else set(devices)
        made: list[str] = []
        try:
            for nic in view.nics:
                if nic.backend is not NicBackend.BRIDGE or (wanted is not None
                                                            and nic.device not in wanted):
                    continue
                name = tap_name(view.id, nic.device, generation)
                await create_tap(name, str(nic.target), netns)
                made.append(name)
        except Exception:
            for name in made:
                await delete_tap(name, netns)
            raise
        return made

    async def _delete_taps(self, view: InstanceView, devices: Iterable[str] | None,
                           generation: int) -> None:
        wanted = None if devices is None else set(devices)
        for nic in view.nics:
            if nic.backend is NicBackend.BRIDGE and (wanted is None or nic.device in wanted):
                await delete_tap(tap_name(view.id, nic.device, generation), view.netns)

    # -- start / stop --------------------------------------------------------

    async def start(self, name: str, *, paused: bool = False,
                    netns: str | None = None) -> InstanceView:
        async with self._locked(name):
            view = await self.sync(name)
            if view.status is VmStatus.RUNNING:
                raise VmError(f"{name} is already running (pid {view.pid})")
            view = await self._finalize_pending(view)
            await self.pin_machine_type(view.family, view.machine_type)
            if netns is not None:
                view = replace(view, netns=netns)
            generation = view.generation + 1
            process = await self._launch(view, generation, paused=paused)
            with self.db.session() as s:
                inst = self._get(s, name)
                inst.status = VmStatus.RUNNING.value
                inst.pid, inst.qmp_socket = process.pid, process.qmp_socket
                inst.generation, inst.netns, inst.last_error = generation, view.netns, None
        return await self.show(name)

    async def _launch(self, view: InstanceView, generation: int, *, paused: bool = False,
                      incoming: str | None = None) -> QemuProcess:
        """Start one QEMU process for ``view`` and check its buses against the layout."""
        paths = self._paths(view, generation)
        machine = await self.definition(view, generation)
        self._check_firmware_files(view.name, machine.uefi)
        argv = qemu_argv(machine, RunFiles(paths.qmp_socket, paths.pidfile),
                         qemu=self.settings.qemu, paused=paused, incoming=incoming)
        taps = await self._make_taps(view, generation, view.netns)
        try:
            process = await runtime.launch(argv, paths, view.netns, self.settings.start_timeout)
        except Exception:
            for tap in taps:
                await delete_tap(tap, view.netns)
            raise
        if incoming is not None:
            return process  # checked after the migration, when the state has arrived
        try:
            report = await self._check_started(process, view.layout, paused)
            if not report.ok:
                raise DriftError(f"QEMU's PCI buses differ from the layout ({report}); "
                                 "the VM was stopped again")
        except Exception:
            await runtime.quit_qemu(process)
            for tap in taps:
                await delete_tap(tap, view.netns)
            raise
        return process

    async def _check_started(self, process: QemuProcess, layout: Layout,
                             paused: bool) -> DriftReport:
        async with runtime.connected(process) as qmp:
            if layout.root_ports and not paused:
                await runtime.wait_enumerated(qmp, layout, self.settings.enumerate_timeout)
            return compare(layout, await runtime.observe(qmp, layout))

    async def stop(self, name: str) -> InstanceView:
        async with self._locked(name):
            view = await self.sync(name)
            process = view.process
            if view.status is VmStatus.RUNNING and process is not None:
                await runtime.quit_qemu(process)
                await self._delete_taps(view, None, view.generation)
                self._mark_stopped(name, None)
                self._paths(view, view.generation).remove()
                await self._finalize_pending(self.read(name))
        return self.read(name)

    async def show(self, name: str, *, drift: bool = True) -> InstanceView:
        """The instance, reconciled with QEMU, with a drift report if it runs.

        While another command works on the instance this only reads (no
        reconciling, no drift: a half-done hotplug is not drift).
        """
        try:
            async with self._locked(name, timeout=0):
                view = await self.sync(name)
                process = view.process
                if not drift or view.status is not VmStatus.RUNNING or process is None:
                    return view
                try:
                    async with runtime.connected(process) as qmp:
                        report = compare(view.layout, await runtime.observe(qmp, view.layout))
                except QemuGoneError:
                    return await self.sync(name)
                return replace(view, drift=report)
        except BusyError:
            return self.read(name)

    async def drift(self, name: str) -> DriftReport:
        view = await self.show(name)
        if view.drift is None:
            raise VmError(f"{name} is {view.status}; drift is checked on a running VM")
        return view.drift

    # -- hotplug -------------------------------------------------------------

    async def hotplug_nic(self, name: str, spec: NicSpec,
                          after_step: StepHook | None = None) -> HotplugResult:
        async with self._locked(name):
            view = await self._sync_alive(name, "hot-plug a NIC")
            running = view.status is VmStatus.RUNNING
            if spec.boot and running:
                raise VmError("designate the boot NIC while the VM is stopped: its option ROM "
                              "is part of the guest ABI, and a change breaks migration")
            device = self._plan_nic(view, spec, State.PLUGGING if running else State.ACTIVE)
            view = self.read(name)
            if not running:
                return self._cold_result(view, device)
            return await self._plug(view, [device], after_step)

    async def hotplug_disk(self, name: str, spec: DiskSpec,
                           after_step: StepHook | None = None) -> HotplugResult:
        async with self._locked(name):
            view = await self._sync_alive(name, "hot-plug a disk")
            running = view.status is VmStatus.RUNNING
            if spec.boot and running:
                raise VmError("mark a boot disk while the VM is stopped (boot order is ABI)")
            devices, path = self._plan_disk(view, spec, State.PLUGGING if running else State.ACTIVE)
            try:
                _check_default_image(spec, path)
                created = await self._prepare_image(spec, path)
            except Exception:
                self._drop(name, devices)
                raise
            if created:
                with self.db.session() as s:
                    row = next(d for d in self._get(s, name).disks if d.device_id == devices[-1])
                    row.created_image = True
            view = self.read(name)
            if not running:
                return self._cold_result(view, devices[-1])
            return await self._plug(view, devices, after_step)

    def _cold_result(self, view: InstanceView, device: str) -> HotplugResult:
        addr = view.layout.address_of(device)
        return HotplugResult(device, str(addr) if addr else "scsi",
                             None, planner.render(view.layout, [device]), False)

    def _plan_nic(self, view: InstanceView, spec: NicSpec, state: State) -> str:
        with self.db.session() as s:
            inst = self._get(s, view.name)
            layout = planner.from_dict(inst.layout)
            device = _next_id(layout, "net")
            bootindex, romfile = planner.nic_boot_attrs(spec.boot, spec.rom)
            if spec.boot:
                layout = _clear_boot_nic(inst, layout)
            layout = planner.add(layout, DeviceRequest(device, Kind.NIC, state=state,
                                                       bootindex=bootindex, romfile=romfile))
            inst.nics.append(_nic_row(device, spec, _used_macs(s)))
            inst.layout = planner.to_dict(layout)
        return device

    def _plan_disk(self, view: InstanceView, spec: DiskSpec,
                   state: State) -> tuple[list[str], str]:
        with self.db.session() as s:
            inst = self._get(s, view.name)
            layout = planner.from_dict(inst.layout)
            device = _next_id(layout, "disk")
            kind = Kind.SCSI_DISK if spec.bus is DiskBus.VIRTIO_SCSI else Kind.DISK
            before = {p.device for p in layout.placements}
            if spec.boot:
                layout = _clear_boot_disk(inst, layout)
            layout = planner.add(layout, DeviceRequest(
                device, kind, state=state, bootindex=DISK_BOOTINDEX if spec.boot else None))
            path = spec.path or str(self.settings.image_dir / f"{view.name}-{device}.qcow2")
            inst.disks.append(_disk_row(device, spec, path, False))
            inst.layout = planner.to_dict(layout)
            added = [p.device for p in layout.placements if p.device not in before]
        return added, path

    async def _plug(self, view: InstanceView, devices: list[str],
                    after_step: StepHook | None) -> HotplugResult:
        """Hot-plug the planned ``devices`` (in order); roll everything back on failure."""
        process = view.process
        assert process is not None
        device = devices[-1]
        clock: dict[str, float] = {}
        try:
            await self._make_taps(view, view.generation, view.netns, devices)
            async with runtime.connected(process) as qmp:
                steps = self._plug_steps(view, qmp, devices, clock)
                await runtime.run_steps(steps, after_step)
        except (StepFailure, QemuError) as failure:
            raise await self._rollback_plug(view, devices, failure) from None
        self._set_states(view.name, devices, State.ACTIVE)
        latency = clock["visible"] - clock["sent"] if "visible" in clock else None
        fresh = self.read(view.name)
        addr = fresh.layout.address_of(device)
        return HotplugResult(device, str(addr) if addr else "scsi", latency,
                             planner.render(fresh.layout, devices), True)

    def _plug_steps(self, view: InstanceView, qmp: Qmp, devices: Sequence[str],
                    clock: dict[str, float]) -> list[Step]:
        """netdev/blockdev, device_add and a check per device; the last one is timed."""
        steps: list[Step] = []
        for device in devices:
            add, verify = self._device_steps(view, qmp, device)
            if device == devices[-1]:
                add[-1] = _timed(add[-1], clock, "sent")
                verify = _timed(verify, clock, "visible")
            steps += [*add, verify]
        return steps

    def _device_steps(self, view: InstanceView, qmp: Qmp, device: str) -> tuple[list[Step], Step]:
        layout, timeout = view.layout, self.settings.unplug_timeout
        nic, disk = view.nic(device), view.disk(device)
        if nic is not None:
            nic_def = self._nic_def(view, nic, view.generation)
            add = [runtime.netdev_step(qmp, netdev_props(nic_def), device),
                   runtime.device_step(qmp, nic_device_props(layout, nic_def), timeout)]
        elif disk is not None:
            disk_def = DiskDef(disk.device, disk.path, disk.format)
            add = [runtime.blockdev_step(qmp, blockdev_props(disk_def), device),
                   runtime.device_step(qmp, disk_device_props(layout, disk_def), timeout)]
        elif device == planner.SCSI_CONTROLLER_ID:
            add = [runtime.device_step(qmp, controller_props(layout), timeout)]
        else:
            raise VmError(f"{device} cannot be hot-plugged; stop the VM to add it")
        if layout.address_of(device) is not None:
            return add, runtime.verify_step(qmp, layout, device)
        return add, _exists_step(qmp, device)

    async def _rollback_plug(self, view: InstanceView, devices: Sequence[str],
                             failure: Exception) -> VmError:
        """Undo the intent of a failed plug; the error to raise says what happened."""
        process = view.process
        if process is None or not process.alive() or _gone(failure):
            await self._crashed(view, f"QEMU exited while hot-plugging {', '.join(devices)}")
            return QemuGoneError(
                f"QEMU went away while hot-plugging {', '.join(devices)} ({failure}); "
                f"{view.name} is marked stopped and the device was not added"
            )
        stuck = [d for d in devices
                 if isinstance(failure, StepFailure) and f"device_add {d}" in failure.stuck]
        self._set_states(view.name, stuck, State.UNPLUGGING)
        self._drop(view.name, [d for d in devices if d not in stuck])
        await self._delete_taps(view, [d for d in devices if d not in stuck], view.generation)
        note = (f"; the guest has not released {', '.join(stuck)} yet, so its slot stays held "
                "until QEMU reports it gone") if stuck else ""
        return VmError(f"hotplug into {view.name} failed and was rolled back: {failure}{note}")

    # -- unplug --------------------------------------------------------------

    async def unplug(self, name: str, device: str, timeout: float | None = None) -> UnplugResult:
        async with self._locked(name):
            view = await self._sync_alive(name, f"unplug {device}")
            placement = view.layout.get(device)
            if placement.kind is Kind.SCSI_CONTROLLER:
                planner.remove(view.layout, device)  # raises while disks remain
            if view.status is not VmStatus.RUNNING:
                self._drop(name, [device])
                return UnplugResult(device, "removed", planner.render(self.read(name).layout))
            if not hotpluggable(view.layout, device):
                raise VmError(f"{device} sits on q35's root bus, which has no hotplug; "
                              "stop the VM to remove it")
            self._set_states(name, [device], State.UNPLUGGING)
            wait = self.settings.unplug_timeout if timeout is None else timeout
            outcome = await self._unplug_running(view, device, wait)
            return UnplugResult(device, outcome.value, planner.render(self.read(name).layout))

    async def _unplug_running(self, view: InstanceView, device: str,
                              timeout: float) -> UnplugOutcome:
        process = view.process
        assert process is not None
        try:
            async with runtime.connected(process) as qmp:
                outcome = await runtime.unplug(qmp, device, timeout)
                if outcome is UnplugOutcome.DELETED:
                    await self._del_backend(qmp, view, device)
        except QemuGoneError:
            await self._crashed(view, f"QEMU exited while unplugging {device}")
            raise QemuGoneError(
                f"QEMU exited while unplugging {device}: {view.name} is marked stopped, and "
                f"{device} is no longer in its definition") from None
        if outcome is UnplugOutcome.DELETED:
            self._drop(view.name, [device])
            await self._delete_taps(view, [device], view.generation)
            return outcome
        slot = view.layout.address_of(device)
        why = ("the guest refused it (DEVICE_UNPLUG_GUEST_ERROR)"
               if outcome is UnplugOutcome.GUEST_ERROR
               else f"the guest did not acknowledge the unplug within {timeout:g} s")
        raise UnplugPendingError(
            f"{device} is still in {view.name}: {why}. Its slot {slot} stays held; it is freed "
            "when QEMU reports the device gone (every fleetboot vm command checks) or at the "
            "next start"
        )

    # -- migration -------------------------------------------------------------

    async def migrate(self, name: str, transport: str = "unix", *, to: str | None = None,
                      copy_storage: bool = True) -> MigrateResult:
        """Live-migrate to a new QEMU process, started from the stored layout: on the
        VM's own host, or (``to``) on another VM host, its disks copied there or (not
        ``copy_storage``) on storage both hosts see."""
        if to is not None:
            return await self._migrate_to_host(name, self.host(to), copy_storage)
        if transport not in ("unix", "tcp"):
            raise VmError(f"transport {transport!r}: use unix or tcp")
        async with self._locked(name):
            view = await self.sync(name)
            source = view.process
            if view.status is not VmStatus.RUNNING or source is None:
                raise VmError(f"{name} is {view.status}; only a running VM migrates")
            fixed = [n.device for n in view.nics if n.backend is NicBackend.TAP]
            if fixed:
                raise VmError(f"{', '.join(fixed)} use a fixed tap, which two QEMU processes "
                              "cannot open at once; use backend=bridge:NAME for VMs that migrate")
            generation = view.generation + 1
            paths = self._paths(view, generation)
            uri = (f"unix:{paths.migration_socket}" if transport == "unix"
                   else "tcp:127.0.0.1:0")
            started = time.monotonic()
            target = await self._launch(view, generation, incoming=uri)
            self._set_migrating(name, target)
            try:
                stats, report = await self._run_migration(view, source, target, uri)
            except Exception as exc:
                if await self._abort_migration(view, target, generation):
                    raise VmError(f"migration of {name} failed and was rolled back: {exc}; "
                                  "it runs on as before") from None
                raise QemuGoneError(
                    f"migration of {name} failed: {exc}; its source QEMU had exited, so there "
                    f"was nothing to roll back to: {name} is marked stopped") from None
            await runtime.quit_qemu(source)
            await self._delete_taps(view, None, view.generation)
            self._paths(view, view.generation).remove()
            Path(paths.migration_socket).unlink(missing_ok=True)
            with self.db.session() as s:
                inst = self._get(s, name)
                inst.status = VmStatus.RUNNING.value
                inst.pid, inst.qmp_socket = target.pid, target.qmp_socket
                inst.generation, inst.migration_target = generation, None
        return MigrateResult(stats.get("uri", uri), time.monotonic() - started, target.pid,
                             report, stats)

    async def _migrate_to_host(self, name: str, host: HostInfo,
                               copy_storage: bool) -> MigrateResult:
        async with self._locked(name):
            view = await self.sync(name)
            source = view.process
            if view.status is not VmStatus.RUNNING or source is None:
                raise VmError(f"{name} is {view.status}; only a running VM migrates")
            if view.host == host.name:
                raise VmError(f"{name} runs on {host.name} already")
            _check_movable(view, copy_storage)
            generation = view.generation + 1
            moved = {d.device: str(host.image_dir / Path(d.path).name) for d in view.disks
                     } if copy_storage else {}
            target_view = replace(
                view, host=host.name, netns=host.netns,
                disks=tuple(replace(d, path=moved.get(d.device, d.path)) for d in view.disks))
            started = time.monotonic()
            await self._make_target_images(view, moved)
            try:
                target = await self._launch(target_view, generation,
                                            incoming=f"tcp:{host.address}:0")
            except Exception:
                _unlink(moved.values())
                raise
            self._set_migrating(name, target, host.name, moved)
            try:
                stats, report = await self._run_host_migration(view, source, target, host,
                                                               bool(moved))
            except Exception as exc:
                await self._abort_host_migration(view, target_view, target, generation)
                _unlink(moved.values())
                raise VmError(f"migration of {name} to {host.name} failed and was rolled "
                              f"back: {exc}; it runs on as before") from None
            await self._adopt_target(view, target, generation, host.name, moved)
            await runtime.quit_qemu(source)
            await self._delete_taps(view, None, view.generation)
            self._paths(view, view.generation).remove()
            _unlink(d.path for d in view.disks if d.device in moved and d.created_image)
        return MigrateResult(stats["uri"], time.monotonic() - started, target.pid, report, stats)

    async def _make_target_images(self, view: InstanceView, moved: Mapping[str, str]) -> None:
        """Empty images of the same virtual size, for the disk copy to fill."""
        made: list[str] = []
        try:
            for disk in view.disks:
                if disk.device not in moved:
                    continue
                if Path(moved[disk.device]).exists():
                    raise VmError(f"{moved[disk.device]} exists already on the target host; "
                                  "move it away or delete it")
                info = json.loads(await runtime.qemu_img_info(disk.path, self.settings.qemu_img))
                Path(moved[disk.device]).parent.mkdir(parents=True, exist_ok=True)
                await runtime.qemu_img_create(moved[disk.device], int(info["virtual-size"]),
                                              self.settings.qemu_img)
                made.append(moved[disk.device])
        except Exception:
            _unlink(made)
            raise

    async def _run_host_migration(self, view: InstanceView, source: QemuProcess,
                                  target: QemuProcess, host: HostInfo,
                                  copy: bool) -> tuple[dict[str, Any], DriftReport]:
        nodes = [DiskDef(d.device, d.path, d.format).node_name for d in view.disks] if copy else []
        timeout = self.settings.migrate_timeout
        async with runtime.connected(target) as dst, runtime.connected(source) as src:
            uri = await runtime.incoming_uri(dst, f"tcp:{host.address}:0")
            was = str((await src.cmd("query-status"))["status"])
            if nodes:
                export = await blockcopy.export_disks(dst, host.address, nodes)
                jobs = await blockcopy.start_mirrors(src, export)
                await blockcopy.wait_ready(src, jobs, timeout)
                info = await blockcopy.migrate_with_switchover(src, uri, jobs, timeout)
                await blockcopy.drop_mirror_nodes(src, nodes)
                await blockcopy.stop_exports(dst, nodes)
                info["copied_disks"] = nodes
            else:
                info = await runtime.migrate(src, uri, timeout)
            info["destination_status"] = await runtime.wait_incoming_done(dst, 30)
            report = compare(view.layout, await runtime.observe(dst, view.layout))
            if not report.ok:
                raise DriftError(f"the destination's PCI buses differ from the layout: {report}")
            info["uri"], info["source_status"] = uri, was
            return info, report

    async def _abort_host_migration(self, view: InstanceView, target_view: InstanceView,
                                    target: QemuProcess, generation: int) -> None:
        """Kill the destination and its taps; the source drops its mirrors and runs on."""
        source = view.process
        if source is not None and source.alive():
            with contextlib.suppress(QemuError):
                async with runtime.connected(source) as src:
                    await blockcopy.abort_mirrors(
                        src, [DiskDef(d.device, d.path, d.format).node_name for d in view.disks])
        await runtime.quit_qemu(target)
        await self._delete_taps(target_view, None, generation)
        self._paths(target_view, generation).remove()
        await self._abort_migration(view, target, generation)

    async def _adopt_target(self, view: InstanceView, target: QemuProcess, generation: int,
                            host: str | None, moved: Mapping[str, str]) -> None:
        """The destination is the VM now: its process, host, namespace and disk paths."""
        netns = self.host(host).netns if host else None
        with self.db.session() as s:
            inst = self._get(s, view.name)
            inst.status = VmStatus.RUNNING.value
            inst.pid, inst.qmp_socket = target.pid, target.qmp_socket
            inst.generation, inst.migration_target = generation, None
            inst.host, inst.netns = host, netns
            for disk in inst.disks:
                disk.path = moved.get(disk.device_id, disk.path)

    def _set_migrating(self, name: str, target: QemuProcess, host: str | None = None,
                       moved: Mapping[str, str] | None = None) -> None:
        with self.db.session() as s:
            inst = self._get(s, name)
            inst.status = VmStatus.MIGRATING.value
            inst.migration_target = {"pid": target.pid, "qmp_socket": target.qmp_socket,
                                     "host": host or inst.host, "disks": dict(moved or {})}

    async def _run_migration(self, view: InstanceView, source: QemuProcess,
                             target: QemuProcess, uri: str) -> tuple[dict[str, Any], DriftReport]:
        async with runtime.connected(target) as dst, runtime.connected(source) as src:
            real_uri = await runtime.incoming_uri(dst, uri)
            was = str((await src.cmd("query-status"))["status"])
            info = await runtime.migrate(src, real_uri, self.settings.migrate_timeout)
            info["destination_status"] = await runtime.wait_incoming_done(dst, 30)
            report = compare(view.layout, await runtime.observe(dst, view.layout))
            if not report.ok:
                raise DriftError(f"the destination's PCI buses differ from the layout: {report}")
            info["uri"] = real_uri
            info["source_status"] = was
            return info, report

    async def _abort_migration(self, view: InstanceView, target: QemuProcess,
                               generation: int) -> bool:
        """Kill the destination; resume the source if the migration had stopped it.

        True if the source still runs, False if it had died too (the VM is stopped).
        """
        await runtime.quit_qemu(target)
        await self._delete_taps(view, None, generation)
        self._paths(view, generation).remove()
        source = view.process
        if source is not None and source.alive():
            with contextlib.suppress(QemuError):
                async with runtime.connected(source) as src:
                    if (await src.cmd("query-status"))["status"] == "postmigrate":
                        await src.cmd("cont")
            with self.db.session() as s:
                inst = self._get(s, view.name)
                inst.status, inst.migration_target = VmStatus.RUNNING.value, None
            return True
        await self._crashed(view, "QEMU exited during a migration")
        return False

    async def _recover_migration(self, view: InstanceView) -> None:
        """A migration was interrupted (this process died): keep whichever side runs."""
        target_info = view.migration_target or {}
        target = (QemuProcess(int(target_info["pid"]), str(target_info["qmp_socket"]))
                  if target_info else None)
        source = view.process
        dst_running = False
        if target is not None and target.alive():
            with contextlib.suppress(QemuError):
                async with runtime.connected(target) as dst:
                    # Anything but "inmigrate": the state arrived, the destination owns the VM.
                    dst_running = (await dst.cmd("query-status"))["status"] != "inmigrate"
        if dst_running and target is not None:
            # The state has arrived: the destination is the VM now; the source is a
            # stale copy that must never run again.
            if source is not None:
                await runtime.quit_qemu(source)
            await self._delete_taps(view, None, view.generation)
            await self._adopt_target(view, target, view.generation + 1,
                                     target_info.get("host", view.host),
                                     target_info.get("disks") or {})
            return
        if target is not None:
            _unlink((target_info.get("disks") or {}).values())
            await self._abort_migration(view, target, view.generation + 1)
        else:
            self._mark_stopped(view.name, "a migration was interrupted")

    # -- passthrough (the passthrough concern calls this) ------------------------

    async def require_stopped(self, name: str, action: str) -> InstanceView:
        """The VM's view, or a :class:`VmError` saying to stop it before ``action``."""
        view = await self.sync(name)
        if view.status is not VmStatus.STOPPED:
            raise VmError(f"{name} is {view.status}: stop it before {action} "
                          f"(fleetboot vm stop {name})")
        return view

    async def add_passthrough(self, name: str, host: str, device: str | None = None) -> str:
        """Give the stopped VM a vfio-pci function in the passthrough pool; its id."""
        async with self._locked(name):
            await self.require_stopped(name, "attaching a passthrough device")
            with self.db.session() as s:
                inst = self._get(s, name)
                layout = planner.from_dict(inst.layout)
                device = device or _next_id(layout, "hostdev")
                layout = planner.add(layout, DeviceRequest(device, Kind.PASSTHROUGH))
                inst.devices.append(DeviceRow(device_id=device, kind=DeviceKind.PASSTHROUGH.value,
                                              props={"host": host}))
                inst.layout = planner.to_dict(layout)
            return device

    async def remove_passthrough(self, name: str, devices: Iterable[str]) -> None:
        """Take vfio devices out of the stopped VM (their host devices were released)."""
        async with self._locked(name):
            await self.require_stopped(name, "releasing its passthrough devices")
            self._drop(name, devices)

    async def move_passthrough(self, name: str, hosts: Mapping[str, str]) -> None:
        """Point the stopped VM's vfio devices (id -> host address) at other host devices.

        The guest slots stay: the ids are the instance's ports, not host addresses.
        """
        async with self._locked(name):
            await self.require_stopped(name, "moving its passthrough devices")
            with self.db.session() as s:
                for row in self._get(s, name).devices:
                    if row.device_id in hosts:
                        row.props = {**(row.props or {}), "host": hosts[row.device_id]}


# ---------------------------------------------------------------------------
# Pure helpers of the service
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    layout: Layout
    nic_ids: tuple[str, ...]
    disk_ids: tuple[str, ...]
    other: tuple[tuple[str, DeviceKind, dict[str, Any]], ...]


async def _check_nics(nics: Sequence[NicSpec], catalog: DriverCatalog,
                      netns: str | None) -> None:
    """Every NIC model is a network device this QEMU has; every bridge exists."""
    for nic in nics:
        if nic.model not in catalog.network:
            close = difflib.get_close_matches(nic.model, sorted(catalog.network), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise SpecError(f"NIC model {nic.model!r} is not a network device of this QEMU; "
                            f"{hint}see qemu-system-x86_64 -device help (Network devices)")
        if nic.backend is NicBackend.BRIDGE and nic.target:
            await check_bridge(nic.target, netns)


def _initial_plan(spec: CreateSpec, extras: Any) -> _Plan:
    """The layout of a new instance: pinned extras first, so nothing takes their slots."""
    layout = planner.new_layout(spec.family, spec.pools)
    requests = extra_requests(extras)
    layout = planner.add_all(layout, [r for r in requests if r.at_slot is not None])
    other: list[tuple[str, DeviceKind, dict[str, Any]]] = []
    if spec.balloon:
        other.append(("balloon0", DeviceKind.BALLOON, {}))
        layout = planner.add(layout, DeviceRequest("balloon0", Kind.BALLOON))
    if spec.rng:
        other.append(("rng0", DeviceKind.RNG, {"source": "/dev/urandom"}))
        layout = planner.add(layout, DeviceRequest("rng0", Kind.RNG))
    layout = planner.add_all(layout, [r for r in requests if r.at_slot is None])
    nic_ids = tuple(f"net{i}" for i in range(len(spec.nics)))
    for device, nic in zip(nic_ids, spec.nics, strict=True):
        bootindex, romfile = planner.nic_boot_attrs(nic.boot, nic.rom)
        layout = planner.add(layout, DeviceRequest(device, Kind.NIC, bootindex=bootindex,
                                                   romfile=romfile))
    disk_ids = tuple(f"disk{i}" for i in range(len(spec.disks)))
    for device, disk in zip(disk_ids, spec.disks, strict=True):
        kind = Kind.SCSI_DISK if disk.bus is DiskBus.VIRTIO_SCSI else Kind.DISK
        layout = planner.add(layout, DeviceRequest(
            device, kind, bootindex=DISK_BOOTINDEX if disk.boot else None))
    for i, host in enumerate(spec.passthrough):
        layout = planner.add(layout, DeviceRequest(f"hostdev{i}", Kind.PASSTHROUGH))
        other.append((f"hostdev{i}", DeviceKind.PASSTHROUGH, {"host": host}))
    if spec.serial_log:
        other.append(("serial0", DeviceKind.SERIAL, {"path": spec.serial_log}))
    return _Plan(layout, nic_ids, disk_ids, tuple(other))


def _check_movable(view: InstanceView, copy_storage: bool) -> None:
    """What keeps a VM from moving to another host, said before anything starts."""
    fixed = [n.device for n in view.nics if n.backend is NicBackend.TAP]
    if fixed:
        raise VmError(f"{', '.join(fixed)} use a fixed tap, which exists on one host only; "
                      "use backend=bridge:NAME (the bridge must exist on both hosts)")
    if copy_storage and view.uefi_vars:
        raise VmError(f"{view.name}'s UEFI variable store is a disk too and is not copied: "
                      "move UEFI VMs with --shared-storage")
    held = [d.device for d in view.devices if d.kind is DeviceKind.PASSTHROUGH]
    if held:
        raise VmError(f"{', '.join(held)} are host devices; move their ports first with "
                      "fleetboot vm pci-migrate")


def _image_paths(spec: CreateSpec, image_dir: Path) -> list[str]:
    return [d.path or str(image_dir / f"{spec.name}-disk{i}.qcow2")
            for i, d in enumerate(spec.disks)]


def _check_default_image(disk: DiskSpec, path: str) -> None:
    """An image at a *default* path is a leftover of an earlier VM: never adopt it silently."""
    if disk.path is None and Path(path).exists():
        raise SpecError(f"{path} exists already (left by an earlier VM?); give path={path} "
                        "to use it, or delete it")


def _next_id(layout: Layout, prefix: str) -> str:
    used = {p.device for p in layout.placements}
    n = 0
    while f"{prefix}{n}" in used:
        n += 1
    return f"{prefix}{n}"


def _used_macs(session: Session) -> set[str]:
    return set(session.scalars(select(Nic.mac)).all())


def _new_mac(used: set[str]) -> str:
    # QEMU's own locally administered prefix; the rest random, checked against the inventory.
    while True:
        tail = secrets.token_bytes(3)
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in tail)
        if mac not in used:
            return mac


def _nic_row(device: str, spec: NicSpec, used: set[str]) -> Nic:
    mac = spec.mac or _new_mac(used)
    if mac in used:
        raise SpecError(f"MAC {mac} is already used by another VM NIC")
    used.add(mac)
    return Nic(device_id=device, model=spec.model, mac=mac, backend=spec.backend.value,
               backend_target=spec.target, is_boot=spec.boot, rom=spec.rom)


def _disk_row(device: str, spec: DiskSpec, path: str, created: bool) -> Disk:
    size = spec.size or 0
    return Disk(device_id=device, path=path, size_bytes=size, format="qcow2",
                bus=spec.bus.value, boot=spec.boot, created_image=created)


def _clear_boot_nic(inst: Instance, layout: Layout) -> Layout:
    """A new boot NIC demotes the old one: no ROM, no bootindex."""
    old = [n for n in inst.nics if n.is_boot]
    for nic in old:
        nic.is_boot = False
        nic.rom = None
    return planner.set_boot(layout, {n.device_id: None for n in old},
                            {n.device_id: "" for n in old})


def _clear_boot_disk(inst: Instance, layout: Layout) -> Layout:
    old = [d for d in inst.disks if d.boot]
    for disk in old:
        disk.boot = False
    return planner.set_boot(layout, {d.device_id: None for d in old}, {})


def _timed(step: Step, clock: dict[str, float], key: str) -> Step:
    """Record when the step's action was sent (``sent``) or finished (``visible``)."""
    inner = step.run

    async def run() -> None:
        if key == "sent":
            clock[key] = time.perf_counter()
        await inner()
        if key != "sent":
            clock[key] = time.perf_counter()

    return Step(step.name, run, step.undo)


def _exists_step(qmp: Qmp, device: str) -> Step:
    async def run() -> None:
        if not await runtime.device_exists(qmp, device):
            raise QemuError(f"{device} was added but QEMU does not list it")

    return Step(f"verify {device}", run)


def _gone(failure: Exception) -> bool:
    cause = failure.cause if isinstance(failure, StepFailure) else failure
    return isinstance(cause, QemuGoneError)


def _unlink(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


RUN_DIR_ENV = "FLEETBOOT_VM_RUN_DIR"
IMAGE_DIR_ENV = "FLEETBOOT_VM_IMAGE_DIR"


def vm_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> VmSettings:
    """The VM settings of a loaded configuration (its ``vm:`` section; paths resolved).

    ``FLEETBOOT_VM_RUN_DIR`` and ``FLEETBOOT_VM_IMAGE_DIR`` override ``vm.run_dir``
    and ``vm.image_dir`` (one-off commands, tests, the lab); ``image_dir``
    defaults to ``<state_dir>/vm-images``.
    """
    env = os.environ if environ is None else environ
    cfg = settings.vm
    image_dir = cfg.image_dir or str(Path(settings.state_dir) / "vm-images")
    return VmSettings(
        run_dir=Path(env.get(RUN_DIR_ENV) or cfg.run_dir),
        image_dir=Path(env.get(IMAGE_DIR_ENV) or image_dir),
        qemu=cfg.qemu, qemu_img=cfg.qemu_img,
        unplug_timeout=cfg.unplug_timeout_s, migrate_timeout=cfg.migrate_timeout_s,
        start_timeout=cfg.start_timeout_s, enumerate_timeout=cfg.enumerate_timeout_s,
        firmware=Firmware(cfg.firmware),
        ovmf_code=Path(cfg.ovmf_code) if cfg.ovmf_code else OVMF_CODE,
        ovmf_vars=Path(cfg.ovmf_vars) if cfg.ovmf_vars else OVMF_VARS,
    )


def default_settings(state_dir: str | None = None) -> VmSettings:
    """The ``vm:`` defaults without a configuration file, under ``state_dir``.

    Kept for callers that have no :class:`Settings` at hand (``FLEETBOOT_STATE_DIR``
    stands in for ``state_dir``); prefer :func:`vm_settings`.
    """
    base = state_dir or os.environ.get("FLEETBOOT_STATE_DIR", ".")
    return vm_settings(Settings(state_dir=base).resolve_paths(Path.cwd()))

