"""Boot storm with real VMs: N QEMU guests (TCG) power on at once and boot through Fleetboot.

Every VM runs the whole chain against one ``fleetboot serve`` (SQLite) in a lab
namespace: firmware PXE (SeaBIOS + iPXE ROM; OVMF native PXE -> snponly.efi;
or a three-NIC VM that boots its e1000), DHCP, the per-node iPXE script,
kernel and initrd over HTTP, Linux's own DHCP, the node client's single
configuration fetch and its UP report. A VM counts as UP when the server has
recorded it UP. See docs/benchmarks.md ("Real VMs at once").

    python bench/storm_qemu.py                         # 8 BIOS VMs
    python bench/storm_qemu.py --vms 9 --mix bios,uefi,3-nic
    python bench/storm_qemu.py --keep                  # keep logs (server, serial consoles)

Prints one row per VM (seconds after its QEMU started: PXE, kernel, config,
UP, and the server's own first-event-to-UP time) and ends with
``RESULT storm_qemu n=<N> all_up_s=<x> failed=<n>`` (all_up_s: first QEMU
start to the last UP; ``nan`` if any VM failed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from rich.console import Console

from fleetboot.errors import FleetbootError
from fleetboot.lab import boots
from fleetboot.lab.bootview import LiveProgress, summary_line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=8, help="VMs started at once (default 8)")
    parser.add_argument("--mix", default="bios",
                        help=f"machine kinds, round-robin: {','.join(boots.MACHINE_KINDS)}")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds until every VM must be UP (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


def run(args: argparse.Namespace, console: Console, workdir: Path) -> boots.BootReport:
    machines = boots.fleet_of(args.vms, [k.strip() for k in args.mix.split(",") if k.strip()])
    guests = boots.prepare_guests(m.flavor for m in machines)  # before the clock starts
    load = os.getloadavg()[0]
    with boots.FleetLab.start(workdir, machines, guests=guests) as fleet:
        console.print(f"{len(machines)} VMs ({args.mix}), host load average {load:.1f} "
                      f"on {os.cpu_count()} CPUs")
        cpu_before = fleet.server_cpu_s() or 0.0
        with LiveProgress(console, server_column=True) as progress:
            report = fleet.boot(machines, timeout_s=args.timeout, on_update=progress)
        cpu = (fleet.server_cpu_s() or 0.0) - cpu_before
        console.print(f"fleetboot serve used {cpu:.1f} s of CPU during the boots")
        retries = Counter(r for rs in fleet.retransmissions().values() for r in rs)
        console.print(f"retransmissions seen by the server: {sum(retries.values())}"
                      + "".join(f"; {what}: {n}" for what, n in retries.most_common()))
        if not report.ok:
            console.print(report.errors(), style="red", soft_wrap=True)
            console.print(f"server log tail:\n{fleet.server.log_tail(20)}", soft_wrap=True)
    return report


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("bench/storm_qemu.py creates network namespaces: run it as root", file=sys.stderr)
        return 2
    console = Console(width=120)
    workdir = Path(tempfile.mkdtemp(prefix="fleetboot-storm-qemu-"))
    try:
        with boots.interrupts_as_exceptions():
            report = run(args, console, workdir)
    except FleetbootError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        with boots.uninterruptible():
            if args.keep:
                console.print(f"work directory kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    console.print(summary_line(report))
    print(report.result_line("storm_qemu"), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
