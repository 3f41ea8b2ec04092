"""The proxy-mode stack: the site's classic DHCP server plus Fleetboot as proxyDHCP.

dnsmasq hands out the addresses (the same per-MAC ``dhcp-host`` lines as the
classic stack, and nothing about booting), as a site DHCP server that belongs
to another team would; ``fleetboot serve`` with ``dhcp.proxy: true`` answers
the boot clients' DISCOVERs with boot information only and serves TFTP, HTTP
and the node configuration. The simulated firmware waits for both offers
(``dhcpc.obtain_lease(proxy=True)``); every node is identified by what
Fleetboot saw of it on the link (``fleetboot.identity``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

from fleetboot.lab.netns import stop_process
from fleetboot.storm.fleetboot_stack import FleetbootStack
from fleetboot.storm.stacks import _last, wait_listening
from fleetboot.storm.topology import StormNet


@dataclass
class ProxyStack(FleetbootStack):
    kind: str = "proxy"
    _site: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, net: StormNet) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "site-dnsmasq.log"
        with log.open("wb") as out:
            self._site = net.server.popen(self._site_argv(net), stdout=out,
                                          stderr=subprocess.STDOUT)
        wait_listening(net, self._site, log, udp=(67,))
        try:
            super().start(net)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        stop_process(self._site)
        self._site = None

    def settings(self, net: StormNet) -> dict[str, Any]:
        settings = super().settings(net)
        settings.setdefault("dhcp", {})["proxy"] = True
        return settings

    def _site_argv(self, net: StormNet) -> list[str]:
        nw, n = self.plan.network, self.plan.n
        hosts = self.workdir / "site-dhcp-hosts"
        hosts.write_text("".join(f"{x.mac},{x.address},{x.name}\n" for x in self.plan.nodes))
        first = min(self.plan.nodes, key=lambda x: x.index).address
        return [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
            f"--interface={net.bridge}", "--bind-interfaces", "--no-ping",
            "--dhcp-authoritative",
            f"--dhcp-range={first},{_last(nw.node_net)},{nw.netmask},1h",
            f"--dhcp-hostsfile={hosts}",
            f"--dhcp-leasefile={self.workdir / 'site-dnsmasq.leases'}",
            f"--dhcp-lease-max={max(1000, 4 * n)}",
            "--log-facility=-", "--quiet-dhcp",
        ]
