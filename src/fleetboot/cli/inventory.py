"""``fleetboot node|subnet|profile|inventory``: the inventory from the command line."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from fleetboot.cli.common import (
    Output,
    OutputOpt,
    console,
    emit,
    emit_one,
    friendly_errors,
    state,
    table,
)
from fleetboot.inventory import service, yamlio
from fleetboot.inventory.models import BootAction, Node

node_app = typer.Typer(help="Nodes, their interfaces and what they boot.", no_args_is_help=True)
subnet_app = typer.Typer(help="Subnets, address pools and static reservations.",
                         no_args_is_help=True)
profile_app = typer.Typer(help="Boot profiles: kernel+initrd+cmdline, or an iPXE script.",
                          no_args_is_help=True)
inventory_app = typer.Typer(help="Import and export the whole inventory as YAML.",
                            no_args_is_help=True)


def _boot_summary(node: Node) -> str:
    parts = []
    for level in service.LEVELS:
        action = getattr(node, f"{level}_action")
        if action is not None:
            prof = getattr(node, f"{level}_profile")
            parts.append(f"{level}={prof.name if prof else action.value}")
    return " ".join(parts)


@node_app.command("add")
@friendly_errors
def node_add(
    ctx: typer.Context,
    name: str,
    nic: list[str] = typer.Option(..., "--nic", help="MAC[,name=IF][,boot]; repeat per NIC"),
    arch: str = typer.Option("x86_64", help="CPU architecture"),
) -> None:
    """Register a node. The NIC flagged `boot` (or the first) is its only PXE interface."""
    with state(ctx).db.session() as s:
        node = service.add_node(s, name, [service.parse_nic(n) for n in nic], arch=arch)
        console.print(f"added node [bold]{node.name}[/] "
                      f"(boot NIC {node.boot_interface.mac if node.boot_interface else '-'})")


@node_app.command("list")
@friendly_errors
def node_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """List nodes with their interfaces and boot settings."""
    with state(ctx).db.session() as s:
        rows = [_node_record(node) for node in service.list_nodes(s)]
    if output is not Output.TABLE:
        emit(rows, output=output)
        return
    emit([{"node": r["name"], "arch": r["arch"],
           "interfaces": ", ".join(f"{i['mac']}{'*' if i['boot'] else ''}"
                                   for i in r["interfaces"]),
           "boot": r["boot"]} for r in rows])
    if console.is_terminal:
        console.print("[dim]* = designated boot interface[/]")


def _node_record(node: Node) -> dict[str, Any]:
    return {"name": node.name, "arch": node.arch,
            "interfaces": [{"mac": i.mac, "name": i.name, "boot": i.is_boot}
                           for i in node.interfaces],
            "boot": _boot_summary(node)}


@node_app.command("show")
@friendly_errors
def node_show(ctx: typer.Context, name: str, output: OutputOpt = Output.TABLE) -> None:
    """Show one node."""
    with state(ctx).db.session() as s:
        node = service.get_node(s, name)
        record = _node_record(node)
    if output is not Output.TABLE:
        emit_one(record, output)
        return
    emit([{"interface": i["name"] or "-", "mac": i["mac"], "boot": "yes" if i["boot"] else ""}
          for i in record["interfaces"]],
         title=f"node {record['name']} ({record['arch']})")
    console.print(f"boot: {record['boot']}")


@node_app.command("edit")
@friendly_errors
def node_edit(
    ctx: typer.Context,
    name: str,
    add_nic: list[str] = typer.Option([], "--add-nic", help="MAC[,name=IF][,boot]"),
    remove_nic: list[str] = typer.Option([], "--remove-nic", help="MAC to remove"),
    boot_nic: str | None = typer.Option(None, "--boot-nic", help="MAC of the new boot NIC"),
    arch: str | None = typer.Option(None),
) -> None:
    """Change a node's interfaces, boot NIC or architecture."""
    with state(ctx).db.session() as s:
        for text in add_nic:
            service.add_interface(s, name, service.parse_nic(text))
        for mac in remove_nic:
            service.remove_interface(s, name, mac)
        if boot_nic:
            service.set_boot_interface(s, name, boot_nic)
        if arch:
            service.get_node(s, name).arch = service.check_arch(arch)
    console.print(f"updated node [bold]{name}[/]")


@node_app.command("remove")
@friendly_errors
def node_remove(ctx: typer.Context, name: str) -> None:
    """Remove a node and its interfaces."""
    with state(ctx).db.session() as s:
        service.remove_node(s, name)
    console.print(f"removed node [bold]{name}[/]")


