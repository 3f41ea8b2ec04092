"""Multi-NIC (seed 000, issue 3): only the designated boot NIC gets a boot file, and the VM
boots through it, in 5 of 5 runs.

Seed 000: a VM with several NICs PXE-booted from whichever NIC's firmware got an answer
first. Per-NIC ROM control is the VM side's half (``fleetboot.vm`` gives only the boot
NIC a ROM and a ``bootindex``); this is the DHCP side's half. Every NIC here has its
model's iPXE ROM and nothing sets a boot order, as in QEMU's defaults, so SeaBIOS tries
the NICs in PCI order: virtio first, then e1000, then rtl8139. The inventory names the
e1000 as the node's boot NIC. Fleetboot must answer the virtio NIC with an address and
no boot file (iPXE then says "Nothing to boot" and SeaBIOS moves on), hand the e1000
its script, and never give any other NIC a boot file. Linux then comes up on the e1000:
iPXE puts the MAC it booted from on the kernel command line (``BOOTIF``), and the
initramfs configures that NIC.

The five runs are five VMs booting at the same time, one node each, through one
server: independent firmware runs that share one server start-up. Seen here (2 cores,
load 5-12 from other work): all five powered off 41-54 s after start, the module
45-60 s alone and 90-145 s beside other VM tests; one after another would take ~2.5 min.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from chain_helpers import (
    BOOTIF_ARG,
    SCRIPT_PATH,
    Event,
    all_events,
    boot_files_by_mac,
    console,
    describe,
    dhcp_macs,
    linux_lease,
    node_doc,
    of,
    require_chain,
    shared_run,
    subnet_doc,
    wait_poweroff,
)

from fleetboot.lab import guest, qemu
from fleetboot.lab.fleet import FleetbootServer, image_path
from fleetboot.lab.netns import Lab

pytestmark = [
    pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow,
    # The five boots run once (shared_run), in the set-up of the first test to need them.
    pytest.mark.xdist_group("chain-multinic"),
    pytest.mark.timeout(600),
]

RUNS = 5
MODELS = ("virtio-net-pci", "e1000", "rtl8139")  # QEMU's PCI order = SeaBIOS's try order
BOOT_MODEL = "e1000"
PROFILE = "chain-linux"
# Five TCG guests with the generic kernel on two loaded cores: ~50 s seen here.
BOOT_TIMEOUT_S = 400.0


@dataclass
class Run:
    """One VM's boot (plain data: shared between workers)."""

    name: str
    nics: list[tuple[str, str]]  # (model, MAC) in PCI order
    server_url: str
    console: str
    events: list[Event]
    error: str | None
    seconds: float | None  # QEMU start to power-off

    @property
    def boot_mac(self) -> str:
        return next(mac for model, mac in self.nics if model == BOOT_MODEL)

    @property
    def other_macs(self) -> set[str]:
        return {mac for _, mac in self.nics} - {self.boot_mac}

    def explain(self) -> str:
        return (f"--- {self.name} ({', '.join(f'{m}={mac}' for m, mac in self.nics)})\n"
                f"{describe(self.events)}\n--- console tail:\n{self.console[-2500:]}\n"
                + (f"--- error: {self.error}" if self.error else ""))


def _machines() -> list[qemu.VmSpec]:
    # No bootindex and no romfile: every NIC has its iPXE ROM, SeaBIOS tries them in turn.
    return [qemu.VmSpec(f"multi{i}", no_reboot=True, nics=tuple(
        qemu.NicSpec(qemu.lab_mac(0xCB0000 + i * 16 + j), model=model)
        for j, model in enumerate(MODELS))) for i in range(RUNS)]


def _inventory(lab: Lab, specs: list[qemu.VmSpec], kernel: str, initrd: str) -> dict[str, Any]:
    nodes = []
    for spec in specs:
        macs = [n.mac for n in spec.nics]
        boot = next(n.mac for n in spec.nics if n.model == BOOT_MODEL)
        nodes.append(node_doc(spec.name, macs, boot, PROFILE))
    cmdline = guest.kernel_cmdline(end="poweroff") + " " + BOOTIF_ARG
    return {"profiles": [{"name": PROFILE, "kernel": kernel, "initrd": initrd,
                          "cmdline": cmdline}],
            "subnets": [subnet_doc(lab)], "nodes": nodes}


def _boot_all(kernel: guest.GuestKernel, work: Path) -> dict[str, Any]:
    initrd = guest.build_initramfs(kernel)
    sources = {"vmlinuz": kernel.vmlinuz, "initrd.img": initrd}
    paths = {name: image_path(src, name) for name, src in sources.items()}
    specs = _machines()
    with Lab.create(with_bridge=True) as lab, qemu.start_router_advertiser(lab):
        server = FleetbootServer.start(
            lab, work / "server", _inventory(lab, specs, paths["vmlinuz"], paths["initrd.img"]),
            images=sources)
        vms: list[qemu.Vm] = []
        try:
            vms = [qemu.start_vm(spec, work / "vms", lab) for spec in specs]
            seconds, errors = wait_poweroff(vms, BOOT_TIMEOUT_S)
        finally:
            for vm in vms:
                vm.close()
            server.close()  # flushes the last timeline batch
        print("multi-NIC: powered off (s after QEMU start):",
              {name: round(s, 1) for name, s in seconds.items()})
        runs = [Run(spec.name, [(n.model, n.mac) for n in spec.nics], server.url, console(vm),
                    all_events(server, spec.name), errors.get(vm.name), seconds.get(vm.name))
                for spec, vm in zip(specs, vms, strict=True)]
        return {"runs": [asdict(run) for run in runs]}


@pytest.fixture(scope="module")
def runs(generic_kernel: guest.GuestKernel,
         tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    require_chain()
    data = shared_run(tmp_path_factory, "chain-multinic",
                      lambda work: _boot_all(generic_kernel, work))
    return [Run(**{**run, "nics": [tuple(nic) for nic in run["nics"]]}) for run in data["runs"]]


def test_only_the_designated_nic_gets_a_boot_file(runs: list[Run]) -> None:
    for run in runs:
        # Every OFFER/ACK that carried a boot file went to the boot NIC, and it was
        # iPXE's per-node script.
        files = boot_files_by_mac(run.events)
        assert files == {run.boot_mac: {run.server_url + SCRIPT_PATH}}, run.explain()
        # The firmware really tried another NIC first (the seed's situation): the
        # virtio NIC asked and was answered with an address only.
        others = dhcp_macs(run.events) & run.other_macs
        assert others, run.explain()
        for mac in others:
            assert of(run.events, "dhcp", "ACK", mac=mac), run.explain()
        assert "Nothing to boot" in run.console, run.explain()


def test_every_run_boots_through_the_designated_nic(runs: list[Run]) -> None:
    booted = []
    for run in runs:
        assert run.error is None, run.explain()
        lease = linux_lease(run.console)
        assert lease is not None, run.explain()
        # Linux configured the NIC iPXE booted from, and got the boot NIC's address.
        assert lease.mac == run.boot_mac, run.explain()
        boot_acks = of(run.events, "dhcp", "ACK", mac=run.boot_mac)
        assert {a["address"] for a in boot_acks} == {lease.ip}, run.explain()
        # Script, kernel and initrd all went to the boot NIC's address.
        http = of(run.events, "http")
        assert http and {e["address"] for e in http} == {lease.ip}, run.explain()
        assert len(of(run.events, "http", "file", status=200)) == 2, run.explain()
        assert of(run.events, "node", "state", state="UP"), run.explain()
        booted.append(run.name)
    assert len(booted) == RUNS  # 5 of 5

