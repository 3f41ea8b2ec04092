"""Native UEFI HTTP boot (issue 17, item 4): OVMF's own HTTP boot client, no TFTP.

OVMF with PXE switched off sends DHCP with vendor class ``HTTPClient``; Fleetboot
answers option 60 ``HTTPClient`` and the full URL of ``ipxe.efi`` in option 67, the
firmware fetches it over HTTP (HEAD, then GET) and iPXE goes on through the per-node
script to UP. The timeline shows the program came over HTTP and nothing over TFTP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fleetboot.lab import boots, firmware, guest, netns
from fleetboot.vm.firmware import OVMF_CODE

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]


def test_ovmf_http_boot_reaches_up(tmp_path: Path) -> None:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    if shutil.which("qemu-system-x86_64") is None or not OVMF_CODE.is_file():
        pytest.skip("needs qemu-system-x86 and ovmf (run scripts/install-system-deps.sh)")
    try:
        guests = boots.prepare_guests(["cloud"])
    except guest.GuestError as exc:
        pytest.skip(f"no guest kernel: {exc}")
    machine = firmware.http_boot_machine("hb1", 1, tmp_path / "fw")
    with boots.FleetLab.start(tmp_path / "fleet", [machine], guests=guests) as fleet:
        report = fleet.boot([machine], timeout_s=300)
        serial = fleet.vms[0].serial_text()
        timeline = fleet.server.timeline("hb1")
        log = fleet.server.log_tail(40)
    assert report.ok, f"{report.errors()}\n--- server log:\n{log}"
    print(f"OVMF HTTP boot: UP after {report.up_times()[0]:.1f} s")
    assert "Start HTTP Boot over IPv4" in serial, serial[-3000:]
    assert "/boot/files/ipxe.efi" in serial
    paths = [e.get("detail", {}).get("path") for e in timeline if e.get("source") == "http"]
    assert "ipxe.efi" in paths, timeline  # the firmware's own download, over HTTP
    assert not any(e.get("source") == "tftp" for e in timeline), timeline
    assert timeline[-1]["state"] == "UP"
