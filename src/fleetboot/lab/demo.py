"""``make demo``: a newcomer's tour of Fleetboot in about a minute.

It builds a private network (Linux namespaces and a bridge), starts
``fleetboot serve`` on SQLite inside it, registers a subnet, two guest
kernels and three machines with the real ``fleetboot`` CLI, then boots three
QEMU VMs (TCG) at once through the whole chain to UP:

* ``bios1``: SeaBIOS with the virtio NIC's iPXE ROM;
* ``uefi1``: OVMF's own PXE loads ``snponly.efi`` over TFTP, iPXE runs the script;
* ``multi1``: three NICs (virtio, e1000, rtl8139), each with its iPXE ROM, that
  must boot from the e1000 only.

Each VM gets its per-node iPXE script, kernel and initrd over HTTP; Linux's
own DHCP client gets the same address; the initramfs runs the node client,
which fetches the configuration once and reports UP. The tour then shows
``fleetboot nodes``, a timeline and ``fleetboot why``, checks which NIC
``multi1`` used, and removes everything it made (VMs, server, namespaces,
files), also on Ctrl-C or failure.

    sudo make demo                        # or: sudo .venv/bin/python -m fleetboot.lab.demo
    python -m fleetboot.lab.demo --keep   # keep the work directory (logs, database)
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text
from sqlalchemy import select

from fleetboot.errors import FleetbootError
from fleetboot.inventory.models import Node
from fleetboot.lab import boots
from fleetboot.lab.boots import BootReport, FleetLab, GuestFiles, Machine
from fleetboot.lab.bootview import LiveProgress, summary_line
from fleetboot.lab.guest import parse_markers
from fleetboot.lab.qemu import VmError
from fleetboot.nodeconfig.timeline import read_timeline

console = Console(highlight=False)

def demo_machines() -> list[Machine]:
    return [boots.bios_machine("bios1", 1), boots.uefi_machine("uefi1", 2),
            boots.multi_nic_machine("multi1", 3, boot_model="e1000")]


# ----------------------------------------------------------------------------
# The CLI, run in this process (same code as the `fleetboot` command, no start-up cost)
# ----------------------------------------------------------------------------


def fleetboot(config: Path, *args: str) -> None:
    """Show ``$ fleetboot ARGS`` and run it; a non-zero exit ends the demo."""
    from fleetboot.cli.main import app

    console.print(Text("$ fleetboot " + shlex.join(args), style="bold cyan"))
    try:
        code = app(["--config", str(config), *args], prog_name="fleetboot",
                   standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    if code == 130:  # Ctrl-C inside the command (click turns it into an exit code)
        raise KeyboardInterrupt
    if code not in (None, 0):
        raise boots.BootRunError(f"`fleetboot {shlex.join(args)}` failed (exit {code})")


def register(config: Path, machines: Sequence[Machine], guests: Sequence[GuestFiles]) -> None:
    """What an operator types: a subnet, images, profiles, nodes and their boot."""
    net = boots.LAB_SUBNET
    fleetboot(config, "subnet", "add", "lab", f"{net}.0/24",
              "--pool", f"{net}.{boots.POOL[0]}-{net}.{boots.POOL[1]}")
    from fleetboot.boot.images import ImageStore

    store = ImageStore(config.parent / boots.BOOT_ROOT)
    for g in guests:
        fleetboot(config, "image", "add", str(g.kernel), "--name", f"vmlinuz-{g.flavor}")
        fleetboot(config, "image", "add", str(g.initrd), "--name", f"initrd-{g.flavor}.img")
        # The paths `image add` printed: images/<sha256 prefix>/<name>.
        kernel = store.add(g.kernel, f"vmlinuz-{g.flavor}")[0].path
        initrd = store.add(g.initrd, f"initrd-{g.flavor}.img")[0].path
        fleetboot(config, "profile", "add", boots.profile_name(g.flavor), "--kernel", kernel,
                  "--initrd", initrd, "--cmdline", boots.lab_cmdline())
    for m in machines:
        nics = [f"{n.mac},name=nic{i}" + (",boot" if n is m.boot_nic else "")
                for i, n in enumerate(m.nics)]
        fleetboot(config, "node", "add", m.name, *(a for nic in nics for a in ("--nic", nic)))
        fleetboot(config, "node", "boot", m.name, "profile", "-p", boots.profile_name(m.flavor))


# ----------------------------------------------------------------------------
# Checks and the tour
# ----------------------------------------------------------------------------


def boot_nic_check(fleet: FleetLab, machine: Machine) -> str:
    """Which NIC the machine booted from: the server's timeline and the guest's lease."""
    want = machine.boot_nic
    with fleet.db.session() as s:
        node_id = s.scalar(select(Node.id).where(Node.name == machine.name))
        macs = {e.mac for e in read_timeline(s, int(node_id or 0)) if e.mac}
    vm = next(v for v in fleet.vms if v.name == machine.name)
    leases = [m for m in parse_markers(vm.serial_text()) if m.kind == "LEASE"]
    linux_mac = leases[-1].get("mac") if leases else "no lease"
    if macs != {want.mac} or linux_mac != want.mac:
        raise boots.BootRunError(
            f"{machine.name} should boot only from its {want.model} {want.mac}; the server "
            f"saw {', '.join(sorted(macs)) or 'nothing'} and Linux configured {linux_mac}")
    others = ", ".join(f"{n.model} {n.mac}" for n in machine.nics if n is not want)
    return (f"{machine.name} booted from its {want.model} ({want.mac}) only: every DHCP, TFTP "
            f"and HTTP event came from that MAC, Linux took its lease there (BOOTIF from "
            f"iPXE), and {others} sent nothing")


def step(text: str, started: float) -> None:
    console.print(f"[green]\u2713[/] {text} [dim]({time.monotonic() - started:.1f} s)[/]")


def tour(workdir: Path, timeout_s: float) -> BootReport:
    machines = demo_machines()
    t = time.monotonic()
    boots.check_host(machines)
    with console.status("guest Linux: Debian kernels (apt-get download on the first run) "
                        "and busybox initramfs images"):
        guests = boots.prepare_guests(m.flavor for m in machines)
    step("guest kernels " + ", ".join(f"{g.flavor}: {g.kernel.parent.name}" for g in guests), t)

    t = time.monotonic()
    with FleetLab.start(workdir, machines, register=False) as fleet:
        step(f"lab network: namespace {fleet.lab.server.name}, bridge {fleet.lab.server_dev} "
             f"{fleet.lab.server_ip}/24, IPv6 router advertiser", t)
        step(f"fleetboot -c {fleet.server.config_path} serve (SQLite, pid "
             f"{fleet.server.process.pid}, log {fleet.server.log_path})", t)
        console.rule("register the lab with the CLI")
        console.print(f"[dim]export FLEETBOOT_CONFIG={fleet.server.config_path}[/]")
        register(fleet.server.config_path, machines, guests)
        time.sleep(1.2)  # the server re-reads the inventory once a second

        console.rule("boot")
        with LiveProgress(console) as progress:
            report = fleet.boot(machines, timeout_s=timeout_s, on_update=progress)
        if not report.ok:
            console.print(Panel(report.errors(), title="failed VMs", style="red"))
            console.print(f"server log tail:\n{fleet.server.log_tail(30)}")
            return report

        console.rule("what the operator sees")
        for args in (("nodes",), ("timeline", "uefi1"), ("why", "multi1")):
            fleetboot(fleet.server.config_path, *args)
        console.print(f"[green]\u2713[/] {boot_nic_check(fleet, machines[2])}")
        return report


def summary(report: BootReport, total_s: float) -> Group:
    style = "bold green" if report.ok else "bold red"
    line = Text.assemble((summary_line(report), style), f"; demo total {total_s:.0f} s")
    if not report.ok:
        return Group(line)
    return Group(line, Text("next: docs/quickstart.md serves your own subnet with the same "
                            "commands", style="dim"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleetboot.lab.demo",
        description="Boot three QEMU VMs (BIOS, UEFI, three NICs) through Fleetboot to UP.")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (server log, database, serial logs)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for every VM to be UP (default 300)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        console.print("[bold red]error:[/] the demo creates network namespaces: run it as root "
                      "(sudo make demo)")
        return 2
    started = time.monotonic()
    console.print(Panel.fit("Fleetboot demo: one process serves DHCP, TFTP, HTTP boot and node "
                            "configuration;\nthree QEMU VMs (BIOS, UEFI, three NICs) boot "
                            "through it to UP. Ctrl-C stops and cleans up.", style="bold"))
    workdir = Path(tempfile.mkdtemp(prefix="fleetboot-demo-"))
    code = 1
    try:
        with boots.interrupts_as_exceptions():
            report = tour(workdir, args.timeout)
        console.print(summary(report, time.monotonic() - started))
        code = 0 if report.ok else 1
    except (KeyboardInterrupt, click.exceptions.Abort):  # Abort: Ctrl-C inside a CLI command
        console.print("\n[yellow]interrupted[/]")
        code = 130
    except (FleetbootError, VmError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
    finally:
        with boots.uninterruptible():
            if args.keep:
                console.print(f"[dim]cleaned up VMs, server and namespaces; work directory "
                              f"kept: {workdir}[/]")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
                console.print("[dim]cleaned up: VMs, server, namespaces, work directory"
                              + (" (--keep keeps its logs)" if code == 1 else "") + "[/]")
    return code


if __name__ == "__main__":
    sys.exit(main())
