"""``fleetboot vm``: KVM virtual machines with a PCI layout Fleetboot owns.

    fleetboot vm create web1 --machine q35 --firmware uefi --nic model=virtio-net-pci,boot \\
        --nic model=e1000,backend=bridge:br0 --disk size=2G --balloon
    fleetboot vm start web1
    fleetboot vm hotplug web1 --disk size=1G,bus=virtio-scsi
    fleetboot vm show web1            # slot map, slot table, drift against query-pci
    fleetboot vm unplug web1 net1
    fleetboot vm migrate web1 --transport tcp
    fleetboot vm host add rack2 --address 10.0.0.12 --host-run-dir /run/fleetboot/vm \
        --image-dir /var/lib/fleetboot/images
    fleetboot vm migrate web1 --to rack2      # disks copied (NBD mirror) unless --shared-storage
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from fleetboot.cli.common import console, friendly_errors, state, table
from fleetboot.inventory.db import Database
from fleetboot.vm import planner
from fleetboot.vm.firmware import Firmware, parse_firmware
from fleetboot.vm.service import InstanceView, VmService, vm_settings
from fleetboot.vm.specs import CreateSpec, SpecError, parse_disk, parse_nic

app = typer.Typer(help="KVM virtual machines: stable PCI slots, hotplug, per-NIC PXE, "
                       "live migration.", no_args_is_help=True)

T = TypeVar("T")

DbOpt = Annotated[str | None, typer.Option(
    "--db", envvar="FLEETBOOT_DB",
    help="database URL (default: the configuration's, i.e. sqlite:///fleetboot.db)")]
RunDirOpt = Annotated[Path | None, typer.Option(
    "--run-dir", envvar="FLEETBOOT_VM_RUN_DIR",
    help="QMP sockets and pidfiles (keep it short: unix socket paths; default: the "
         "configuration's vm.run_dir, /run/fleetboot/vm)")]


def _service(ctx: typer.Context, db_url: str | None, run_dir: Path | None) -> VmService:
    """The service on the configuration's ``vm:`` section; --run-dir (or its env var) wins."""
    cli = state(ctx)
    settings = vm_settings(cli.settings)
    if run_dir is not None:
        settings = replace(settings, run_dir=run_dir)
    if db_url is None:
        db = cli.db
    else:
        db = Database(db_url)
        db.create_schema()
    return VmService(db, settings)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _print_view(view: InstanceView, changed: list[str] | None = None) -> None:
    console.print(
        f"[bold]{escape(view.name)}[/] {view.status.value}  {view.machine_type} "
        f"accel={view.accel}  {view.vcpus} vCPU  {view.memory_mib} MiB  uuid {view.uuid}"
        + (f"  pid {view.pid}" if view.pid else "")
    )
    console.print(f"firmware: {_firmware(view)}")
    console.print(f"slots: [bold]{escape(planner.render(view.layout, changed or []))}[/]")
    console.print(f"[dim]{escape(planner.LEGEND)}[/]")
    _print_slots(view)
    _print_nics(view)
    _print_disks(view)
    if view.devices:
        tab = table("device", "kind", "settings")
        for d in view.devices:
            tab.add_row(d.device, d.kind.value, escape(json.dumps(d.props)))
        console.print(tab)
    if view.extra_args:
        console.print(f"extra arguments: {escape(shlex.join(view.extra_args))}")
    if view.last_error:
        console.print(f"[yellow]last error:[/] {escape(view.last_error)}")
    if view.drift is not None:
        colour = "green" if view.drift.ok else "red"
        console.print(f"query-pci: [{colour}]{escape(str(view.drift))}[/]")


def _firmware(view: InstanceView) -> str:
    if view.firmware is Firmware.BIOS:
        return "bios (SeaBIOS)"
    return f"uefi (OVMF; variable store {escape(view.uefi_vars or '?')})"


def _print_slots(view: InstanceView) -> None:
    tab = table("pool", "#", "address", "root port", "device", "kind", "state",
                title="PCI slots")
    for row in planner.slot_rows(view.layout):
        if not row.device and row.pool is planner.PoolName.QEMU:
            continue  # free QEMU-range slots are QEMU's business
        tab.add_row(row.pool.value, str(row.index), row.address, row.root_port,
                    row.device or "-", row.kind, row.state)
    console.print(tab)


def _print_nics(view: InstanceView) -> None:
    if not view.nics:
        return
    tab = table("nic", "model", "mac", "backend", "PXE")
    for n in view.nics:
        p = view.layout.find(n.device)
        rom = "-" if p is None else ("boot (bootindex 1)" if p.bootindex is not None
                                      else "no ROM" if p.romfile == "" else "ROM")
        backend = n.backend.value + (f":{n.target}" if n.target else "")
        tab.add_row(n.device, n.model, n.mac, backend, rom)
    console.print(tab)


