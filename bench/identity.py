"""What node identity costs per request: the resolver's kernel lookups on the loop.

Every node-facing request asks ``IdentityResolver.identify`` who is asking: a
netlink route get (is the peer on the link?) and a neighbour get per serving
interface, plus dict lookups. This creates a namespace with a veth whose
neighbour table holds N static entries (the kernel's real table, as a busy
boot server has), a lease per address, and times ``identify`` for on-link,
routed and unknown peers, in this process (no server: only the lookups).

    python bench/identity.py                 # 1,000 neighbours, 20,000 lookups each
    python bench/identity.py --neighbours 4000 --lookups 50000

Ends with ``RESULT identity neighbours=<N> on_link_us=<x> routed_us=<x> unknown_us=<x>``
(median microseconds per ``identify`` call).
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fleetboot.identity.core import LinkBook  # noqa: E402
from fleetboot.identity.neighbours import NeighbourTable  # noqa: E402
from fleetboot.identity.resolver import IdentityResolver  # noqa: E402
from fleetboot.lab.netns import Namespace, run  # noqa: E402

CLONE_NEWNET = 0x40000000


class Leases:
    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def mac_for_address(self, address: str) -> str | None:
        return self.table.get(address)


def enter(ns: Namespace) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


def per_call_us(resolver: IdentityResolver, addresses: list[str], lookups: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(lookups // 5):
            resolver.identify(addresses[i % len(addresses)])
        rounds.append((time.perf_counter() - start) / (lookups // 5) * 1e6)
    return statistics.median(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neighbours", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=20000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/identity.py creates a network namespace: run it as root", file=sys.stderr)
        return 2
    ns = Namespace.create("fbid")
    try:
        ns.ip("link", "add", "srv0", "type", "veth", "peer", "name", "srv1")
        for dev in ("srv0", "srv1"):
            ns.ip("link", "set", dev, "up")
        ns.ip("addr", "add", "10.60.0.1/16", "dev", "srv0")
        ns.ip("route", "add", "10.61.0.0/16", "via", "10.60.0.2", "dev", "srv0")
        net = list(ipaddress.ip_network("10.60.0.0/16").hosts())[10:10 + args.neighbours]
        batch = "".join(f"neigh replace {a} lladdr 52:54:{i >> 24 & 255:02x}:"
                        f"{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x} dev srv0 "
                        f"nud permanent\n" for i, a in enumerate(net))
        subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=batch, text=True,
                       check=True)
        on_link = [str(a) for a in net]
        macs = {a: f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                   f"{i & 255:02x}" for i, a in enumerate(on_link)}
        routed = [f"10.61.{i >> 8 & 255}.{i & 255}" for i in range(1, 1001)]
        leases = Leases({**macs, **{a: "52:54:ff:00:00:01" for a in routed}})
        enter(ns)
        resolver = IdentityResolver(proxy=False, leases=leases, book=LinkBook(),
                                    neighbours=NeighbourTable(["srv0"]))
        assert resolver.identify(on_link[0]).mac == macs[on_link[0]], resolver.counters
        assert resolver.identify(routed[0]).reason == "routed_lease"
        unknown = [f"10.60.250.{i}" for i in range(1, 250)]
        results = {name: per_call_us(resolver, addrs, args.lookups)
                   for name, addrs in (("on_link", on_link), ("routed", routed),
                                       ("unknown", unknown))}
        print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
        print(f"counters: {resolver.counters}")
        print(f"RESULT identity neighbours={args.neighbours} "
              + " ".join(f"{k}_us={v:.1f}" for k, v in results.items()))
    finally:
        run(["ip", "netns", "del", ns.name], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
