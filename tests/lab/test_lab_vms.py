"""Real QEMU VMs (TCG) in a namespace lab, served by dnsmasq and Python's HTTP server.

These prove the lab building blocks that Fleetboot's own whole-chain tests,
``bench/storm_qemu.py`` and ``make demo`` use: the guest initramfs gets a lease
on the right NIC and runs its hook; BIOS iPXE and UEFI VMs send PXE DHCP.
"""

from __future__ import annotations

import gzip
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from labvm_helpers import (
    IPXE_EFI,
    chain_dnsmasq_options,
    discover_classes,
    start_dnsmasq,
    start_http,
    write_chain_files,
)

from fleetboot.lab import guest, qemu
from fleetboot.lab.netns import Lab

pytestmark = [pytest.mark.qemu, pytest.mark.netns]

HOOK = b"""#!/bin/sh
lease="ip=$FLEETBOOT_IP mac=$FLEETBOOT_MAC dhcp=$FLEETBOOT_DHCP_SERVER"
echo "HOOK-SAW $lease token=$FLEETBOOT_TOKEN"
/usr/bin/lab-hello
exit 3
"""
HELLO = b'#!/bin/sh\necho "HELLO-FROM-BAKED-IN-FILE"\n'


def order_of(text: str, needles: list[str]) -> list[int]:
    return [text.find(n) for n in needles]


def test_direct_boot_gets_lease_runs_hook_and_powers_off(
    bridged_lab: Lab, cloud_kernel: guest.GuestKernel, tmp_path: Path
) -> None:
    initrd = guest.build_initramfs(
        cloud_kernel, extra_files=[guest.ExtraFile("/usr/bin/lab-hello", HELLO)])
    www = tmp_path / "www"
    www.mkdir()
    (www / "hook.sh").write_bytes(HOOK)
    dnsmasq = start_dnsmasq(bridged_lab, tmp_path)
    http = start_http(bridged_lab, www, tmp_path)
    mac = qemu.lab_mac(0x10)
    append = guest.kernel_cmdline(mac=mac, hook=f"http://{bridged_lab.server_ip}:8080/hook.sh",
                                  extra={"token": "t0k3n"})
    spec = qemu.VmSpec("direct", nics=(qemu.NicSpec(mac, rom=""),),
                       direct=qemu.DirectBoot(cloud_kernel.vmlinuz, initrd, append))
    try:
        with qemu.start_vm(spec, tmp_path, bridged_lab) as vm:
            lease, at_lease = vm.wait_lease(timeout=45)
            off = vm.wait_exit(timeout=30)
    finally:
        dnsmasq.close()
        http.close()
    print(f"direct boot: lease {at_lease.elapsed:.1f} s, poweroff {off:.1f} s after QEMU start")
    assert lease.mac == mac and lease.iface == "eth0" and lease.server == bridged_lab.server_ip
    assert lease.ip.startswith("10.77.0.") and lease.router == bridged_lab.server_ip
    text = vm.serial_text()
    assert f"HOOK-SAW ip={lease.ip} mac={mac} dhcp={bridged_lab.server_ip} token=t0k3n" in text
    steps = ["FLEETBOOT-INIT start", "FLEETBOOT-INIT nic", "FLEETBOOT-LEASE",
             "FLEETBOOT-HOOK start", "HELLO-FROM-BAKED-IN-FILE", "FLEETBOOT-HOOK end rc=3",
             "FLEETBOOT-INIT end"]
    positions = order_of(text, steps)
    assert -1 not in positions and positions == sorted(positions), text
    assert "FLEETBOOT-ERROR" not in text
    assert mac in (tmp_path / "dnsmasq.leases").read_text()


@pytest.mark.parametrize("model", ["e1000", "rtl8139"])
def test_initramfs_uses_the_bootif_nic_among_three(
    bridged_lab: Lab, generic_kernel: guest.GuestKernel, tmp_path: Path, model: str
) -> None:
    """Multi-NIC (seed 000): only the NIC named by BOOTIF (as iPXE passes it) asks for a lease."""
    models = ["virtio-net-pci", "e1000", "rtl8139"]
    nics = tuple(qemu.NicSpec(qemu.lab_mac(0x20 + i), model=m, rom="")
                 for i, m in enumerate(models))
    boot_mac = nics[models.index(model)].mac
    bootif = "01-" + boot_mac.replace(":", "-").upper()
    initrd = guest.build_initramfs(generic_kernel)
    append = guest.kernel_cmdline() + f" BOOTIF={bootif}"
    dnsmasq = start_dnsmasq(bridged_lab, tmp_path)
    spec = qemu.VmSpec(f"nic-{model}", nics=nics,
                       direct=qemu.DirectBoot(generic_kernel.vmlinuz, initrd, append))
    try:
        with qemu.start_vm(spec, tmp_path, bridged_lab) as vm:
            lease, at_lease = vm.wait_lease(timeout=50)
            vm.wait_exit(timeout=20)
    finally:
        dnsmasq.close()
    print(f"{model}: lease {at_lease.elapsed:.1f} s after QEMU start")
    assert lease.mac == boot_mac
    log = dnsmasq.text()
    assert all(nic.mac not in log for nic in nics if nic.mac != boot_mac)


