"""Real VMs (QEMU, TCG): three empty disks reloaded at once, then booted from disk.

The test builds its own bootable image (MBR + FAT16 + syslinux through mtools,
no loop mounts) holding the lab kernel and an initramfs whose hook prints
``DEPLOYED-SYSTEM-UP``, imports it with the reload store, and boots three VMs
into the deploy ramdisk at once. Each agent fetches the chunks by HTTP Range
from nginx (a real server with Range), verifies every chunk and the whole
disk, and powers off; each VM then boots from its own disk.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from fleetboot.lab import guest, qemu
from fleetboot.lab.bootdisk import build_boot_disk
from fleetboot.lab.netns import Lab, have_netns, stop_process
from fleetboot.lab.nginx import start_nginx
from fleetboot.reload.ramdisk import MODULES, build_deploy_ramdisk
from fleetboot.reload.store import DiskImageStore

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow,
              pytest.mark.skipif(not have_netns(), reason="needs root and iproute2")]

SYSTEM_HOOK = b'#!/bin/sh\necho "DEPLOYED-SYSTEM-UP ip=$FLEETBOOT_IP"\n'
N = 3


def _dnsmasq(lab: Lab, work: Path) -> subprocess.Popen[bytes]:
    subnet = lab.server_ip.rsplit(".", 1)[0]
    argv = ["dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--user=root",
            f"--interface={lab.server_dev}", "--bind-interfaces", "--no-ping",
            "--dhcp-authoritative", f"--dhcp-leasefile={work}/dnsmasq.leases",
            f"--dhcp-range={subnet}.50,{subnet}.99,255.255.255.0,1h"]
    return lab.server.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _disk_args(path: Path, bootindex: int | None) -> tuple[str, ...]:
    boot = f",bootindex={bootindex}" if bootindex is not None else ""
    return ("-drive", f"file={path},format=raw,if=none,id=d0",
            "-device", f"virtio-blk-pci,drive=d0{boot}")


def test_three_vms_reload_their_disks_and_boot_from_them(tmp_path: Path) -> None:
    if not all(map(Path.exists, (Path("/usr/sbin/nginx"), Path("/usr/bin/syslinux")))):
        pytest.skip("needs nginx-light and syslinux (scripts/install-system-deps.sh)")
    kernel = guest.fetch_guest_kernel("cloud", modules=MODULES)
    system_initrd = guest.build_initramfs(
        kernel, extra_files=[guest.ExtraFile("/bin/system-up", SYSTEM_HOOK)],
        hook="/bin/system-up", end="poweroff", out=tmp_path / "system.cpio.gz")
    source = build_boot_disk(tmp_path / "system.raw", kernel.vmlinuz, system_initrd,
                             guest.kernel_cmdline(quiet=False))
    stored, _ = DiskImageStore(tmp_path / "root").add(source, name="system")
    m = stored.manifest
    assert m.stored_size < m.virtual_size / 2  # the empty rest of the disk is not stored
    ramdisk = build_deploy_ramdisk(kernel, out=tmp_path / "deploy.cpio.gz")
    disks = [tmp_path / f"disk{i}.raw" for i in range(N)]
    for d in disks:
        with open(d, "wb") as f:
            f.truncate(m.virtual_size)
    lab = Lab.create(with_bridge=True)
    dnsmasq = nginx = None
    try:
        dnsmasq = _dnsmasq(lab, tmp_path)
        nginx = start_nginx(lab.server, tmp_path / "root", tmp_path, f"{lab.server_ip}:8080")
        url = f"http://{lab.server_ip}:8080/{stored.url_path}"
        vms = []
        for i, disk in enumerate(disks):
            mac = qemu.lab_mac(0x60 + i)
            append = guest.kernel_cmdline(mac=mac, extra={"image": url, "target": "/dev/vda"})
            vms.append(qemu.start_vm(qemu.VmSpec(
                f"deploy{i}", nics=(qemu.NicSpec(mac, rom=""),),
                direct=qemu.DirectBoot(kernel.vmlinuz, ramdisk, append),
                extra_args=_disk_args(disk, None)), tmp_path, lab))
        try:
            for vm in vms:
                vm.wait_for(r"FLEETBOOT-DEPLOY (verified|failed)", timeout=400)
                text = vm.serial_text()
                assert "FLEETBOOT-DEPLOY verified" in text, text[-3000:]
                assert "FLEETBOOT-DEPLOY progress percent=100" in text
                vm.wait_exit(timeout=60)
        finally:
            for vm in vms:
                vm.close()
        for d in disks:
            assert hashlib.sha256(d.read_bytes()).hexdigest() == m.disk_sha256
        booted = []
        for i, disk in enumerate(disks):
            mac = qemu.lab_mac(0x60 + i)
            booted.append(qemu.start_vm(qemu.VmSpec(
                f"system{i}", nics=(qemu.NicSpec(mac, rom=""),),
                extra_args=_disk_args(disk, 1)), tmp_path, lab))
        try:
            for vm in booted:
                vm.wait_for(r"DEPLOYED-SYSTEM-UP ip=10\.77\.0\.\d+", timeout=400)
        finally:
            for vm in booted:
                vm.close()
    finally:
        stop_process(nginx)
        stop_process(dnsmasq)
        lab.close()
