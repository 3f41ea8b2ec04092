"""Benchmark: power-cycle 200 emulated BMCs at once, 10 % of them wedged.

Run: ``PYTHONPATH=src .venv/bin/python bench/power.py [--n 200] [--wedged 20]``.

The healthy BMCs are OpenIPMI ``ipmi_sim`` instances on loopback whose machine
is a real process (the chassis-control script starts and kills it), so a cycle
is checked by the machine's pid changing, not only by the BMC's word. A wedged
BMC is a bound UDP port nobody reads. Fleetboot's bulk runner (pyghmi on worker
threads, bounded concurrency, one budget per BMC) cycles them all; then the
classic script does the same: a plain loop of ``ipmitool ... power cycle``.
Ends with ``RESULT power n=200 wedged=20 fleetboot_s=<x> ok=<n> failed=<n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

from fleetboot.lab.bmc import IpmiSim, WedgedBmc
from fleetboot.power.bulk import BulkRunner, BulkSettings
from fleetboot.power.core import Credentials, DriverName, Operation, Target, summarize


def _targets(sims: list[IpmiSim], wedged: list[WedgedBmc]) -> list[Target]:
    ports = [s.port for s in sims] + [w.port for w in wedged]
    # Wedged BMCs spread through the list, as they would be in a rack.
    ports.sort(key=lambda p: hash(p) % 997)
    return [Target(f"node{i:03d}", i, DriverName.IPMI, "127.0.0.1", port,
                   Credentials("admin", "secret")) for i, port in enumerate(ports)]


def _ipmitool_loop(targets: list[Target]) -> tuple[float, int, int]:
    """The classic script: one ipmitool call after the other (-C 3: ipmi_sim's cipher)."""
    ok = failed = 0
    start = time.monotonic()
    for t in targets:
        argv = ["ipmitool", "-I", "lanplus", "-H", t.address, "-p", str(t.port),
                "-U", "admin", "-P", "secret", "-C", "3", "power", "cycle"]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode == 0:
            ok += 1
        else:
            failed += 1
    return time.monotonic() - start, ok, failed


async def _fleetboot(targets: list[Target], settings: BulkSettings) -> tuple[float, int, int]:
    start = time.monotonic()
    outcomes = await BulkRunner(settings).run(targets, Operation.CYCLE)
    elapsed = time.monotonic() - start
    for line in summarize(outcomes).lines():
        print(line)
    ok = sum(o.ok for o in outcomes)
    return elapsed, ok, len(outcomes) - ok


def _verified(sims: list[IpmiSim], before: dict[int, int | None]) -> int:
    """How many healthy BMCs' machines run as a new process now (really cycled)."""
    count = 0
    for s in sims:
        pid = s.machine_pid()
        if pid is not None and pid != before[s.port]:
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--wedged", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-BMC budget, s")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-ipmitool", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fbpower"))
    sims: list[IpmiSim] = []
    wedged = [WedgedBmc() for _ in range(args.wedged)]
    try:
        t0 = time.monotonic()
        for i in range(args.n - args.wedged):
            sims.append(IpmiSim.start(work / f"bmc{i}"))
        print(f"{len(sims)} ipmi_sim BMCs started in {time.monotonic() - t0:.1f} s, "
              f"{len(wedged)} wedged")
        targets = _targets(sims, wedged)
        settings = BulkSettings(concurrency=args.concurrency, timeout_s=args.timeout, retries=1)
        healthy = [t for t in targets if t.port in {s.port for s in sims}]
        asyncio.run(BulkRunner(settings).run(healthy, Operation.ON))  # setup: all on

        before = {s.port: s.machine_pid() for s in sims}
        fb_s, fb_ok, fb_failed = asyncio.run(_fleetboot(targets, settings))
        print(f"fleetboot: {fb_s:.1f} s, {fb_ok} ok, {fb_failed} failed, "
              f"{_verified(sims, before)} machines verified cycled "
              f"(per-BMC budget {args.timeout:g} s, concurrency {args.concurrency})")

        if not args.skip_ipmitool:
            time.sleep(3)  # let ipmi_sim finish powering back on after the cycle
            before = {s.port: s.machine_pid() for s in sims}
            loop_s, loop_ok, loop_failed = _ipmitool_loop(targets)
            time.sleep(3)
            print(f"ipmitool loop: {loop_s:.1f} s, {loop_ok} ok, {loop_failed} failed, "
                  f"{_verified(sims, before)} machines verified cycled")
            print(f"ipmitool_loop_s={loop_s:.1f} ipmitool_ok={loop_ok} "
                  f"ipmitool_failed={loop_failed}")
        with open("/proc/loadavg") as f:
            print(f"loadavg {f.read().strip()}")
        print(f"RESULT power n={len(targets)} wedged={len(wedged)} fleetboot_s={fb_s:.1f} "
              f"ok={fb_ok} failed={fb_failed}")
    finally:
        for s in sims:
            s.stop()
        for w in wedged:
            w.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
