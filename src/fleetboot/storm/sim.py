"""The simulator process: ``python -m fleetboot.storm.sim PLAN OUT --interface IF``.

It runs inside the client namespace (the orchestrator starts it with ``ip
netns exec``), boots every node of the plan concurrently on one event loop
(uvloop when available) and writes the per-node results and its own health
counters as JSON. The health counters say whether the simulator itself kept
up: frames its raw socket dropped, datagrams its UDP sockets dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from fleetboot.storm import dhcpc, node
from fleetboot.storm.plan import StormPlan
from fleetboot.storm.stacks import kernel_counters
from fleetboot.storm.stats import NodeResult


def make_agent(plan: StormPlan) -> node.ConfigAgent:
    if plan.stack.kind == "classic":
        return node.StaticAgent()
    from fleetboot.storm.fleetboot_agent import FleetbootAgent

    return FleetbootAgent(plan.network.server_ip, plan.stack.http_port)


def _kernel_counters() -> dict[str, int]:
    text = Path("/proc/net/snmp").read_text() + Path("/proc/net/netstat").read_text()
    return kernel_counters(text)


async def _progress(results: list[NodeResult], total: int, t0: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(2.0)
        up = sum(1 for r in results if r.up_at is not None)
        print(f"storm: {loop.time() - t0:6.1f} s  {up}/{total} up", file=sys.stderr, flush=True)


async def simulate(plan: StormPlan, interface: str, progress: bool = False) -> dict[str, Any]:
    link = dhcpc.DhcpLink.open(interface)
    link.start()
    before = _kernel_counters()
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05  # every task is scheduled before the first node powers on
    ctx = node.Context(plan, link, make_agent(plan), t0, random.Random(plan.seed))
    results: list[NodeResult] = []
    ticker = asyncio.ensure_future(_progress(results, plan.n, t0)) if progress else None
    started = time.time()
    try:
        tasks = [asyncio.ensure_future(node.boot(spec, ctx)) for spec in plan.nodes]
        for task in asyncio.as_completed(tasks):
            results.append(await task)
    finally:
        if ticker is not None:
            ticker.cancel()
        drops = link.drops()
        link.close()
    after = _kernel_counters()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.sort(key=lambda r: r.name)
    return {
        "started_at": started,
        "nodes": [r.to_dict() for r in results],
        "client": {
            "raw_socket_drops": drops,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "wall_s": round(time.time() - started, 3),
            "unmatched_dhcp_replies": link.unmatched,
            "malformed_dhcp_replies": link.malformed,
            **{f"kernel.{k}": after.get(k, 0) - before.get(k, 0) for k in after},
        },
    }


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("plan", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    plan = StormPlan.from_dict(json.loads(args.plan.read_text()))
    _raise_fd_limit()
    coro = simulate(plan, args.interface, args.progress)
    try:
        import uvloop
    except ImportError:  # plain asyncio works too, only slower
        output = asyncio.run(coro)
    else:
        output = uvloop.run(coro)
    args.out.write_text(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
