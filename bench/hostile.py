"""Boot storm with hostile clients beside it (issue 11, items 3, 4 and 6).

The storm of ``bench/storm.py`` (simulated machines doing PXE DHCP, TFTP,
iPXE's DHCP, script, kernel and initrd over HTTP, the OS's DHCP, the
configuration fetch and the UP report; real packets between two network
namespaces) against ``fleetboot serve``, first alone (baseline), then with
hostile clients from other addresses of the same network
(``fleetboot.storm.hostile``): request heads that never end (160 MiB each),
slow readers of a large file at 2 KiB/s (more than all transfer slots), and
connections that send nothing or half a request head. Every boot must still
succeed.

    python bench/hostile.py                    # 300 nodes over 10 s
    python bench/hostile.py --nodes 500 --window 5 --no-baseline
    python bench/hostile.py --set admission.min_transfer_rate_kib_s=0   # floor off

Ends with ``RESULT hostile n=<N> failed=<n> storm_s=<x> baseline_s=<x> ...``
(``failed``: boots that failed with the hostile clients present).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from fleetboot.lab.netns import stop_process
from fleetboot.storm.fleetboot_stack import ADMIN_TOKEN, FleetbootStack, parse_settings
from fleetboot.storm.hostile import HostileConfig
from fleetboot.storm.plan import KiB, MiB, Payload, StormPlan, make_plan
from fleetboot.storm.report import server_lines, stack_table
from fleetboot.storm.runner import StackRun, simulate_in
from fleetboot.storm.stacks import StackError, StormFiles
from fleetboot.storm.stats import NodeResult
from fleetboot.storm.topology import StormNet

BIG_FILE = "hostile-big.bin"
SETTLE_S = 5.0  # hostile clients start this long before the storm, to hold what they can
METRICS = re.compile(r"^fleetboot_(http_heads_\w+|transfers_\w+) (\d+)$", re.M)


def hostile_addresses(plan: StormPlan, count: int) -> list[str]:
    """Addresses at the top of the node network, far from the nodes' own."""
    net = ipaddress.ip_network(plan.network.node_net)
    top = int(net.broadcast_address) - 1
    return [str(ipaddress.IPv4Address(top - i)) for i in range(count)]


def hostile_config(plan: StormPlan, port: int, args: argparse.Namespace) -> HostileConfig:
    addrs = hostile_addresses(plan, args.huge_hosts + args.slow_hosts + args.idle_hosts)
    huge = addrs[:args.huge_hosts]
    slow = addrs[args.huge_hosts:args.huge_hosts + args.slow_hosts]
    idle = addrs[args.huge_hosts + args.slow_hosts:]
    return HostileConfig(plan.network.server_ip, port, huge, slow, idle,
                         huge_per_address=1, huge_mib=args.huge_mib,
                         slow_per_address=args.slow_per_host, slow_path=f"/boot/files/{BIG_FILE}",
                         slow_rate=int(args.slow_kib * KiB), idle_per_address=args.idle_per_host)