@node_app.command("boot")
@friendly_errors
def node_boot(
    ctx: typer.Context,
    name: str,
    action: str = typer.Argument(..., help="local | wait | profile | clear"),
    profile: str | None = typer.Option(None, "--profile", "-p"),
    level: str = typer.Option("default", help="default | temp | next (one-shot)"),
    reboot: bool = typer.Option(False, "--reboot", help="then power-cycle the node through its "
                                "BMC with a one-time network boot (see `fleetboot power`)"),
) -> None:
    """Set what a node boots. `next` is used once, `temp` until cleared, then `default`."""
    if reboot:
        from fleetboot.cli.power import check_configured

        check_configured(ctx, name)
    with state(ctx).db.session() as s:
        chosen = None if action == "clear" else _parse_action(action)
        service.set_boot(s, name, level, chosen, profile)
    console.print(f"{name}: {level} boot = {action}{' ' + profile if profile else ''}")
    if reboot:
        from fleetboot.cli.power import reboot_to_network  # power drivers load only when asked

        outcome = reboot_to_network(ctx, name)
        if not outcome.ok:
            raise service.InventoryError(f"the boot is set, but the reboot failed: {outcome.error}")
        console.print(f"{name}: one-time network boot set, power-cycled (now {outcome.state})")


def _parse_action(text: str) -> BootAction:
    try:
        return BootAction(text)
    except ValueError:
        raise service.InventoryError(
            f"unknown boot action {text!r}; use local, wait, profile or clear") from None


@subnet_app.command("add")
@friendly_errors
def subnet_add(
    ctx: typer.Context,
    name: str,
    cidr: str,
    pool: list[str] = typer.Option([], help="START-END; repeat for several pools"),
    router: str | None = typer.Option(None),
    dns: list[str] = typer.Option([], help="DNS server; repeat for several"),
    domain: str | None = typer.Option(None),
    lease_seconds: int = typer.Option(3600),
    next_server: str | None = typer.Option(None, help="TFTP/HTTP server (default: ours)"),
    mtu: int | None = typer.Option(None),
) -> None:
    """Serve a subnet, optionally with address pools."""
    with state(ctx).db.session() as s:
        service.add_subnet(s, name, cidr, router=router, dns=dns, domain=domain,
                           lease_seconds=lease_seconds, next_server=next_server, mtu=mtu)
        for text in pool:
            service.add_pool(s, name, *_pool_range(text))
    console.print(f"added subnet [bold]{name}[/] {cidr}")


@subnet_app.command("list")
@friendly_errors
def subnet_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """List subnets with their pools and reservations (`subnet show NAME` for details)."""
    with state(ctx).db.session() as s:
        rows: list[dict[str, Any]]
        rows = [{"subnet": sub.name, "cidr": sub.cidr, "router": sub.router,
                 "pools": [f"{p.start}-{p.end}" for p in sub.pools],
                 "reservations": [{"mac": r.mac, "address": r.address, "hostname": r.hostname}
                                  for r in sub.reservations],
                 "lease": sub.lease_seconds} for sub in service.list_subnets(s)]
    if output is not Output.TABLE:
        emit(rows, output=output)
        return
    emit([{**r, "pools": ", ".join(r["pools"]),
           "reservations": ", ".join(f"{x['address']} {x['mac']}" for x in r["reservations"])
           or "-", "lease": f"{r['lease']}s"} for r in rows])


@subnet_app.command("show")
@friendly_errors
def subnet_show(ctx: typer.Context, name: str) -> None:
    """Show one subnet: what it tells clients, its pools and its reservations."""
    with state(ctx).db.session() as s:
        sub = service.get_subnet(s, name)
        console.print(f"subnet [bold]{sub.name}[/] {sub.cidr}")
        for label, value in (("router", sub.router), ("dns", ", ".join(sub.dns_servers)),
                             ("domain", sub.domain), ("lease", f"{sub.lease_seconds}s"),
                             ("next server", sub.next_server), ("mtu", sub.mtu)):
            console.print(f"  {label}: {value if value not in (None, '') else '-'}")
        pools = table("pool start", "pool end")
        for p in sub.pools:
            pools.add_row(p.start, p.end)
        console.print(pools)
        res = table("reserved address", "mac", "hostname", "node")
        for r in sub.reservations:
            node = service.node_by_mac(s, r.mac)
            res.add_row(r.address, r.mac, r.hostname or "-", node.name if node else "-")
        console.print(res)


_CLEARABLE = ("router", "dns", "domain", "next-server", "mtu")


