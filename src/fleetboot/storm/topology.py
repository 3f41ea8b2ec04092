"""The network every stack is stormed on: a server and a client namespace.

    server ns:  br0 (server_ip/prefix) -- veth --+
    client ns:                                   +-- veth (client_ip/prefix)

The server sits on a bridge, as on a real boot network. All simulated nodes
live in the client namespace. Two routes let each node use its own leased
address without adding a thousand addresses to an interface:

- client ns: ``local node_net dev lo`` -- any node address is local, so a node
  can bind its TFTP and HTTP sockets to its lease (the AnyIP trick);
- server ns: ``node_net via client_ip`` -- the server reaches every node
  through one neighbour entry. The kernel's ARP table is shared by all
  namespaces and holds 1,024 entries by default (gc_thresh3); a real boot
  server for a thousand nodes raises that limit, and the route stands in
  for that tuning without touching the host.

DHCP itself stays on the link: the firmware's broadcasts cross the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetboot.lab.netns import Namespace, run, unique_name
from fleetboot.storm.plan import Network


@dataclass
class StormNet:
    server: Namespace
    client: Namespace
    server_if: str
    client_if: str
    network: Network
    bridge: str = "br0"

    @classmethod
    def create(cls, network: Network) -> StormNet:
        server, client = Namespace.create("fbss"), Namespace.create("fbsc")
        s_if, c_if = unique_name("vss"), unique_name("vsc")
        net = cls(server, client, s_if, c_if, network)
        try:
            net._build()
        except Exception:
            net.close()
            raise
        return net

    def _build(self) -> None:
        nw, srv, cli = self.network, self.server, self.client
        run(["ip", "link", "add", self.server_if, "type", "veth", "peer", "name", self.client_if])
        run(["ip", "link", "set", self.server_if, "netns", srv.name])
        run(["ip", "link", "set", self.client_if, "netns", cli.name])
        srv.ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
        srv.ip("link", "set", self.bridge, "type", "bridge", "stp_state", "0")
        srv.ip("link", "set", self.server_if, "master", self.bridge)
        for ns, dev in ((srv, self.server_if), (srv, self.bridge), (cli, self.client_if)):
            ns.ip("link", "set", dev, "up")
        srv.ip("addr", "add", f"{nw.server_ip}/{nw.prefix}", "dev", self.bridge)
        cli.ip("addr", "add", f"{nw.client_ip}/{nw.prefix}", "dev", self.client_if)
        cli.ip("route", "add", "local", nw.node_net, "dev", "lo")
        srv.ip("route", "add", nw.node_net, "via", nw.client_ip, "dev", self.bridge)

    def close(self) -> None:
        self.client.delete()
        self.server.delete()

    def __enter__(self) -> StormNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
