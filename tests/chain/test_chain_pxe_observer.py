"""Per-NIC PXE control (seed 000, issue 5) observed by Fleetboot's own DHCP server.

``tests/vm/test_vm_qemu_pxe.py`` watches dnsmasq's log; here a real ``fleetboot serve``
is the DHCP server, and its boot timelines are the observation. Two Fleetboot-managed
VMs (``fleetboot.vm``: ``-boot strict=on``, ``bootindex`` and the ROM on the designated
NIC only, ``romfile=""`` on every other) PXE-boot on the lab bridge:

* ``mixed``: virtio, e1000, rtl8139; the e1000 is the boot NIC;
* ``same``: two e1000s; the second is the boot NIC (per NIC, not per model).

Each is an inventory node whose interfaces are all its NICs, so any DHCP message from
any of them lands on that node's timeline. The node boots an iPXE script that hands
control straight back to the firmware (``exit 1``), so a firmware that would try more
NICs does so at once. Only the designated MACs may ever ask.

A control VM built the classic way (every NIC with its model's ROM, no boot order)
runs beside them and shows that the same observation window does catch a
firmware's other NICs asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from chain_helpers import (
    Event,
    all_events,
    boot_files_by_mac,
    describe,
    dhcp_macs,
    node_doc,
    of,
    require_chain,
    shared_run,
    subnet_doc,
    wait_until,
)

from fleetboot.inventory.db import Database
from fleetboot.lab import qemu
from fleetboot.lab.fleet import FleetbootServer
from fleetboot.lab.netns import Lab
from fleetboot.vm.planner import Family
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, parse_nic

pytestmark = [
    pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow,
    # The watch runs once (shared_run), in the set-up of the first test to need it.
    pytest.mark.xdist_group("chain-pxe-observer"),
    pytest.mark.timeout(420),
]

HAND_BACK = "#!ipxe\necho Fleetboot test: handing back to the firmware\nexit 1\n"
# (models, index of the boot NIC); MACs are fixed so the inventory can name them.
MANAGED = {"mixed": (("virtio-net-pci", "e1000", "rtl8139"), 1),
           "same": (("e1000", "e1000"), 1)}
CONTROL_MODELS = ("virtio-net-pci", "e1000", "rtl8139")
# After a NIC's iPXE has run `exit 1`, a firmware that may try another NIC does so
# within ~10 s (iPXE's own configure time; measured in tests/vm/test_vm_qemu_pxe.py).
WINDOW_S = 20.0
BOOT_TIMEOUT_S = 150.0


def _macs(base: int, count: int) -> list[str]:
    return [qemu.lab_mac(base + i) for i in range(count)]


@dataclass
class Observed:
    """Every node's timeline after the watch (plain data: shared between workers)."""

    macs: dict[str, list[str]]  # node -> its NICs' MACs, in PCI order
    boot_mac: dict[str, str]
    events: dict[str, list[Event]]

    def explain(self, node: str) -> str:
        return f"--- {node} {self.macs[node]} boot={self.boot_mac[node]}\n" + describe(
            self.events[node])


def _wait_script(server: FleetbootServer, node: str) -> float:
    """When ``node``'s boot NIC fetched its iPXE script (wall clock, as recorded)."""
    def fetched() -> float | None:
        scripts = of(all_events(server, node), "http", "script", status=200)
        return float(scripts[0]["at"]) if scripts else None

    return wait_until(fetched, BOOT_TIMEOUT_S, f"{node}'s boot NIC to fetch its script")


def _kill_qemus_under(directory: Path) -> None:
    """Last resort: SIGKILL the QEMUs whose command line names our unique run directory
    (only ours: the directory is new). Deleting the lab namespace kills them too."""
    marker = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if marker in cmdline and b"qemu-system" in cmdline:
                os.kill(int(entry.name), signal.SIGKILL)


async def _start_managed(vms: VmService, lab: Lab, macs: dict[str, list[str]]) -> None:
    for name, (models, boot) in MANAGED.items():
        nics = tuple(parse_nic(f"model={model},mac={mac},backend=bridge:{lab.bridge}"
                               + (",boot" if i == boot else ""))
                     for i, (model, mac) in enumerate(zip(models, macs[name], strict=True)))
        await vms.create(CreateSpec(name, Family.Q35, memory_mib=256, nics=nics,
                                    netns=lab.server.name))
        await vms.start(name)