@subnet_app.command("set")
@friendly_errors
def subnet_set(
    ctx: typer.Context,
    name: str,
    cidr: str | None = typer.Option(None, help="a new network; pools and reservations must "
                                    "still be inside it"),
    router: str | None = typer.Option(None),
    dns: list[str] = typer.Option([], help="DNS server; repeat (replaces the list)"),
    domain: str | None = typer.Option(None),
    lease_seconds: int | None = typer.Option(None),
    next_server: str | None = typer.Option(None),
    mtu: int | None = typer.Option(None),
    add_pool: list[str] = typer.Option([], help="START-END; repeat"),
    remove_pool: list[str] = typer.Option([], help="START-END; repeat"),
    clear: list[str] = typer.Option([], help=f"unset: {', '.join(_CLEARABLE)}; repeat"),
) -> None:
    """Change a subnet in place (its leases, pools and reservations stay)."""
    if unknown := set(clear) - set(_CLEARABLE):
        raise service.InventoryError(f"--clear {', '.join(sorted(unknown))}: use one of "
                                     f"{', '.join(_CLEARABLE)}")
    with state(ctx).db.session() as s:
        now = service.SubnetOptions.of(service.get_subnet(s, name))
        changes: dict[str, Any] = {
            "router": router, "dns": tuple(dns) or None, "domain": domain,
            "lease_seconds": lease_seconds, "next_server": next_server, "mtu": mtu}
        fields: dict[str, Any] = {k: v for k, v in changes.items() if v is not None}
        for key in clear:
            fields[key.replace("-", "_")] = () if key == "dns" else None
        service.set_subnet(s, name, replace(now, **fields), cidr=cidr)
        for text in remove_pool:
            service.remove_pool(s, name, *_pool_range(text))
        for text in add_pool:
            service.add_pool(s, name, *_pool_range(text))
    console.print(f"updated subnet [bold]{name}[/]")


def _pool_range(text: str) -> tuple[str, str]:
    start, sep, end = text.partition("-")
    if not sep:
        raise service.InventoryError(f"pool {text!r} must be START-END")
    return start, end


@subnet_app.command("remove")
@friendly_errors
def subnet_remove(
    ctx: typer.Context, name: str,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask; remove what goes with it"),
) -> None:
    """Stop serving a subnet; its pools and reservations go with it (asks first)."""
    with state(ctx).db.session() as s:
        contents = service.subnet_contents(s, name).describe()
        if contents and not yes:
            if not sys.stdin.isatty():
                raise service.InventoryError(
                    f"subnet {name!r} has {contents}; removing it drops the pools and "
                    "reservations and leaves the leases without a subnet: run again with --yes")
            typer.confirm(f"subnet {name} has {contents}; remove it with them?", abort=True)
        service.remove_subnet(s, name)
    console.print(f"removed subnet [bold]{name}[/]")


@subnet_app.command("reserve")
@friendly_errors
def subnet_reserve(
    ctx: typer.Context, subnet: str, mac: str, address: str,
    hostname: str | None = typer.Option(None),
) -> None:
    """Give a MAC a fixed address."""
    with state(ctx).db.session() as s:
        service.add_reservation(s, subnet, mac, address, hostname)
    console.print(f"reserved {address} for {mac}")


@subnet_app.command("unreserve")
@friendly_errors
def subnet_unreserve(ctx: typer.Context, mac: str) -> None:
    """Remove a MAC's fixed address."""
    with state(ctx).db.session() as s:
        service.remove_reservation(s, mac)
    console.print(f"removed the reservation of {mac}")


@profile_app.command("add")
@friendly_errors
def profile_add(
    ctx: typer.Context,
    name: str,
    kernel: str | None = typer.Option(None, help="path under the boot root, or URL"),
    initrd: str | None = typer.Option(None),
    cmdline: str = typer.Option(""),
    script: Path | None = typer.Option(None, help="a whole iPXE script file"),
) -> None:
    """Register a boot profile (immutable: a new version is a new name)."""
    with state(ctx).db.session() as s:
        service.add_profile(s, name, kernel=kernel, initrd=initrd, cmdline=cmdline,
                            script=script.read_text() if script else None,
                            boot_root=state(ctx).settings.boot_root)
    console.print(f"added profile [bold]{name}[/]")


@profile_app.command("list")
@friendly_errors
def profile_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """List boot profiles."""
    with state(ctx).db.session() as s:
        rows = [{"profile": p.name, "kind": p.kind.value, "kernel": p.kernel,
                 "initrd": p.initrd, "cmdline": p.cmdline or ""}
                for p in service.list_profiles(s)]
    emit(rows, ["profile", "kind", "kernel", "initrd", "cmdline"], output)


@profile_app.command("remove")
@friendly_errors
def profile_remove(ctx: typer.Context, name: str) -> None:
    """Remove an unused boot profile."""
    with state(ctx).db.session() as s:
        service.remove_profile(s, name)
    console.print(f"removed profile [bold]{name}[/]")


