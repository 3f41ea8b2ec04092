"""The whole chain through Fleetboot's own services, on real firmware under TCG.

One real ``fleetboot serve`` in a lab namespace boots two VMs side by side, each to a
running Linux that configures itself and reports UP:

* ``bios-node``: SeaBIOS runs the virtio NIC's iPXE ROM -> Fleetboot DHCP hands iPXE
  its per-node script URL -> script, kernel and initrd over HTTP -> Linux's udhcpc;
* ``uefi-node``: OVMF's native PXE (no ROM: ``romfile=``) -> DHCP names ``snponly.efi``
  -> TFTP (after OVMF's tsize probe) -> iPXE -> the same HTTP chain.

The initramfs's init runs the node client that Fleetboot serves at
``/v1/self/client.sh`` (its URL and the per-boot token come from the script's kernel
command line). Both boots run once per test session (``shared_run``, also across xdist
workers); each test reads a different part of what the server recorded (the timeline
as ``fleetboot timeline NODE --json`` prints it, ``fleetboot nodes``, the admin API's
counters) and what the VMs printed on their serial consoles.

Issue 2: each firmware is offered the boot file for its architecture.
Issue 3: the BIOS whole chain (the same address in firmware and Linux); UEFI native
PXE over TFTP after the tsize probe.
Issue 4: end to end, one configuration request, hostname and file applied, UP, and
every phase of the boot on the timeline in order.
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
    IPXE_ADDRESS,
    SCRIPT_PATH,
    Event,
    Phase,
    console,
    describe,
    find_phases,
    linux_lease,
    node_doc,
    of,
    reply_to,
    require_chain,
    shared_run,
    subnet_doc,
    wait_poweroff,
)

from fleetboot.lab import guest, qemu
from fleetboot.lab.fleet import FleetbootServer, image_path, parse_timeline
from fleetboot.lab.netns import Lab

pytestmark = [
    pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow,
    # Both boots run once (shared_run), in the set-up of the first test to need them.
    pytest.mark.xdist_group("chain-firmware"),
    pytest.mark.timeout(480),
]

FIRMWARES = ("bios", "uefi")
MACS = {"bios": qemu.lab_mac(0xCA0001), "uefi": qemu.lab_mac(0xCA0002)}
PROFILE = "chain-linux"
BOOT_PROGRAM = "snponly.efi"  # the default architecture table's file for x86-64 UEFI
FILE_PATH = "/etc/fleetboot/chain-motd"
FILE_BODY = b"written by the Fleetboot node client from its one configuration request\n"
# Two TCG VMs at once on a loaded 2-core machine: ~20-40 s here, generous on purpose.
BOOT_TIMEOUT_S = 300.0


def node_name(firmware: str) -> str:
    return f"{firmware}-node"


def hostname(firmware: str) -> str:
    return f"{firmware}-configured"


@dataclass
class Booted:
    firmware: str
    mac: str
    console: str
    events: list[Event]
    error: str | None  # the VM did not power off in time (serial tail inside)

    def explain(self) -> str:
        return (f"--- {self.firmware} timeline:\n{describe(self.events)}\n"
                f"--- {self.firmware} console tail:\n{self.console[-2500:]}\n"
                + (f"--- error: {self.error}" if self.error else ""))


@dataclass
class ChainRun:
    """What one run of both boots left behind (plain data: shared between workers)."""

    server_url: str
    server_ip: str
    images: dict[str, str]  # name -> path under the boot root
    image_sizes: dict[str, int]
    boot_program_size: int
    booted: dict[str, Booted]
    stats: dict[str, Any]  # /v1/admin/nodeconfig/stats after both powered off
    nodes_table: str  # `fleetboot nodes`
    seconds: dict[str, float]  # QEMU start to power-off

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChainRun:
        booted = {fw: Booted(**b) for fw, b in data.pop("booted").items()}
        return cls(booted=booted, **data)


def _inventory(lab: Lab, kernel: str, initrd: str) -> dict[str, Any]:
    cmdline = guest.kernel_cmdline(end="poweroff") + " " + BOOTIF_ARG
    return {
        "profiles": [{"name": PROFILE, "kernel": kernel, "initrd": initrd, "cmdline": cmdline}],
        "subnets": [subnet_doc(lab)],
        "nodes": [node_doc(node_name(fw), [MACS[fw]], MACS[fw], PROFILE) for fw in FIRMWARES],
    }


def _config_commands() -> list[list[str]]:
    """`fleetboot config set` for each node: a hostname and a secret file (only served
    with the per-boot token, so writing it proves the token reached the client)."""
    item = {"path": FILE_PATH, "content_b64": base64.b64encode(FILE_BODY).decode(),
            "sha256": hashlib.sha256(FILE_BODY).hexdigest(), "mode": "0600", "secret": True}
    commands = []
    for fw in FIRMWARES:
        commands.append(["config", "set", node_name(fw), "hostname", hostname(fw)])
        commands.append(["config", "set", node_name(fw), "files", json.dumps([item])])
    return commands


def _vm_specs() -> list[qemu.VmSpec]:
    # UEFI native PXE: no option ROM on the NIC; BIOS: the NIC's own iPXE ROM.
    return [qemu.VmSpec("chain-bios", nics=(qemu.NicSpec(MACS["bios"], bootindex=1),),
                        no_reboot=True),
            qemu.VmSpec("chain-uefi", firmware="uefi", no_reboot=True,
                        nics=(qemu.NicSpec(MACS["uefi"], bootindex=1, rom=""),))]


def _boot_both(kernel: guest.GuestKernel, work: Path) -> dict[str, Any]:
    """Serve, boot both VMs to power-off, and collect what the tests look at."""
    initrd = guest.build_initramfs(kernel)
    sources = {"vmlinuz": kernel.vmlinuz, "initrd.img": initrd}
    paths = {name: image_path(src, name) for name, src in sources.items()}
    with Lab.create(with_bridge=True) as lab, qemu.start_router_advertiser(lab):
        server = FleetbootServer.start(
            lab, work / "server", _inventory(lab, paths["vmlinuz"], paths["initrd.img"]),
            images=sources, setup=_config_commands())
        vms: list[qemu.Vm] = []
        try:
            vms = [qemu.start_vm(spec, work / "vms", lab) for spec in _vm_specs()]
            seconds, errors = wait_poweroff(vms, BOOT_TIMEOUT_S)
            stats = server.admin_json("/v1/admin/nodeconfig/stats")
        finally:
            for vm in vms:
                vm.close()
            server.close()  # flushes the last timeline batch
        print("firmware chain: powered off (s after QEMU start):",
              {name: round(s, 1) for name, s in seconds.items()})
        # What an operator reads: `fleetboot timeline NODE --json` and `fleetboot nodes`.
        *timelines, nodes_table = server.cli_all(
            *(["timeline", node_name(fw), "--json"] for fw in FIRMWARES), ["nodes"])
        booted = {fw: asdict(Booted(fw, MACS[fw], console(vm), parse_timeline(timeline),
                                    errors.get(vm.name)))
                  for fw, vm, timeline in zip(FIRMWARES, vms, timelines, strict=True)}
        return {
            "server_url": server.url, "server_ip": lab.server_ip, "images": server.images,
            "image_sizes": {name: src.stat().st_size for name, src in sources.items()},
            "boot_program_size": (server.workdir / "bootroot" / BOOT_PROGRAM).stat().st_size,
            "booted": booted, "stats": stats, "nodes_table": nodes_table, "seconds": seconds,
        }


@pytest.fixture(scope="module")
def chain(cloud_kernel: guest.GuestKernel, tmp_path_factory: pytest.TempPathFactory) -> ChainRun:
    require_chain(uefi=True)
    return ChainRun.from_json(shared_run(tmp_path_factory, "chain-firmware",
                                         lambda work: _boot_both(cloud_kernel, work)))


# --- issue 2 ---------------------------------------------------------------------------


def _first_offer(booted: Booted) -> tuple[Event, Event]:
    discovers = of(booted.events, "dhcp", "DISCOVER", mac=booted.mac)
    assert discovers, f"no DHCPDISCOVER from {booted.mac}\n{booted.explain()}"
    return discovers[0], reply_to(booted.events, discovers[0], "OFFER")


def test_bios_ipxe_is_offered_its_per_node_script(chain: ChainRun) -> None:
    """SeaBIOS + iPXE ROM (arch 0): the first OFFER names iPXE's boot file, its per-node
    script over HTTP (never iPXE again, so it cannot loop), with no proxyDHCP round."""
    booted = chain.booted["bios"]
    discover, offer = _first_offer(booted)
    assert discover["detail"]["vendor_class"].startswith("PXEClient:Arch:00000"), \
        booted.explain()
    assert discover["detail"]["arch"] == 0 and discover["detail"]["ipxe"] is True
    assert offer["detail"]["boot"] == "ipxe", booted.explain()
    assert offer["detail"]["file"] == chain.server_url + SCRIPT_PATH


def test_uefi_native_pxe_is_offered_its_boot_program(chain: ChainRun) -> None:
    """OVMF's own PXE (arch 7, no iPXE): the first OFFER names snponly.efi for TFTP."""
    booted = chain.booted["uefi"]
    discover, offer = _first_offer(booted)
    assert discover["detail"]["vendor_class"].startswith("PXEClient:Arch:00007"), \
        booted.explain()
    assert discover["detail"]["arch"] == 7 and discover["detail"]["ipxe"] is False
    assert offer["detail"]["boot"] == "pxe", booted.explain()
    assert offer["detail"]["file"] == BOOT_PROGRAM