@pytest.mark.parametrize(
    ("firmware", "rom", "vendor", "user"),
    [
        ("bios", None, "PXEClient:Arch:00000:UNDI:002001", "iPXE"),
        ("uefi", "", "PXEClient:Arch:00007:UNDI:003000", ""),
    ],
)
def test_pxe_firmware_sends_discover_with_vendor_class(
    bridged_lab: Lab, tmp_path: Path, firmware: qemu.Firmware, rom: str | None, vendor: str,
    user: str,
) -> None:
    if firmware == "uefi" and not qemu.OVMF_CODE.exists():
        pytest.skip("ovmf is not installed")
    dnsmasq = start_dnsmasq(bridged_lab, tmp_path)
    mac = qemu.lab_mac(0x30)
    spec = qemu.VmSpec(f"pxe-{firmware}", firmware=firmware,
                       nics=(qemu.NicSpec(mac, bootindex=1, rom=rom),))
    try:
        with qemu.start_vm(spec, tmp_path, bridged_lab) as vm:
            got = discover_classes(dnsmasq, mac, timeout=45)
            seen_after = vm.elapsed()
    finally:
        dnsmasq.close()
    print(f"{firmware}: PXE DHCPDISCOVER seen {seen_after:.1f} s after QEMU start")
    assert got == (vendor, user)


def test_vm_without_nic_reports_the_error_and_powers_off(
    cloud_kernel: guest.GuestKernel, tmp_path: Path
) -> None:
    initrd = guest.build_initramfs(cloud_kernel)
    spec = qemu.VmSpec("nonic", direct=qemu.DirectBoot(
        cloud_kernel.vmlinuz, initrd, guest.kernel_cmdline(mac="52:54:00:99:99:99")))
    with qemu.start_vm(spec, tmp_path) as vm:
        marker, _ = vm.wait_marker("ERROR", "no-nic", timeout=45)
        vm.wait_exit(timeout=20)
    assert marker.get("want") == "52:54:00:99:99:99"
    assert vm.wait_for("FLEETBOOT-INIT end action=poweroff").line


@pytest.mark.slow
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_whole_chain_through_a_classic_pxe_stack(
    bridged_lab: Lab, cloud_kernel: guest.GuestKernel, tmp_path: Path, firmware: qemu.Firmware
) -> None:
    """Firmware -> DHCP -> (UEFI: ipxe.efi over TFTP) -> iPXE script, kernel, initramfs over
    HTTP -> Linux's own lease, the same address: what Fleetboot's chain tests will replace
    dnsmasq and the HTTP server with."""
    if firmware == "uefi" and not (qemu.OVMF_CODE.exists() and IPXE_EFI.exists()):
        pytest.skip("needs the ovmf and ipxe packages")
    www, url = tmp_path / "www", f"http://{bridged_lab.server_ip}:8080"
    mac, ip = qemu.lab_mac(0x40), "10.77.0.77"
    write_chain_files(www, cloud_kernel.vmlinuz, guest.build_initramfs(cloud_kernel), url,
                      guest.kernel_cmdline())
    dnsmasq = start_dnsmasq(bridged_lab, tmp_path, *chain_dnsmasq_options(url, www, mac, ip))
    http = start_http(bridged_lab, www, tmp_path)
    ra = qemu.start_router_advertiser(bridged_lab)  # else iPXE waits ~16 s for IPv6
    # UEFI native PXE has no ROM (romfile=); BIOS uses the NIC's iPXE ROM.
    nic = qemu.NicSpec(mac, bootindex=1, rom="" if firmware == "uefi" else None)
    spec = qemu.VmSpec(f"chain-{firmware}", firmware=firmware, nics=(nic,), no_reboot=True)
    try:
        with qemu.start_vm(spec, tmp_path, bridged_lab) as vm:
            lease, at_lease = vm.wait_lease(timeout=100)
            off = vm.wait_exit(timeout=20)
    finally:
        for peer in (dnsmasq, http, ra):
            peer.close()
    print(f"{firmware} chain: Linux lease {at_lease.elapsed:.1f} s, poweroff {off:.1f} s")
    assert (lease.ip, lease.mac) == (ip, mac)
    assert "GET /vmlinuz" in http.text() and "GET /initrd.img" in http.text()
    if firmware == "uefi":
        assert "sent" in dnsmasq.text() and "ipxe.efi" in dnsmasq.text()


def test_initramfs_images_are_shared_by_content(cloud_kernel: guest.GuestKernel) -> None:
    extra = [guest.ExtraFile("/usr/bin/lab-hello", HELLO)]
    with ThreadPoolExecutor(4) as pool:  # concurrent builders of one image never clash
        paths = set(pool.map(lambda _: guest.build_initramfs(cloud_kernel, extra_files=extra),
                             range(4)))
    assert len(paths) == 1
    assert guest.build_initramfs(cloud_kernel) not in paths
    entries = guest.parse_cpio_newc(gzip.decompress(paths.pop().read_bytes()))
    names = {e.path for e in entries}
    assert {"/init", "/bin/busybox", "/usr/bin/lab-hello", "/lib/modules/virtio_net.ko"} <= names


@pytest.mark.slow
def test_kernel_cache_adds_modules_without_rewriting(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    first = guest.fetch_guest_kernel("cloud", cache=tmp_path, modules=("virtio_net",))
    inode = first.modules["virtio_net"].stat().st_ino
    second = guest.fetch_guest_kernel("cloud", cache=tmp_path, modules=("virtio_blk",))
    assert {"virtio_net", "virtio_blk"} <= set(second.modules)
    assert second.modules["virtio_net"].stat().st_ino == inode
    assert guest.fetch_guest_kernel("cloud", cache=tmp_path, modules=("virtio_net",)) == second
    order = second.load_order(["virtio_net"])
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_net")
