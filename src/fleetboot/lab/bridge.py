"""A server namespace with a bridge and N client namespaces on it (one veth each).

For one-to-many tests (multicast reload, udpcast, many HTTP clients): every
address gets a broadcast address (udpcast's receivers need one), and every
object is removed by ``close()``, also when a test fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetboot.lab.netns import Namespace, run, unique_name


@dataclass
class BridgeLab:
    server: Namespace
    server_ip: str
    server_port: str  # the server's veth end in the server namespace (where tbf goes)
    clients: list[Namespace] = field(default_factory=list)
    client_ips: list[str] = field(default_factory=list)
    client_if: str = "eth0"

    @classmethod
    def create(cls, n_clients: int, subnet: str = "10.78", mtu: int = 1500) -> BridgeLab:
        """Server at ``subnet.0.1`` on its own veth to the bridge; clients ``subnet.1.x``."""
        server = Namespace.create("fbr")
        lab = cls(server, f"{subnet}.0.1", "srv0")
        try:
            server.ip("link", "add", "br0", "type", "bridge", "forward_delay", "0")
            server.ip("link", "set", "br0", "type", "bridge", "stp_state", "0")
            server.ip("link", "set", "br0", "mtu", str(mtu))
            server.ip("link", "set", "br0", "up")
            # The server sits behind its own veth pair so a qdisc on "srv0" caps
            # everything it sends, like a server's NIC.
            server.ip("link", "add", "srv0", "mtu", str(mtu), "type", "veth", "peer", "name",
                      "srvp", "mtu", str(mtu))
            server.ip("link", "set", "srvp", "master", "br0")
            server.ip("link", "set", "srvp", "up")
            server.ip("link", "set", "srv0", "up")
            server.ip("addr", "add", f"{lab.server_ip}/16", "brd", "+", "dev", "srv0")
            for i in range(n_clients):
                lab._add_client(i, subnet, mtu)
            return lab
        except Exception:
            lab.close()
            raise

    def _add_client(self, i: int, subnet: str, mtu: int) -> None:
        ns = Namespace.create("fbq")
        self.clients.append(ns)
        host_end, port = unique_name("rq"), f"p{i}"
        run(["ip", "link", "add", host_end, "mtu", str(mtu), "type", "veth", "peer", "name",
             port, "mtu", str(mtu)])
        run(["ip", "link", "set", port, "netns", self.server.name])
        run(["ip", "link", "set", host_end, "netns", ns.name])
        ns.ip("link", "set", host_end, "name", self.client_if)
        ns.ip("link", "set", self.client_if, "up")
        ip = f"{subnet}.{1 + i // 250}.{2 + i % 250}"
        ns.ip("addr", "add", f"{ip}/16", "brd", "+", "dev", self.client_if)
        self.client_ips.append(ip)
        self.server.ip("link", "set", port, "master", "br0")
        self.server.ip("link", "set", port, "up")

    def rate_cap(self, mbit: float) -> None:
        """Cap what the server sends (tbf on its veth), the same for every peer."""
        self.server.run(["tc", "qdisc", "replace", "dev", "srv0", "root", "tbf", "rate",
                         f"{mbit}mbit", "burst", "64kb", "latency", "50ms"])

    def receiver_loss(self, percent: float) -> None:
        """Drop ``percent`` of the UDP/TCP packets each client receives (random, iptables)."""
        if percent <= 0:
            return
        for ns in self.clients:
            ns.run(["iptables", "-A", "INPUT", "-i", self.client_if, "-m", "statistic",
                    "--mode", "random", "--probability", f"{percent / 100:.4f}", "-j", "DROP"])

    def close(self) -> None:
        for ns in self.clients:
            ns.delete()
        self.server.delete()

    def __enter__(self) -> BridgeLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