# --- issue 3 ---------------------------------------------------------------------------


def test_bios_whole_chain_linux_gets_the_same_address(chain: ChainRun) -> None:
    """DHCP -> per-node iPXE script -> kernel + initrd over HTTP -> Linux's own udhcpc,
    which is given the address the firmware had; the serial console proves each step."""
    booted = chain.booted["bios"]
    text = booted.console
    assert booted.error is None, booted.explain()
    assert f"Filename: {chain.server_url}{SCRIPT_PATH}" in text, booted.explain()
    # iPXE names each download (its "ok" after the initrd may be lost: Linux resets the
    # console right after); the server's side below shows both arrived whole.
    for name in ("vmlinuz", "initrd.img"):
        assert f"{chain.server_url}/boot/files/{chain.images[name]}..." in text
    assert "FLEETBOOT-INIT start" in text, booted.explain()
    ipxe_ip = IPXE_ADDRESS.search(text)
    assert ipxe_ip is not None, booted.explain()
    lease = linux_lease(text)
    assert lease is not None, booted.explain()
    assert lease.mac == booted.mac and lease.server == chain.server_ip
    assert lease.ip == ipxe_ip.group(1), booted.explain()
    # The server's side of it: both DHCP clients were ACKed that address, and the
    # script and both images went to it in full.
    acks = of(booted.events, "dhcp", "ACK", mac=booted.mac)
    firmware_acks = [a for a in acks if a["detail"].get("boot") == "ipxe"]
    linux_acks = [a for a in acks if "boot" not in a["detail"]]
    assert firmware_acks and linux_acks, booted.explain()
    assert {a["address"] for a in acks} == {lease.ip}
    assert of(booted.events, "http", "script", address=lease.ip, status=200)
    for name in ("vmlinuz", "initrd.img"):
        files = of(booted.events, "http", "file", path=chain.images[name], status=200)
        assert files, booted.explain()
        assert files[-1]["detail"]["bytes"] == chain.image_sizes[name]
        assert files[-1]["address"] == lease.ip


