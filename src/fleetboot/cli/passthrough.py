"""``fleetboot host|flavor`` and the passthrough commands under ``fleetboot vm``.

``host_app``: scan hosts' sysfs, list their devices, tag them.
``flavor_app``: define flavors (groups of equivalent devices) and see what they match.
``vm_passthrough_app``: claim, attach, release and migrate an instance's devices;
its commands are meant to be added to ``fleetboot vm``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetboot.cli.common import console, err_console, friendly_errors, state, table
from fleetboot.inventory.db import Database
from fleetboot.passthrough import catalog, claims, hosts, libvirtd, migration, vmlayout
from fleetboot.passthrough.claims import ClaimedDevice
from fleetboot.passthrough.errors import ClaimError
from fleetboot.passthrough.flavors import Flavor, parse_requests, parse_tag
from fleetboot.vm.models import Instance
from fleetboot.vm.service import VmService, vm_settings

host_app = typer.Typer(help="Hosts' PCI devices for passthrough (read from sysfs).",
                       no_args_is_help=True)
flavor_app = typer.Typer(help="PCI flavors: named groups of equivalent devices.",
                         no_args_is_help=True)
vm_passthrough_app = typer.Typer(help="PCI passthrough devices of instances.",
                                 no_args_is_help=True)

DB_OPTION = typer.Option(
    None, "--db", envvar="FLEETBOOT_DB",
    help="database URL (default: the config file's, else sqlite:///fleetboot.db)",
)


def _db(ctx: typer.Context, url: str | None) -> Database:
    if url is None:
        return state(ctx).db
    db = Database(url)
    db.create_schema()
    return db


def _instance(db: Database, text: str) -> tuple[str, str | None]:
    """An instance UUID, or the name of a VM of ``fleetboot vm``: (uuid, VM name or None)."""
    try:
        uid: str | None = claims.normalize_uuid(text)
    except ClaimError:
        uid = None
    with db.session() as s:
        where = Instance.uuid == uid if uid else Instance.name == text
        row = s.execute(select(Instance.uuid, Instance.name).where(where)).first()
    if row is not None:
        return row.uuid, row.name
    if uid is None:
        raise ClaimError(f"{text!r} is neither an instance UUID nor the name of a VM "
                         "(see `fleetboot vm list`)")
    return uid, None


def _vms(ctx: typer.Context, db: Database) -> VmService:
    return VmService(db, vm_settings(state(ctx).settings))


def _numa(node: int | None) -> str:
    return "-" if node is None else str(node)


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        err_console.print(f"[yellow]warning:[/] {line}")


# ---------------------------------------------------------------- host


@host_app.command("scan")
@friendly_errors
def host_scan(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="host name (registered on first scan)"),
    sysfs_root: str = typer.Option("/sys", "--sysfs", help="sysfs root to read"),
    libvirt: str | None = typer.Option(
        None, "--libvirt", help="the host's libvirtd URI (qemu+ssh://HOST/system); its "
        "per-port networks are defined there"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Read a host's PCI devices from sysfs and record them (rescans update)."""
    db = _db(ctx, db_url)
    report = hosts.scan_host(db, name, sysfs_root)
    if libvirt is not None:
        hosts.set_libvirt_uri(db, name, libvirt)
        console.print(libvirtd.sync_networks(db, name).describe())
    console.print(f"{'registered' if report.new_host else 'rescanned'} host [bold]{name}[/]: "
                  f"{report.devices} devices; "
                  f"{len(report.added)} added, {len(report.updated)} updated, "
                  f"{len(report.returned)} back, {len(report.vanished)} vanished")
    details = [("updated", report.updated), ("back", report.returned),
               ("vanished", report.vanished)]
    if not report.new_host:  # on a first scan everything is new: the counts say enough
        details.insert(0, ("added", report.added))
    for label, items in details:
        for item in items:
            console.print(f"  {label}: {item}")
    _warn([f"conflict: {c}" for c in report.conflicts])
    _warn([f"skipped: {p}" for p in report.problems])


