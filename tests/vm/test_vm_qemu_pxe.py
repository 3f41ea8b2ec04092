"""Per-NIC PXE control (seed 000) with real firmware: SeaBIOS + iPXE under TCG.

The VMs run in a lab namespace; every NIC is a tap (made by Fleetboot, backend
``bridge:br0``) on the lab bridge where dnsmasq logs every DHCP request. Only
the designated boot NIC may ever ask. A control VM built the classic way
(every NIC with its model's ROM, no ``strict``) shows that the same
observation window does catch the other NICs PXE-booting.

dnsmasq stands in for Fleetboot's own DHCP server, which has no standalone
``serve`` command yet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fleetboot.lab.netns import Lab
from fleetboot.vm.planner import Family
from fleetboot.vm.service import VmService
from fleetboot.vm.specs import CreateSpec, parse_nic

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(240)]

DISCOVER = re.compile(r"DHCPDISCOVER\(\S+\) ([0-9a-f:]{17})")
FETCHED = re.compile(r"sent \S+exit\.ipxe to ")
# After a NIC's iPXE has run exit.ipxe, SeaBIOS moves to the next boot device; measured
# here, the next NIC's DISCOVER follows ~10 s later (iPXE's own configure time).
WINDOW_S = 20.0


class Dnsmasq:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        if shutil.which("dnsmasq") is None:
            pytest.skip("needs dnsmasq (run scripts/install-system-deps.sh)")
        self.log = workdir / "dnsmasq.log"
        subnet = lab.server_ip.rsplit(".", 1)[0]
        tftp = workdir / "tftp"
        tftp.mkdir()
        # A boot script that hands control straight back to the BIOS, so a firmware that
        # would try further NICs does so quickly.
        (tftp / "exit.ipxe").write_text("#!ipxe\nexit 1\n")
        # Router advertisements end iPXE's IPv6 autoconfiguration wait early.
        lab.server.ip("addr", "add", "fd00:77::1/64", "dev", lab.server_dev)
        argv = ["dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--user=root",
                f"--interface={lab.server_dev}", "--bind-interfaces", "--no-ping", "--log-dhcp",
                f"--dhcp-leasefile={workdir}/leases",
                f"--dhcp-range={subnet}.50,{subnet}.150,255.255.255.0,1h",
                "--enable-tftp", f"--tftp-root={tftp}", "--dhcp-boot=exit.ipxe",
                "--enable-ra", f"--dhcp-range=::,constructor:{lab.server_dev},ra-only"]
        with open(self.log, "wb") as out:
            self.process = lab.server.popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.wait(lambda text: "DHCP, IP range" in text, 10, "dnsmasq did not start")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def macs(self) -> list[str]:
        return DISCOVER.findall(self.text())

    def wait(self, done: object, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.text()):  # type: ignore[operator]
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"{message}; dnsmasq log:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=5)


async def _pxe_vm(vms: VmService, name: str, lab: Lab, models: list[str], boot: int) -> list[str]:
    nics = tuple(parse_nic(f"model={m},backend=bridge:{lab.bridge}" + (",boot" if i == boot
                                                                           else ""))
                 for i, m in enumerate(models))
    view = await vms.create(CreateSpec(name, Family.Q35, memory_mib=256, nics=nics,
                                       netns=lab.server.name))
    return [n.mac for n in view.nics]


async def test_only_the_designated_nic_pxe_boots(
    vms: VmService, bridged_lab: Lab, tmp_path: Path
) -> None:
    dnsmasq = Dnsmasq(bridged_lab, tmp_path)
    try:
        mixed = await _pxe_vm(vms, "mixed", bridged_lab, ["virtio-net-pci", "e1000", "rtl8139"], 1)
        same = await _pxe_vm(vms, "same", bridged_lab, ["e1000", "e1000"], 1)
        await vms.start("mixed")
        await vms.start("same")
        boot_macs = {mixed[1], same[1]}
        dnsmasq.wait(lambda text: boot_macs <= set(DISCOVER.findall(text))
                     and len(FETCHED.findall(text)) >= 2, 90,
                     "the boot NICs did not PXE-boot")
        time.sleep(WINDOW_S)
        seen = set(dnsmasq.macs())
        assert seen == boot_macs, f"DHCP from {seen - boot_macs} (non-boot NICs)"
    finally:
        dnsmasq.close()


async def test_control_without_per_nic_control_every_nic_pxe_boots(
    vms: VmService, bridged_lab: Lab, tmp_path: Path, run_dir: Path
) -> None:
    """Same VM, QEMU's defaults (a ROM on every NIC, no strict): the others ask too."""
    dnsmasq = Dnsmasq(bridged_lab, tmp_path)
    macs = ["52:54:00:0c:00:01", "52:54:00:0c:00:02", "52:54:00:0c:00:03"]
    argv = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "256", "-nodefaults",
            "-display", "none", "-name", f"control-{run_dir}"]
    for i, (model, mac) in enumerate(zip(["virtio-net-pci", "e1000", "rtl8139"], macs,
                                         strict=True)):
        tap = bridged_lab.add_tap()
        argv += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                 "-device", f"{model},netdev=n{i},mac={mac}"]
    process = bridged_lab.server.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        dnsmasq.wait(lambda text: macs[0] in text and FETCHED.search(text), 90,
                     "the first NIC did not PXE-boot")
        deadline = time.monotonic() + WINDOW_S
        while len(set(dnsmasq.macs())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(set(dnsmasq.macs())) >= 2, "the observation window missed the next NIC"
    finally:
        process.kill()
        process.wait()
        dnsmasq.close()