def test_uefi_fetches_its_boot_program_over_tftp_after_the_tsize_probe(
        chain: ChainRun) -> None:
    """OVMF asks for the size first (RRQ with tsize, then aborts with error 8), then
    downloads with blksize; Fleetboot answers both, and the whole file arrives."""
    booted = chain.booted["uefi"]
    tftp = of(booted.events, "tftp", mac=booted.mac)
    starts = [e for e in of(tftp, "tftp", "start") if e["detail"].get("file") == BOOT_PROGRAM]
    assert len(starts) >= 2, booted.explain()
    probe, transfer = starts[0], starts[1]
    assert "tsize" in probe["detail"]["options"], booted.explain()
    assert "blksize" in transfer["detail"]["options"], booted.explain()
    assert "tsize" not in transfer["detail"]["options"]
    ended = {e["detail"]["port"]: e for e in tftp if e["kind"] in ("done", "error")}
    aborted, done = ended[probe["detail"]["port"]], ended[transfer["detail"]["port"]]
    assert aborted["detail"]["outcome"] == "probe" and aborted["detail"]["error_code"] == 8
    assert done["kind"] == "done" and done["at"] > aborted["at"], booted.explain()
    assert done["detail"]["bytes"] == chain.boot_program_size
    assert done["detail"]["blksize"] > 512  # the negotiated block size, not the default
    assert "NBP file downloaded successfully" in booted.console, booted.explain()