@host_app.command("list")
@friendly_errors
def host_list(ctx: typer.Context, db_url: str | None = DB_OPTION) -> None:
    """List hosts with their device counts."""
    with _db(ctx, db_url).session() as s:
        tab = table("host", "devices", "in use", "absent", "scanned", "sysfs")
        for h in hosts.list_hosts(s):
            in_use = sum(1 for d in h.devices if d.state.value in ("claimed", "allocated"))
            absent = sum(1 for d in h.devices if not d.present)
            tab.add_row(h.name, str(len(h.devices)), str(in_use), str(absent),
                        f"{h.scanned_at:%F %T}" if h.scanned_at else "-", h.sysfs_root)
        console.print(tab)


def _relation(view: hosts.DeviceView) -> str:
    row = view.row
    if row.device_type == "vf":
        return f"VF of {row.pf_address}"
    if row.device_type == "pf":
        return f"PF {row.sriov_numvfs}/{row.sriov_totalvfs} VFs"
    return ""


@host_app.command("devices")
@friendly_errors
def host_devices(
    ctx: typer.Context,
    name: str,
    flavor: str | None = typer.Option(None, help="only devices matching this flavor"),
    db_url: str | None = DB_OPTION,
) -> None:
    """A host's PCI devices: identity, SR-IOV, NUMA, IOMMU group, tags, flavors, use."""
    with _db(ctx, db_url).session() as s:
        flavors = catalog.list_flavors(s)
        if flavor:
            catalog.get_flavor(s, flavor)
        views = hosts.device_views(s, hosts.get_host(s, name), flavors)
        tab = table("address", "vendor:device", "class", "sr-iov", "driver", "numa", "iommu",
                    "net", "tags", "flavors", "status", title=f"host {name}")
        for v in views:
            if flavor and flavor not in v.flavors:
                continue
            r = v.row
            status = v.status + (f" {v.instance_uuid}" if v.instance_uuid else "")
            tab.add_row(r.address, f"{r.vendor_id}:{r.product_id}", r.class_code, _relation(v),
                        r.driver or "-", _numa(r.numa_node),
                        "-" if r.iommu_group is None else str(r.iommu_group),
                        ",".join(r.netdevs), " ".join(f"{k}={t}" for k, t in v.attrs.tags),
                        ",".join(sorted(v.flavors)), status)
        console.print(tab)
        rules = hosts.allowlist(hosts.get_host(s, name))
        console.print("allowed for passthrough: " + ("; ".join(
            f"{i}) {r.describe()}" for i, r in enumerate(rules, 1)) or
            f"nothing yet (fleetboot host allow {name} FLAVOR...)"))


@host_app.command("sync")
@friendly_errors
def host_sync(ctx: typer.Context, name: str, db_url: str | None = DB_OPTION) -> None:
    """Make the host's libvirtd hold exactly the per-port networks the inventory has."""
    report = libvirtd.sync_networks(_db(ctx, db_url), name)
    console.print(report.describe())
    for label, names in (("defined", report.defined), ("removed", report.undefined)):
        for net in names:
            console.print(f"  {label}: {net}")