async def _stop_managed(vms: VmService) -> None:
    for name in MANAGED:
        with contextlib.suppress(Exception):
            await vms.stop(name)


def _observe(work: Path) -> dict[str, Any]:
    """Boot the managed VMs and the control, watch, and return every node's timeline."""
    run_dir = Path(tempfile.mkdtemp(prefix="fbch", dir="/tmp"))  # short: QMP socket paths
    macs = {"mixed": _macs(0xCC0010, 3), "same": _macs(0xCC0020, 2),
            "control": _macs(0xCC0030, 3)}
    boot_mac = {name: macs[name][boot] for name, (_, boot) in MANAGED.items()}
    boot_mac["control"] = macs["control"][CONTROL_MODELS.index("e1000")]
    inventory: dict[str, Any] = {
        "profiles": [{"name": "hand-back", "script": HAND_BACK}],
        "nodes": [node_doc(n, macs[n], boot_mac[n], "hand-back") for n in macs],
    }
    db = Database(f"sqlite:///{work}/vms.db")  # the VM inventory of fleetboot.vm
    db.create_schema()
    vms = VmService(db, VmSettings(run_dir=run_dir, image_dir=work / "images",
                                   unplug_timeout=2.0))
    control = qemu.VmSpec("control", nics=tuple(
        qemu.NicSpec(mac, model=model)
        for model, mac in zip(CONTROL_MODELS, macs["control"], strict=True)))
    try:
        with Lab.create(with_bridge=True) as lab, qemu.start_router_advertiser(lab):
            inventory["subnets"] = [subnet_doc(lab)]
            server = FleetbootServer.start(lab, work / "server", inventory)
            try:
                asyncio.run(_start_managed(vms, lab, macs))
                with qemu.start_vm(control, work / "vms", lab):
                    fetched = [_wait_script(server, n) for n in MANAGED]
                    # Watch a full window after the last boot NIC handed back.
                    time.sleep(max(0.0, max(fetched) + WINDOW_S - time.time()))
                    wait_until(lambda: len(dhcp_macs(all_events(server, "control"))) >= 3,
                               BOOT_TIMEOUT_S, "every NIC of the control VM to ask")
            finally:
                asyncio.run(_stop_managed(vms))
                server.close()
            events = {n: all_events(server, n) for n in macs}
    finally:
        _kill_qemus_under(run_dir)
        db.dispose()
        shutil.rmtree(run_dir, ignore_errors=True)
    for n in macs:
        print(f"observer: {n} NICs {macs[n]} boot {boot_mac[n]}: DHCP heard from "
              f"{sorted(dhcp_macs(events[n]))}")
    return asdict(Observed(macs, boot_mac, events))


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Observed:
    require_chain()
    if shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-utils (run scripts/install-system-deps.sh)")
    return Observed(**shared_run(tmp_path_factory, "chain-pxe-observer", _observe))


@pytest.mark.parametrize("node", list(MANAGED))
def test_fleetboot_sees_pxe_only_from_the_designated_nic(observed: Observed, node: str) -> None:
    events = observed.events[node]
    boot = observed.boot_mac[node]
    assert dhcp_macs(events) == {boot}, observed.explain(node)
    # It was a PXE request (iPXE from the boot NIC's ROM), answered with the script.
    discovers = of(events, "dhcp", "DISCOVER", mac=boot)
    assert discovers and all(d["detail"]["vendor_class"].startswith("PXEClient")
                             for d in discovers), observed.explain(node)
    assert set(boot_files_by_mac(events)) == {boot}
    assert of(events, "http", "script", status=200), observed.explain(node)


def test_control_fleetboot_sees_every_nic_of_a_classic_vm(observed: Observed) -> None:
    """Without per-NIC control every NIC PXE-boots in turn and the observer sees each
    one ask (so silence from the managed VMs' other NICs means something); still only
    the designated NIC is given a boot file."""
    events = observed.events["control"]
    assert dhcp_macs(events) == set(observed.macs["control"]), observed.explain("control")
    assert set(boot_files_by_mac(events)) == {observed.boot_mac["control"]}