# --- issue 4 ---------------------------------------------------------------------------


def _phases(firmware: str, images: dict[str, str]) -> list[Phase]:
    def dhcp(kind: str, boot: str | None) -> Any:
        return lambda e: (e["source"], e["kind"], e["detail"].get("boot")) == ("dhcp", kind,
                                                                               boot)

    def http(kind: str, path: str | None = None) -> Any:
        return lambda e: (e["source"] == "http" and e["kind"] == kind
                          and e["detail"].get("status") == 200
                          and (path is None or e["detail"].get("path") == path))

    firmware_phases = [
        Phase("firmware DHCP (boot program offered)", dhcp("ACK", "pxe"), "PXEBOOTING"),
        Phase("boot program over TFTP",
              lambda e: e["source"] == "tftp" and e["kind"] == "done", "PXEBOOTING"),
    ] if firmware == "uefi" else []
    return [
        *firmware_phases,
        Phase("iPXE DHCP (script URL)", dhcp("ACK", "ipxe"), "PXEBOOTING"),
        Phase("iPXE script over HTTP", http("script"), "PXEBOOTING"),
        Phase("kernel over HTTP", http("file", images["vmlinuz"]), "BOOTING"),
        Phase("initrd over HTTP", http("file", images["initrd.img"]), "BOOTING"),
        Phase("Linux DHCP", lambda e: e["source"] == "dhcp" and e["kind"] == "DISCOVER"
              and e["detail"].get("vendor_class", "").startswith("udhcp"), "BOOTING"),
        Phase("Linux lease", dhcp("ACK", None), "BOOTING"),
        Phase("configuration fetch",
              lambda e: (e["source"], e["kind"]) == ("config", "config"), "CONFIGURING"),
        Phase("UP reported", lambda e: (e["source"], e["kind"]) == ("node", "state")
              and e["detail"].get("state") == "UP", "UP"),
    ]


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_end_to_end_one_request_configures_the_node_and_it_reports_up(
        chain: ChainRun, firmware: str) -> None:
    booted = chain.booted[firmware]
    text = booted.console
    assert booted.error is None, booted.explain()
    # The init ran the client Fleetboot serves, which fetched once, applied and reported.
    assert f"FLEETBOOT-HOOK start src={chain.server_url}/v1/self/client.sh" in text
    assert f"FLEETBOOT-CONFIG hostname name={hostname(firmware)}" in text, booted.explain()
    assert f"FLEETBOOT-CONFIG file path={FILE_PATH} bytes={len(FILE_BODY)}" in text
    assert "FLEETBOOT-STATE UP" in text and "FLEETBOOT-HOOK end rc=0" in text
    assert text.count("FLEETBOOT-CONFIG fetched") == 1
    # Exactly one configuration request: one fetch event for this node, no repeats
    # folded into it, and the server answered as many fetches as nodes booted.
    fetches = of(booted.events, "config", "config")
    assert len(fetches) == 1 and "repeats_before" not in fetches[0]["detail"], booted.explain()
    assert fetches[0]["detail"]["status"] == 200
    assert chain.stats["fetches"] == len(FIRMWARES), chain.stats
    # Every phase, in order, each with the node state it moved the node to.
    phases = _phases(firmware, chain.images)
    found = find_phases(booted.events, phases)
    missing = [p.name for p, i in zip(phases, found, strict=True) if i is None]
    assert not missing, f"phases missing or out of order: {missing}\n{booted.explain()}"
    states = {p.name: booted.events[i]["state"] for p, i in zip(phases, found, strict=True)
              if i is not None}
    assert states == {p.name: p.state for p in phases}, booted.explain()
    assert booted.events[-1]["state"] == "UP"
    row = next((line for line in chain.nodes_table.splitlines()
                if f" {node_name(firmware)} " in line), "")
    assert " UP " in row, chain.nodes_table