@inventory_app.command("export")
@friendly_errors
def inventory_export(
    ctx: typer.Context, output: Path | None = typer.Option(None, "-o", help="file (default -)"),
    secrets: bool = typer.Option(False, "--secrets", help="include accounts, tunnels and "
                                 "secret files (keep such a file private)"),
) -> None:
    """Write the whole inventory as YAML: nodes with their configuration, subnets,
    profiles, fleet defaults, flavors, passthrough hosts and VM definitions."""
    with state(ctx).db.session() as s:
        text = yamlio.export_inventory(s, secrets=secrets)
    if output:
        if secrets:  # keys and password hashes: readable by the owner only, from the start
            output.touch(mode=0o600)
            output.chmod(0o600)
        output.write_text(text)
    else:
        sys.stdout.write(text)


@inventory_app.command("import")
@friendly_errors
def inventory_import(ctx: typer.Context, source: Path) -> None:
    """Create or update profiles, subnets and nodes from a YAML file, in one transaction."""
    if not source.exists():
        raise service.InventoryError(f"{source} does not exist")
    with state(ctx).db.session() as s:
        counts = yamlio.import_inventory(s, source.read_text(),
                                         boot_root=state(ctx).settings.boot_root)
    console.print("imported " + ", ".join(f"{n} {k}" for k, n in counts.items()))


# --- IPv6 subnets ------------------------------------------------------------------------

subnet6_app = typer.Typer(help="IPv6 subnets (prefixes), pools and reservations for DHCPv6.",
                          no_args_is_help=True)


@subnet6_app.command("add")
@friendly_errors
def subnet6_add(
    ctx: typer.Context,
    name: str,
    prefix: str,
    pool: list[str] = typer.Option([], help="START-END; repeat for several pools"),
    dns: list[str] = typer.Option([], help="DNS server (IPv6); repeat for several"),
    domain: list[str] = typer.Option([], help="search domain; repeat for several"),
    valid_seconds: int = typer.Option(3600),
) -> None:
    """Serve an IPv6 prefix with DHCPv6, optionally with address pools."""
    from fleetboot.inventory import service6

    with state(ctx).db.session() as s:
        service6.add_subnet6(s, name, prefix, dns=dns, domains=domain,
                             valid_seconds=valid_seconds)
        for text in pool:
            start, sep, end = text.partition("-")
            if not sep:
                raise service.InventoryError(f"pool {text!r} must be START-END")
            service6.add_pool6(s, name, start, end)
    console.print(f"added IPv6 subnet [bold]{name}[/] {prefix}")


@subnet6_app.command("list")
@friendly_errors
def subnet6_list(ctx: typer.Context) -> None:
    """List IPv6 subnets with their pools and reservations."""
    from fleetboot.inventory import service6

    with state(ctx).db.session() as s:
        tab = table("subnet", "prefix", "pools", "reservations", "valid")
        for sub in service6.list_subnets6(s):
            pools = ", ".join(f"{p.start}-{p.end}" for p in sub.pools)
            tab.add_row(sub.name, sub.prefix, pools, str(len(sub.reservations)),
                        f"{sub.valid_seconds}s")
        console.print(tab)


@subnet6_app.command("remove")
@friendly_errors
def subnet6_remove(ctx: typer.Context, name: str) -> None:
    """Stop serving an IPv6 subnet (its pools and reservations go with it)."""
    from fleetboot.inventory import service6

    with state(ctx).db.session() as s:
        service6.remove_subnet6(s, name)
    console.print(f"removed IPv6 subnet [bold]{name}[/]")


@subnet6_app.command("reserve")
@friendly_errors
def subnet6_reserve(
    ctx: typer.Context, subnet: str, address: str,
    mac: str | None = typer.Option(None, help="the node interface's MAC"),
    duid: str | None = typer.Option(None, help="the client's DUID (hex)"),
    hostname: str | None = typer.Option(None),
) -> None:
    """Give a MAC (or a DUID) a fixed IPv6 address."""
    from fleetboot.inventory import service6

    with state(ctx).db.session() as s:
        service6.add_reservation6(s, subnet, address, mac=mac, duid=duid, hostname=hostname)
    console.print(f"reserved {address} for {mac or duid}")


@subnet6_app.command("unreserve")
@friendly_errors
def subnet6_unreserve(ctx: typer.Context, address: str) -> None:
    """Remove the reservation of an IPv6 address."""
    from fleetboot.inventory import service6

    with state(ctx).db.session() as s:
        service6.remove_reservation6(s, address)
    console.print(f"removed the reservation of {address}")
