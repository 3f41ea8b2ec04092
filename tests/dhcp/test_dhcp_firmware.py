"""Real firmware against the DHCP service: QEMU (TCG) with SeaBIOS + the iPXE ROM, and
OVMF with native UEFI PXE (no option ROM). Each must be offered the boot answer for
its architecture in the very first OFFER (no proxyDHCP round)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dhcp_helpers import Inventory, NodeSpec, ServerProcess

from fleetboot.inventory.db import Database
from fleetboot.lab.netns import Lab
from fleetboot.lab.qemu import NicSpec, VmSpec, lab_mac, start_vm

pytestmark = [
    pytest.mark.netns,
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU missing"),
]

BIOS_MAC = lab_mac(0x0D0001)
UEFI_MAC = lab_mac(0x0D0002)


def test_bios_ipxe_and_uefi_pxe_vms_are_offered_their_boot_file(
        bridged_lab: Lab, tmp_path: Path) -> None:
    db_path = tmp_path / "fleetboot.db"
    db = Database(f"sqlite:///{db_path}")
    db.create_schema()
    Inventory(nodes=[NodeSpec("bios-vm", [BIOS_MAC]), NodeSpec("uefi-vm", [UEFI_MAC])]).write(db)
    db.dispose()
    lab = bridged_lab
    with ServerProcess(lab, tmp_path, {"interfaces": [lab.server_dev]}, db_path) as server:
        server.start()
        bios = VmSpec("fbdhcp-bios", nics=(NicSpec(BIOS_MAC, bootindex=1),))
        uefi = VmSpec("fbdhcp-uefi", firmware="uefi", nics=(NicSpec(UEFI_MAC, rom="",
                                                                    bootindex=1),))
        with start_vm(bios, tmp_path / "bios", lab), start_vm(uefi, tmp_path / "uefi", lab):
            # SeaBIOS runs the NIC's iPXE ROM: iPXE is given its script, not iPXE again.
            ipxe_offer = server.wait_event({"kind": "OFFER", "mac": BIOS_MAC}, timeout=90)
            uefi_offer = server.wait_event({"kind": "OFFER", "mac": UEFI_MAC}, timeout=90)
            ipxe_ask = server.wait_event({"kind": "DISCOVER", "mac": BIOS_MAC})
            uefi_ask = server.wait_event({"kind": "DISCOVER", "mac": UEFI_MAC})
    assert ipxe_ask["ipxe"] and ipxe_ask["arch"] == 0
    assert ipxe_offer["boot"] == "ipxe"
    assert ipxe_offer["file"] == "http://10.77.0.1:8080/boot/script.ipxe"
    assert uefi_ask["vendor_class"].startswith("PXEClient:Arch:00007")
    assert uefi_offer["boot"] == "pxe" and uefi_offer["file"] == "snponly.efi"