def run_once(plan: StormPlan, files: StormFiles, workdir: Path, settings: dict[str, Any],
             args: argparse.Namespace, hostile: bool) -> tuple[StackRun, dict[str, Any]]:
    """One storm against a fresh ``fleetboot serve``; with ``hostile`` the attackers too."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    with StormNet.create(plan.network) as net:
        stack = FleetbootStack(plan, files, workdir, overrides=dict(settings))
        attackers: subprocess.Popen[bytes] | None = None
        try:
            stack.start(net)
            big = workdir / "bootroot" / BIG_FILE
            with big.open("wb") as f:  # sparse: zeros from the page cache, no disk
                f.truncate(args.big_mib * MiB)
            run_plan = plan.for_stack("fleetboot", stack.http_port)
            out = workdir / "hostile-out.json"
            if hostile:
                cfg = workdir / "hostile.json"
                cfg.write_text(json.dumps(asdict(hostile_config(plan, stack.http_port, args))))
                out.unlink(missing_ok=True)
                with (workdir / "hostile.log").open("wb") as log:
                    attackers = net.client.popen(
                        [sys.executable, "-m", "fleetboot.storm.hostile", str(cfg), str(out)],
                        stdout=log, stderr=subprocess.STDOUT)
                time.sleep(SETTLE_S)
            load_before = os.getloadavg()
            cpu_before = process_cpu_s(stack)
            output = simulate_in(net, run_plan, workdir, args.progress)
            extra["server_cpu_s"] = round(process_cpu_s(stack) - cpu_before, 2)
            output.setdefault("client", {}).update(
                {"host.load1_before": load_before[0], "host.load1_after": os.getloadavg()[0]})
            if attackers is not None:
                stop_attackers(attackers)
                extra["hostile"] = json.loads(out.read_text()) if out.exists() else {}
            extra["metrics"] = scrape_metrics(net, stack)
            server = stack.counters()
        finally:
            stop_process(attackers, timeout_s=10.0)
            stack.stop()
    run = StackRun("fleetboot + hostile" if hostile else "fleetboot (baseline)", run_plan,
                   [NodeResult.from_dict(n) for n in output["nodes"]],
                   output.get("client", {}), server)
    (workdir / "results.json").write_text(json.dumps({**run.to_dict(), **extra}))
    return run, extra


def process_cpu_s(stack: FleetbootStack) -> float:
    """CPU seconds (user + system) ``fleetboot serve`` has used so far."""
    proc = stack._proc
    if proc is None:
        return 0.0
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_attackers(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: they write their counters and exit; a stack dump first if they hang."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # faulthandler: the stacks go to hostile.log
        time.sleep(1.0)
        proc.kill()
        proc.wait(10)


def scrape_metrics(net: StormNet, stack: FleetbootStack) -> dict[str, int]:
    url = f"http://{stack.plan.network.server_ip}:{stack.http_port}/metrics"
    proc = net.server.run(["curl", "-s", "-m", "10", "-H",
                           f"Authorization: Bearer {ADMIN_TOKEN}", url], check=False)
    return {name: int(value) for name, value in METRICS.findall(proc.stdout)}


def phase_p90(run: StackRun, name: str) -> float:
    for phase in run.summary.phases:
        if phase.name == name:
            return phase.p90
    return float("nan")


def result_line(attacked: StackRun, extra: dict[str, Any],
                baseline: StackRun | None) -> str:
    s, m, h = attacked.summary, extra.get("metrics", {}), extra.get("hostile", {})
    parts = [f"RESULT hostile n={s.n} failed={s.failed} storm_s={s.storm_s:.2f}",
             f"baseline_s={baseline.summary.storm_s:.2f}" if baseline else "baseline_s=nan",
             f"baseline_failed={baseline.summary.failed}" if baseline else "baseline_failed=-1"]
    for phase in ("pxe_dhcp", "tftp", "kernel", "config"):
        parts.append(f"{phase}_p90_s={phase_p90(attacked, phase):.2f}")
    parts += [f"huge_431={m.get('http_heads_rejected_431', 0)}",
              f"huge_client_sent_max_kib={h.get('huge_taken_max', 0) // KiB}",
              f"slow_cut={m.get('transfers_aborted_too_slow', 0)}",
              f"slow_refused={m.get('transfers_rejected_client', 0)}",
              f"idle_closed={m.get('http_heads_idle_closed', 0)}",
              f"head_timeouts={m.get('http_heads_timed_out_408', 0)}",
              f"server_cpu_s={extra.get('server_cpu_s', 0)}",
              f"attackers_cpu_s={h.get('cpu_s', 0)}",
              f"load1={attacked.client.get('host.load1_before', 0):.1f}"]
    return " ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--window", type=float, default=10.0, help="power-on spread, seconds")
    parser.add_argument("--kernel-mib", type=float, default=4.0)
    parser.add_argument("--initrd-mib", type=float, default=4.0)
    parser.add_argument("--big-mib", type=int, default=1024, help="the file slow readers read")
    parser.add_argument("--huge-hosts", type=int, default=2)
    parser.add_argument("--huge-mib", type=int, default=160)
    parser.add_argument("--slow-hosts", type=int, default=4)
    parser.add_argument("--slow-per-host", type=int, default=10)
    parser.add_argument("--slow-kib", type=float, default=2.0, help="slow readers' KiB/s")
    parser.add_argument("--idle-hosts", type=int, default=2)
    parser.add_argument("--idle-per-host", type=int, default=100)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Fleetboot setting (YAML value), e.g. admission.max_transfers=16")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/hostile.py creates network namespaces: run it as root", file=sys.stderr)
        return 2
    try:
        settings = parse_settings(args.set)
    except StackError as exc:
        parser.error(str(exc))
    payload = Payload(bootfile=100 * KiB, kernel=int(args.kernel_mib * MiB),
                      initrd=int(args.initrd_mib * MiB))
    plan = make_plan(args.nodes, args.window, args.seed, payload=payload)
    console = Console(width=110)
    with tempfile.TemporaryDirectory(prefix="fleetboot-hostile-") as tmp:
        base = args.workdir or Path(tmp)
        files = StormFiles.create(base / "files", plan)
        baseline = None
        if not args.no_baseline:
            console.rule(f"baseline: storm n={args.nodes} window={args.window:g} s, no attackers")
            baseline, quiet = run_once(plan, files, base / "baseline", settings, args, False)
            console.print(stack_table(baseline))
            console.print(f"server CPU during the storm: {quiet.get('server_cpu_s')} s")
        console.rule("the same storm with hostile clients beside it")
        attacked, extra = run_once(plan, files, base / "hostile", settings, args, True)
        console.print(stack_table(attacked))
        console.print(f"server CPU during the storm: {extra.get('server_cpu_s')} s")
        for run in (r for r in (baseline, attacked) if r is not None):
            for line in server_lines(run):
                console.print(line, highlight=False, soft_wrap=True)
        console.print(f"hostile clients: {json.dumps(extra.get('hostile', {}).get('config', {}))}",
                      highlight=False, soft_wrap=True)
        summary = {k: v for k, v in extra.get("hostile", {}).items() if k != "config"}
        console.print(f"hostile clients saw: {json.dumps(summary)}", highlight=False,
                      soft_wrap=True)
        console.print(f"server counters: {json.dumps(extra.get('metrics', {}))}",
                      highlight=False, soft_wrap=True)
    print(result_line(attacked, extra, baseline), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