@host_app.command("allow")
@friendly_errors
def host_allow(
    ctx: typer.Context,
    name: str,
    flavors: list[str] = typer.Argument(..., help="flavors whose devices may be passed "
                                        "through on this host (their criteria are copied)"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Allow devices for passthrough on a host: nothing is, until allowed here (like
    Nova's device_spec). Devices the host itself uses never are."""
    db = _db(ctx, db_url)
    for flavor in flavors:
        with db.session() as s:
            rule = catalog.get_flavor(s, flavor)
        allowed = hosts.allow_devices(db, name, rule)
        console.print(f"{name}: allowed {rule.describe()} ({len(allowed)} device(s))")


@host_app.command("disallow")
@friendly_errors
def host_disallow(
    ctx: typer.Context, name: str,
    rule: int = typer.Argument(..., help="rule number, as `host devices` lists them"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Remove a rule from a host's passthrough allowlist (claims already made stay)."""
    removed = hosts.disallow_devices(_db(ctx, db_url), name, rule)
    console.print(f"{name}: removed allow rule {rule} "
                  f"({Flavor.from_dict('allow', removed).describe()})")


@host_app.command("tag")
@friendly_errors
def host_tag(
    ctx: typer.Context,
    name: str,
    address: str,
    tags: list[str] = typer.Argument(None, help="key=value; a PF's tags apply to its VFs"),
    remove: list[str] = typer.Option([], "--remove", help="tag key to remove; repeatable"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Set operator tags on a device, such as physical_network=physnet1."""
    new = dict(parse_tag(t) for t in tags or [])
    result = hosts.set_tags(_db(ctx, db_url), name, address, new, remove)
    shown = " ".join(f"{k}={v}" for k, v in sorted(result.items())) or "(none)"
    console.print(f"{name} {address}: tags {shown}")


# ---------------------------------------------------------------- flavor


@flavor_app.command("add")
@friendly_errors
def flavor_add(
    ctx: typer.Context,
    name: str,
    vendor: str | None = typer.Option(None, help="vendor id, e.g. 8086"),
    product: list[str] = typer.Option([], help="product (device) id; repeat for any-of"),
    subsystem_vendor: str | None = typer.Option(None, help="subsystem vendor id"),
    subsystem_device: list[str] = typer.Option([], help="subsystem device id; repeatable"),
    pci_class: str | None = typer.Option(None, "--class", help="class prefix: 02, 0200, 030200"),
    driver: list[str] = typer.Option([], help="bound kernel driver; repeat for any-of"),
    device_type: str | None = typer.Option(None, "--type", help="pf, vf or pci"),
    tag: list[str] = typer.Option([], help="key=value the device (or its PF) is tagged with"),
    address_glob: list[str] = typer.Option(
        [], help="PCI address glob (discouraged: slots are not equivalent across hosts)"),
    description: str = typer.Option("", help="free text"),
    replace: bool = typer.Option(False, help="replace an existing flavor of this name"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Define a flavor; every given criterion must hold (repeats within one are any-of)."""
    flavor = Flavor.create(
        name, vendor=vendor, products=product, subsystem_vendor=subsystem_vendor,
        subsystem_devices=subsystem_device, class_prefix=pci_class, drivers=driver,
        device_type=device_type, tags=dict(parse_tag(t) for t in tag),
        address_globs=address_glob, description=description,
    )
    _warn(flavor.warnings())
    with _db(ctx, db_url).session() as s:
        catalog.add_flavor(s, flavor, replace=replace)
        counts = _match_counts(s, [flavor])[flavor.name]
    console.print(f"flavor [bold]{name}[/]: {flavor.describe()}")
    console.print(f"  matches {counts or 'no devices yet'}")


def _match_counts(session: Session, flavors: list[Flavor]) -> dict[str, str]:
    per: dict[str, list[str]] = {f.name: [] for f in flavors}
    for h in hosts.list_hosts(session):
        views = hosts.device_views(session, h, flavors)
        for f in flavors:
            hits = [v for v in views if f.name in v.flavors]
            if hits:
                usable = sum(1 for v in hits if v.status == "usable")
                per[f.name].append(f"{h.name} {usable}/{len(hits)}")
    return {name: ", ".join(parts) for name, parts in per.items()}


@flavor_app.command("list")
@friendly_errors
def flavor_list(ctx: typer.Context, db_url: str | None = DB_OPTION) -> None:
    """List flavors with what they match (usable/matching devices per host)."""
    with _db(ctx, db_url).session() as s:
        flavors = catalog.list_flavors(s)
        counts = _match_counts(s, flavors)
        tab = table("flavor", "criteria", "usable/matching per host", "description")
        for f in flavors:
            tab.add_row(f.name, f.describe(), counts[f.name] or "-", f.description)
        console.print(tab)


@flavor_app.command("show")
@friendly_errors
def flavor_show(ctx: typer.Context, name: str, db_url: str | None = DB_OPTION) -> None:
    """One flavor and every device it matches."""
    with _db(ctx, db_url).session() as s:
        flavor = catalog.get_flavor(s, name)
        console.print(f"flavor [bold]{name}[/]: {flavor.describe()}")
        if flavor.description:
            console.print(f"  {flavor.description}")
        _warn(flavor.warnings())
        tab = table("host", "address", "vendor:device", "type", "numa", "also in", "status")
        for h in hosts.list_hosts(s):
            for v in hosts.device_views(s, h, catalog.list_flavors(s)):
                if name in v.flavors:
                    tab.add_row(h.name, v.row.address, f"{v.row.vendor_id}:{v.row.product_id}",
                                v.row.device_type, _numa(v.row.numa_node),
                                ",".join(sorted(v.flavors - {name})), v.status)
        console.print(tab)


@flavor_app.command("remove")
@friendly_errors
def flavor_remove(
    ctx: typer.Context, name: str,
    force: bool = typer.Option(False, help="remove even if claims were made through it"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Remove a flavor (refused while instances hold devices claimed through it)."""
    with _db(ctx, db_url).session() as s:
        catalog.remove_flavor(s, name, force=force)
    console.print(f"removed flavor [bold]{name}[/]")


# ---------------------------------------------------------------- vm


def _devices_table(devices: Sequence[ClaimedDevice], title: str) -> None:
    tab = table("port", "host", "address", "numa", "via flavors", "attached as", "mac", "state",
                title=title)
    for d in devices:
        tab.add_row(str(d.port), d.host, d.address, _numa(d.numa_node), "+".join(d.flavors),
                    d.kind, d.mac or "-", d.state)
    console.print(tab)


@vm_passthrough_app.command("claim")
@friendly_errors
def vm_claim(
    ctx: typer.Context,
    instance: str = typer.Argument(..., help="instance UUID or VM name"),
    requests: list[str] = typer.Argument(..., help="e.g. '2 x gpu-a100' '1 x sriov-physnet1'"),
    host: str | None = typer.Option(None, help="only this host"),
    numa: int | None = typer.Option(None, help="preferred NUMA node"),
    dry_run: bool = typer.Option(False, help="only say which hosts fit and why others don't"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Claim passthrough devices for an instance on the best host that fits them all."""
    db = _db(ctx, db_url)
    wanted = parse_requests(requests)
    if dry_run:
        fits, refusals = claims.schedule(db, wanted, host, numa)
        for fit in fits:
            where = ", ".join(f"{slot}:{cand.address}" for slot, cand
                              in sorted(fit.placement.assignment.items()))
            aligned = "NUMA-aligned" if fit.placement.numa_aligned else "spans NUMA nodes"
            console.print(f"[green]fits[/] {fit.host} ({aligned}): {where}")
        for name, reasons in sorted(refusals.items()):
            console.print(f"[red]no[/]   {name}: {'; '.join(reasons)}")
        return
    got = claims.claim(db, _instance(db, instance)[0], wanted, host=host, numa_node=numa)
    _devices_table(got.devices, f"claimed on {got.host}")
    if not got.numa_aligned:
        _warn(["the devices span NUMA nodes (no single node could hold them all)"])


@vm_passthrough_app.command("pci-attach")
@friendly_errors
def vm_attach(
    ctx: typer.Context,
    instance: str = typer.Argument(..., help="instance UUID or VM name"),
    xml: bool = typer.Option(False, "--xml", help="print the network and device XML"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Allocate the claimed devices, define their per-port networks and, for a VM of
    `fleetboot vm` (stopped), put its vfio devices into the VM's passthrough pool."""
    db = _db(ctx, db_url)
    uid, vm_name = _instance(db, instance)
    if vm_name is not None:
        att, report, added = asyncio.run(vmlayout.attach_to_vm(_vms(ctx, db), db, vm_name))
    else:
        (att, report), added = libvirtd.attach(db, uid), []
    _devices_table(att.devices, f"attached on {att.host}")
    console.print(report.describe())
    if vm_name is not None:
        console.print(f"VM {vm_name}: {', '.join(added) or 'no new'} vfio device(s) placed")
    for name, text in att.networks:
        console.print(f"network {name}")
        if xml:
            console.print(text, markup=False, highlight=False, end="")
    if xml:
        console.print(att.devices_xml, markup=False, highlight=False, end="")


@vm_passthrough_app.command("release")
@friendly_errors
def vm_release(ctx: typer.Context, instance: str, db_url: str | None = DB_OPTION) -> None:
    """Free the instance's devices and delete their networks (a VM of `fleetboot vm` must
    be stopped; its vfio devices leave its definition)."""
    db = _db(ctx, db_url)
    uid, vm_name = _instance(db, instance)
    if vm_name is not None:
        freed, reports = asyncio.run(vmlayout.release_from_vm(_vms(ctx, db), db, vm_name))
    else:
        freed, reports = libvirtd.release(db, uid)
    for report in reports:
        console.print(report.describe())
    console.print(f"released {len(freed)} device(s)" + (": " + ", ".join(freed) if freed else ""))


@vm_passthrough_app.command("pci-show")
@friendly_errors
def vm_pci_show(
    ctx: typer.Context,
    instance: str,
    xml: bool = typer.Option(False, "--xml", help="print the domain XML of the devices"),
    db_url: str | None = DB_OPTION,
) -> None:
    """The instance's passthrough devices, its vfio-pci devices and (with --xml) domain XML."""
    db = _db(ctx, db_url)
    instance = _instance(db, instance)[0]
    devices = claims.instance_devices(db, instance)
    _devices_table(devices, f"instance {instance}")
    incoming = claims.instance_devices(db, instance, incoming=True)
    if incoming:
        _devices_table(incoming, "incoming (migration in progress)")
    for v in vmlayout.vfio_devices(db, instance):
        console.print(f"-device {v.qemu_device()}")
    if xml:
        console.print(claims.instance_domain_xml(db, instance), markup=False, highlight=False,
                      end="")


@vm_passthrough_app.command("pci-migrate")
@friendly_errors
def vm_pci_migrate(
    ctx: typer.Context,
    instance: str,
    to: str | None = typer.Option(None, "--to", help="target host"),
    abort: bool = typer.Option(False, help="undo an interrupted migration"),
    db_url: str | None = DB_OPTION,
) -> None:
    """Move the instance's network ports to equivalent devices on another host."""
    db = _db(ctx, db_url)
    uid, vm_name = _instance(db, instance)
    if abort:
        freed = migration.abort(db, uid)
        console.print(f"aborted: released {len(freed)} incoming device(s)")
        return
    if to is None:
        raise typer.BadParameter("give the target host with --to HOST (or --abort)")
    if vm_name is not None:
        # Its QEMU would keep the old host devices open: move the VM while it is stopped.
        asyncio.run(_vms(ctx, db).require_stopped(vm_name, "moving its passthrough ports"))
    # Nothing runs that could move: say so instead of a transfer "ok" that did nothing.
    moved_by = ("nothing to move: the VM is stopped; its devices follow below"
                if vm_name is not None else
                "not done by Fleetboot: the instance's own manager moves the guest")
    result = migration.migrate(db, uid, to, on_step=lambda step: console.print(
        f"  {step}: {moved_by if step == 'transfer' else 'ok'}"))
    for port, src, dst in result.plan.moves:
        console.print(f"port {port}: {result.plan.source} {src} -> {to} {dst}")
    for report in result.libvirt:
        console.print(report.describe())
    if vm_name is not None:
        for line in asyncio.run(vmlayout.follow_migration(_vms(ctx, db), db, vm_name)):
            console.print(f"VM {vm_name}: {line}")
    console.print(f"migrated to [bold]{to}[/]; domain XML unchanged; "
                  f"{len(result.released_networks)} source network(s) deleted")