def _print_disks(view: InstanceView) -> None:
    if not view.disks:
        return
    tab = table("disk", "bus", "path", "size", "boot")
    for d in view.disks:
        p = view.layout.find(d.device)
        bus = d.bus.value + (f" target {p.scsi_target}" if p and p.scsi_target is not None else "")
        tab.add_row(d.device, bus, escape(d.path), _size(d.size_bytes), "yes" if d.boot else "")
    console.print(tab)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if n else "-"
        n //= 1024
    return str(n)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@app.command("create")
@friendly_errors
def create(
    ctx: typer.Context,
    name: str,
    machine: Annotated[str, typer.Option(help="machine family: q35 or pc (i440fx)")] = "q35",
    machine_type: Annotated[str | None, typer.Option(
        help="a versioned type such as pc-q35-7.1 (default: pin what the family means now)")
    ] = None,
    vcpus: Annotated[int, typer.Option(help="virtual CPUs")] = 1,
    memory: Annotated[int, typer.Option(help="memory in MiB")] = 256,
    nic: Annotated[list[str] | None, typer.Option(
        help="model=..,mac=..,backend=user|tap:NAME|bridge:NAME,boot,rom=PATH; repeat")] = None,
    disk: Annotated[list[str] | None, typer.Option(
        help="size=2G,bus=virtio-blk|virtio-scsi,path=IMAGE,boot; repeat")] = None,
    balloon: Annotated[bool, typer.Option(help="add a virtio balloon")] = False,
    rng: Annotated[bool, typer.Option(help="add a virtio rng fed by /dev/urandom")] = False,
    serial: Annotated[str | None, typer.Option(help="log the serial console to this file")] = None,
    extra: Annotated[str | None, typer.Option(
        help="extra QEMU arguments, shell-quoted; PCI -device entries get QEMU-range slots")
    ] = None,
    qemu_pool: Annotated[int | None, typer.Option(help="slots left to QEMU")] = None,
    nic_pool: Annotated[int | None, typer.Option(help="hot-pluggable NIC slots")] = None,
    disk_pool: Annotated[int | None, typer.Option(help="hot-pluggable disk slots")] = None,
    passthrough_pool: Annotated[int | None, typer.Option(help="passthrough slots")] = None,
    accel: Annotated[str, typer.Option(help="QEMU accelerator")] = "tcg",
    netns: Annotated[str | None, typer.Option(help="run QEMU in this network namespace")] = None,
    firmware: Annotated[str | None, typer.Option(
        help="bios (SeaBIOS) or uefi (OVMF, on q35 or pc); default: the configuration's "
             "vm.firmware, i.e. bios")] = None,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Define a VM and pin its machine type, firmware and PCI layout (disk images and a
    UEFI variable store are created now)."""
    family = planner.parse_family(machine)
    base = planner.DEFAULT_POOLS[family]
    pools = planner.PoolSizes(
        qemu=base.qemu if qemu_pool is None else qemu_pool,
        nic=base.nic if nic_pool is None else nic_pool,
        disk=base.disk if disk_pool is None else disk_pool,
        passthrough=base.passthrough if passthrough_pool is None else passthrough_pool,
    )
    try:
        extra_args = tuple(shlex.split(extra or ""))
    except ValueError as exc:
        raise SpecError(f"--extra {extra!r}: {exc}") from None
    spec = CreateSpec(
        name=name, family=family, machine_type=machine_type, vcpus=vcpus, memory_mib=memory,
        nics=tuple(parse_nic(n) for n in nic or ()), disks=tuple(parse_disk(d) for d in disk or ()),
        balloon=balloon, rng=rng, serial_log=serial, extra_args=extra_args, pools=pools,
        accel=accel, netns=netns,
        firmware=None if firmware is None else parse_firmware(firmware),
    )
    view = _run(_service(ctx, db, run_dir).create(spec))
    _print_view(view, [p.device for p in view.layout.placements])


@app.command("list")
@friendly_errors
def list_vms(ctx: typer.Context, db: DbOpt = None, run_dir: RunDirOpt = None) -> None:
    """List VMs with their status and slot map."""
    service = _service(ctx, db, run_dir)
    tab = table("vm", "status", "machine", "firmware", "vcpus", "MiB", "slots")
    for view in service.list_instances():
        tab.add_row(view.name, view.status.value, view.machine_type, view.firmware.value,
                    str(view.vcpus), str(view.memory_mib), escape(planner.render(view.layout)))
    console.print(tab)


@app.command("show")
@friendly_errors
def show(
    ctx: typer.Context,
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the stored layout")] = False,
    argv: Annotated[bool, typer.Option("--argv", help="print the QEMU command line")] = False,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Show a VM: slot map, slots, NICs, disks, and drift against QEMU's query-pci."""
    service = _service(ctx, db, run_dir)
    view = _run(service.show(name))
    if as_json:
        console.print_json(json.dumps(planner.to_dict(view.layout)))
        return
    if argv:
        console.print(escape(shlex.join(_run(service.argv(name)))), soft_wrap=True)
        return
    _print_view(view)


@app.command("start")
@friendly_errors
def start(
    ctx: typer.Context,
    name: str,
    paused: Annotated[bool, typer.Option(help="start with the CPUs stopped (-S)")] = False,
    netns: Annotated[str | None, typer.Option(help="run QEMU in this network namespace")] = None,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Start QEMU from the stored layout and check its PCI buses against it."""
    view = _run(_service(ctx, db, run_dir).start(name, paused=paused, netns=netns))
    _print_view(view)


@app.command("stop")
@friendly_errors
def stop(ctx: typer.Context, name: str, db: DbOpt = None, run_dir: RunDirOpt = None) -> None:
    """Stop QEMU (quit); pending unplugs are completed, pending plugs dropped."""
    view = _run(_service(ctx, db, run_dir).stop(name))
    console.print(f"{view.name}: {view.status.value}")


@app.command("hotplug")
@friendly_errors
def hotplug(
    ctx: typer.Context,
    name: str,
    nic: Annotated[str | None, typer.Option(help="a NIC spec, as for create")] = None,
    disk: Annotated[str | None, typer.Option(help="a disk spec, as for create")] = None,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Add a NIC or a disk at its planned slot (to the definition, if the VM is stopped)."""
    if (nic is None) == (disk is None):
        raise SpecError("give exactly one of --nic or --disk")
    service = _service(ctx, db, run_dir)
    if nic is not None:
        result = _run(service.hotplug_nic(name, parse_nic(nic)))
    else:
        result = _run(service.hotplug_disk(name, parse_disk(disk or "")))
    how = (f"hot-plugged in {result.latency_s * 1000:.1f} ms" if result.latency_s is not None
           else "hot-plugged" if result.hotplugged else "added; it appears at the next start")
    console.print(f"{result.device} at {result.address}: {how}")
    console.print(f"slots: [bold]{escape(result.slot_map)}[/]")


@app.command("unplug")
@friendly_errors
def unplug(
    ctx: typer.Context,
    name: str,
    device: str,
    timeout: Annotated[float | None, typer.Option(
        help="seconds to wait for the guest to release the device")] = None,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Remove a device; its slot is freed only once QEMU reports DEVICE_DELETED."""
    result = _run(_service(ctx, db, run_dir).unplug(name, device, timeout))
    console.print(f"{result.device}: {result.outcome}; slot freed")
    console.print(f"slots: [bold]{escape(result.slot_map)}[/]")


@app.command("migrate")
@friendly_errors
def migrate(
    ctx: typer.Context,
    name: str,
    transport: Annotated[str, typer.Option(help="unix or tcp (127.0.0.1), on its own "
                                           "host")] = "unix",
    to: Annotated[str | None, typer.Option(
        "--to", help="another VM host (fleetboot vm host add); over TCP")] = None,
    shared_storage: Annotated[bool, typer.Option(
        "--shared-storage", help="with --to: both hosts see the disks at the same paths "
        "(default: copy them during the migration, as libvirt's --copy-storage-all)")] = False,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Live-migrate to a new QEMU process started from the stored layout, then verify it."""
    result = _run(_service(ctx, db, run_dir).migrate(name, transport, to=to,
                                                     copy_storage=not shared_storage))
    copied = result.stats.get("copied_disks")
    console.print(f"{name}: migrated over {result.uri} in {result.seconds:.2f} s; now pid "
                  f"{result.pid}" + (f" on {to}" if to else "")
                  + (f"; disks copied: {', '.join(copied)}" if copied else "")
                  + f"; query-pci {result.drift}")


host_app = typer.Typer(help="Hosts that run Fleetboot's VMs: where `vm migrate --to` goes.",
                       no_args_is_help=True)
app.add_typer(host_app, name="host")


@host_app.command("add")
@friendly_errors
def host_add(
    ctx: typer.Context,
    name: str,
    address: Annotated[str, typer.Option(help="address migrations and disk copies use")],
    run_dir_on_host: Annotated[Path, typer.Option("--host-run-dir",
                                                  help="QMP sockets there (short path)")],
    image_dir: Annotated[Path, typer.Option(help="where copied disks go")],
    netns: Annotated[str | None, typer.Option(help="the host is this network namespace "
                                              "of this machine")] = None,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Register a VM host."""
    host = _service(ctx, db, run_dir).add_host(name, address, netns=netns,
                                               run_dir=run_dir_on_host, image_dir=image_dir)
    console.print(f"VM host {host.name}: {host.address}"
                  + (f" (namespace {host.netns})" if host.netns else ""))


@host_app.command("list")
@friendly_errors
def host_list(ctx: typer.Context, db: DbOpt = None, run_dir: RunDirOpt = None) -> None:
    """The VM hosts."""
    tab = table("host", "address", "namespace", "run dir", "image dir")
    for h in _service(ctx, db, run_dir).list_hosts():
        tab.add_row(h.name, h.address, h.netns or "-", str(h.run_dir), str(h.image_dir))
    console.print(tab)


@app.command("delete")
@friendly_errors
def delete(
    ctx: typer.Context,
    name: str,
    images: Annotated[bool, typer.Option(help="also delete images Fleetboot created")] = False,
    db: DbOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Forget a stopped VM."""
    _run(_service(ctx, db, run_dir).delete(name, images=images))
    console.print(f"deleted {name}")
