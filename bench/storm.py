"""Boot storm: N machines PXE-booting at once, classic stack (dnsmasq + nginx) vs Fleetboot.

Every simulated machine does what real firmware and a booted OS do, with real
packets between two network namespaces: PXE DHCP (4/8/16/32 s retransmission
schedule), TFTP of iPXE (tsize probe, then blksize), iPXE's DHCP, its script,
kernel and initrd over HTTP, the OS's own DHCP, the configuration fetch and
the UP report. Both stacks get the same machines, the same start offsets and
byte-identical files. See docs/benchmarks.md ("Boot storm").

    python bench/storm.py                       # n=1000 at once, 4 MiB kernel + 4 MiB initrd
    python bench/storm.py --nodes 300 --window 10
    python bench/storm.py --also 100,300        # smaller storms first, for the scaling table
    python bench/storm.py --set admission.max_booting=0   # Fleetboot without admission control
    python bench/storm.py --stacks proxy        # site dnsmasq (addresses) + Fleetboot proxyDHCP

Prints a table per stack and ends with
``RESULT storm n=<N> fleetboot_s=<x> fleetboot_failed=<n> fleetboot_retries=<n>
classic_s=<x> classic_failed=<n> classic_retries=<n>`` (plus ``proxy_s=<x>
proxy_failed=<n> proxy_retries=<n>`` when the proxy stack ran).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from fleetboot.storm.fleetboot_stack import parse_settings
from fleetboot.storm.plan import ALL_STACKS, STACKS, KiB, MiB, Payload, StackKind, make_plan
from fleetboot.storm.report import draw, print_report
from fleetboot.storm.runner import run_storm
from fleetboot.storm.stacks import StackError
from fleetboot.storm.stats import result_line

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--window", type=float, default=0.0, help="power-on spread, seconds")
    parser.add_argument("--kernel-mib", type=float, default=4.0)
    parser.add_argument("--initrd-mib", type=float, default=4.0)
    parser.add_argument("--bootfile-kib", type=float, default=100.0)
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--also", default="", help="smaller node counts to run first, e.g. 100,300")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "img" / "storm.png")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Fleetboot setting (YAML value), e.g. admission.max_booting=300")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/storm.py creates network namespaces: run it as root", file=sys.stderr)
        return 2
    kinds: tuple[StackKind, ...] = tuple(k for k in ALL_STACKS if k in args.stacks.split(","))
    payload = Payload(bootfile=int(args.bootfile_kib * KiB), kernel=int(args.kernel_mib * MiB),
                      initrd=int(args.initrd_mib * MiB))
    try:
        settings = parse_settings(args.set)
    except StackError as exc:
        parser.error(str(exc))
    console = Console(width=110)
    sizes = [int(x) for x in args.also.split(",") if x.strip()] + [args.nodes]
    lines = []
    with tempfile.TemporaryDirectory(prefix="fleetboot-storm-") as tmp:
        for n in sizes:
            workdir = (args.workdir or Path(tmp)) / f"n{n}"
            plan = make_plan(n, args.window, args.seed, payload=payload)
            console.rule(f"storm n={n} window={args.window:g} s, kernel {args.kernel_mib:g} MiB, "
                         f"initrd {args.initrd_mib:g} MiB")
            runs = run_storm(plan, kinds, workdir, args.progress, settings)
            lines.append(print_report(runs, console))
            if n == args.nodes and args.picture:
                draw(runs, args.picture)
                console.print(f"picture: {args.picture}")
            last = result_line(n, {k: r.summary for k, r in runs.items()})
    for line in lines[:-1]:
        console.print(line.replace("RESULT", "(smaller)"), highlight=False, soft_wrap=True)
    print(last, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
