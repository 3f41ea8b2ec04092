"""proxyDHCP end to end with real firmware (issue 21): Fleetboot beside the site's own
DHCP server, dnsmasq giving addresses only, as the issue's reproducer runs it.

One shared run in a lab namespace (dnsmasq and ``fleetboot serve`` with
``dhcp.proxy: true`` on br0):

* ``bios-node``: SeaBIOS + the NIC's iPXE ROM -> address from dnsmasq, script URL from
  Fleetboot's proxy offer -> script, kernel, initrd -> Linux (udhcpc from dnsmasq) ->
  one configuration request -> UP;
* ``uefi-node``: OVMF's native PXE -> proxy offer -> snponly.efi over TFTP -> iPXE ->
  the same chain -> UP;
* then a machine not in the inventory (SeaBIOS + iPXE) to which dnsmasq gives the address
  Fleetboot's lease table still held for ``bios-node`` from before proxy mode: it is told
  to wait, gets no node's script, token or configuration, and no node's timeline shows it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from chain_helpers import (
    BOOTIF_ARG,
    Event,
    console,
    describe,
    node_doc,
    of,
    require_chain,
    shared_run,
    wait_poweroff,
    wait_until,
)

from fleetboot.lab import guest, qemu
from fleetboot.lab.fleet import FleetbootServer, image_path
from fleetboot.lab.netns import Lab
from fleetboot.lab.sitedhcp import SiteDhcp, have_dnsmasq, stale_lease_database

pytestmark = [
    pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow,
    pytest.mark.xdist_group("chain-proxy"),
    pytest.mark.timeout(600),
]

FIRMWARES = ("bios", "uefi")
MACS = {"bios": qemu.lab_mac(0xCB0001), "uefi": qemu.lab_mac(0xCB0002)}
STRANGER_MAC = qemu.lab_mac(0xCB00EE)
PROFILE = "proxy-linux"
FILE_PATH = "/etc/fleetboot/proxy-motd"
FILE_BODY = b"served through proxyDHCP beside the site's DHCP server\n"
SUBNET = "10.97.0"
STALE_ADDRESS = f"{SUBNET}.120"  # bios-node's lease from before proxy mode; dnsmasq's pick
BOOT_TIMEOUT_S = 300.0
STRANGER_WAIT_S = 150.0


def node_name(firmware: str) -> str:
    return f"{firmware}-node"


@dataclass
class ProxyRun:
    server_url: str
    server_ip: str
    consoles: dict[str, str]
    errors: dict[str, str]
    events: dict[str, list[Event]]  # node -> every boot's events
    nodes_table: str
    stranger_console: str
    site_acks: dict[str, list[str]]  # MAC -> addresses dnsmasq ACKed
    log: str

    def explain(self, firmware: str) -> str:
        return (f"--- {firmware} timeline:\n{describe(self.events[node_name(firmware)])}\n"
                f"--- console tail:\n{self.consoles[firmware][-2500:]}\n"
                f"--- error: {self.errors.get(firmware)}\n--- server log:\n{self.log[-2000:]}")


def _inventory(kernel: str, initrd: str) -> dict[str, Any]:
    cmdline = guest.kernel_cmdline(end="poweroff") + " " + BOOTIF_ARG
    # The subnet has no pool: in proxy mode Fleetboot gives no addresses.
    return {
        "profiles": [{"name": PROFILE, "kernel": kernel, "initrd": initrd, "cmdline": cmdline}],
        "subnets": [{"name": "site", "cidr": f"{SUBNET}.0/24", "router": f"{SUBNET}.1",
                     "lease_seconds": 3600}],
        "nodes": [node_doc(node_name(fw), [MACS[fw]], MACS[fw], PROFILE) for fw in FIRMWARES],
    }


def _setup() -> list[list[str]]:
    item = {"path": FILE_PATH, "content_b64": base64.b64encode(FILE_BODY).decode(),
            "sha256": hashlib.sha256(FILE_BODY).hexdigest(), "mode": "0600", "secret": True}
    return [["config", "set", node_name(fw), "files", json.dumps([item])] for fw in FIRMWARES]


def _all_events(server: FleetbootServer, node: str) -> list[Event]:
    last = max((e["boot"] for e in server.timeline(node)), default=1)
    return [e for boot in range(1, last + 1) for e in server.timeline(node, boot)]


def _run(kernel: guest.GuestKernel, work: Path) -> dict[str, Any]:
    initrd = guest.build_initramfs(kernel)
    sources = {"vmlinuz": kernel.vmlinuz, "initrd.img": initrd}
    paths = {name: image_path(src, name) for name, src in sources.items()}
    with Lab.create(subnet=SUBNET, with_bridge=True) as lab, \
            qemu.start_router_advertiser(lab):
        lab.client.ip("link", "set", lab.client_if, "down")
        site = SiteDhcp.start(lab.server, "br0", f"{SUBNET}.100", f"{SUBNET}.199",
                              work / "site", hosts=[(STRANGER_MAC, STALE_ADDRESS)])
        server = None
        vms: list[qemu.Vm] = []
        try:
            server = FleetbootServer.start(
                lab, work / "server", _inventory(paths["vmlinuz"], paths["initrd.img"]),
                images=sources, setup=_setup(), config={"dhcp": {"proxy": True}},
                database_url=stale_lease_database(work / "server", STALE_ADDRESS,
                                                  MACS["bios"]))
            specs = [qemu.VmSpec("proxy-bios", nics=(qemu.NicSpec(MACS["bios"], bootindex=1),),
                                 no_reboot=True),
                     qemu.VmSpec("proxy-uefi", firmware="uefi", no_reboot=True,
                                 nics=(qemu.NicSpec(MACS["uefi"], bootindex=1, rom=""),))]
            vms = [qemu.start_vm(spec, work / "vms", lab) for spec in specs]
            _, errors = wait_poweroff(vms, BOOT_TIMEOUT_S)
            consoles = {fw: console(vm) for fw, vm in zip(FIRMWARES, vms, strict=True)}
            for vm in vms:
                vm.close()
            # The stranger: one machine, after the nodes (two cores, shared).
            stranger = qemu.start_vm(
                qemu.VmSpec("proxy-stranger", nics=(qemu.NicSpec(STRANGER_MAC, bootindex=1),)),
                work / "vms", lab)
            vms.append(stranger)
            wait_until(lambda: console(stranger).count("for unknown machine") >= 2, STRANGER_WAIT_S,
                       "the stranger to be told to wait twice")
            stranger_console = console(stranger)
            stranger.close()
            server.close()  # flushes the last timeline batch
            events = {node_name(fw): _all_events(server, node_name(fw)) for fw in FIRMWARES}
            names = {fw: spec.name for fw, spec in zip(FIRMWARES, specs, strict=True)}
            nodes_table = server.cli("nodes").stdout
            return asdict(ProxyRun(server.url, lab.server_ip,
                                   {fw: consoles[fw] for fw in FIRMWARES},
                                   {fw: errors[names[fw]] for fw in FIRMWARES
                                    if names[fw] in errors},
                                   events, nodes_table, stranger_console,
                                   {m: site.acked(m) for m in (*MACS.values(), STRANGER_MAC)},
                                   server.log_tail(200)))
        finally:
            for vm in vms:
                vm.close()
            if server is not None:
                server.close()
            site.close()


@pytest.fixture(scope="module")
def proxy_run(cloud_kernel: guest.GuestKernel,
              tmp_path_factory: pytest.TempPathFactory) -> ProxyRun:
    require_chain(uefi=True)
    if not have_dnsmasq():
        pytest.skip("needs dnsmasq (dnsmasq-base) as the site's DHCP server")
    return ProxyRun(**shared_run(tmp_path_factory, "chain-proxy",
                                 lambda work: _run(cloud_kernel, work)))


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_firmware_boots_to_up_through_proxy_dhcp(proxy_run: ProxyRun, firmware: str) -> None:
    text = proxy_run.consoles[firmware]
    name = node_name(firmware)
    events = proxy_run.events[name]
    assert firmware not in proxy_run.errors, proxy_run.explain(firmware)
    assert "FLEETBOOT-STATE UP" in text, proxy_run.explain(firmware)
    assert "FLEETBOOT-CONFIG fetched" in text
    assert f"FLEETBOOT-CONFIG file path={FILE_PATH} bytes={len(FILE_BODY)}" in text
    # Every address came from the site server; Fleetboot only proxied.
    acked = proxy_run.site_acks[MACS[firmware]]
    assert acked, proxy_run.explain(firmware)
    proxied = [e for e in of(events, "dhcp", "OFFER") if e["detail"].get("dir") == "tx"]
    assert proxied and all(e["address"] is None for e in proxied), proxy_run.explain(firmware)
    # The site server's part is on the timeline: its ACKs seen, and from whom.
    seen = [e for e in of(events, "dhcp", "ACK") if e["detail"].get("dir") == "seen"]
    assert seen and {e["detail"]["server"] for e in seen} == {proxy_run.server_ip}
    assert {e["address"] for e in seen} <= set(acked)
    scripts = of(events, "http", "script", status=200, node=name, boot="profile")
    assert scripts and scripts[0]["address"] in acked, proxy_run.explain(firmware)
    config = of(events, "config", "config", status=200)
    assert config, proxy_run.explain(firmware)
    assert events[-1]["state"] == "UP", proxy_run.explain(firmware)
    row = next((line for line in proxy_run.nodes_table.splitlines() if f" {name} " in line), "")
    assert " UP " in row, proxy_run.nodes_table


def test_a_machine_not_in_the_inventory_waits_and_a_stale_lease_names_nobody(
        proxy_run: ProxyRun) -> None:
    """dnsmasq gives the stranger the address bios-node's old Fleetboot lease names."""
    assert proxy_run.site_acks[STRANGER_MAC][:1] == [STALE_ADDRESS], proxy_run.site_acks
    text = proxy_run.stranger_console
    assert f"for unknown machine {STRANGER_MAC}" in text, text[-2000:]
    assert "FLEETBOOT-INIT" not in text
    assert "booting profile" not in text
    for firmware in FIRMWARES:
        events = proxy_run.events[node_name(firmware)]
        assert not [e for e in events if e["address"] == STALE_ADDRESS], describe(events)
        assert not [e for e in events if e["mac"] == STRANGER_MAC]
    assert "ignoring 1 leases" in proxy_run.log
