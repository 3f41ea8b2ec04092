"""Peer servers for the lab VM tests: dnsmasq (DHCP, optional TFTP) and a static HTTP server,
both inside a lab's server namespace. Fleetboot's own servers replace them in later tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fleetboot.lab.netns import Lab

IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")  # Debian package ipxe


@dataclass
class Peer:
    """A server process in the lab whose output goes to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text(), re.MULTILINE)
            if found is not None:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r}; log:\n{self.text()[-2000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_dnsmasq(lab: Lab, workdir: Path, *options: str, first: int = 50) -> Peer:
    """dnsmasq as DHCP server on the lab bridge (no DNS), logging every DHCP detail."""
    subnet = lab.server_ip.rsplit(".", 1)[0]
    log = workdir / "dnsmasq.log"
    argv = ["dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--user=root",
            f"--interface={lab.server_dev}", "--bind-interfaces", "--no-ping", "--log-dhcp",
            "--dhcp-authoritative", f"--dhcp-leasefile={workdir}/dnsmasq.leases",
            f"--dhcp-range={subnet}.{first},{subnet}.{first + 49},255.255.255.0,1h", *options]
    with open(log, "wb") as out:
        peer = Peer("dnsmasq", lab.server.popen(argv, stdout=out, stderr=out), log)
    peer.wait_for(r"DHCP, IP range")
    return peer


def start_http(lab: Lab, root: Path, workdir: Path, port: int = 8080) -> Peer:
    """Python's static HTTP server on the lab's server address (a stand-in for Fleetboot's)."""
    log = workdir / "http.log"
    argv = [sys.executable, "-u", "-m", "http.server", str(port), "--bind", lab.server_ip,
            "--directory", str(root)]
    with open(log, "wb") as out:
        peer = Peer("http", lab.server.popen(argv, stdout=out, stderr=out), log)
    peer.wait_for(r"Serving HTTP")
    return peer


def discover_classes(dnsmasq: Peer, mac: str, timeout: float) -> tuple[str, str]:
    """(vendor class, user class) of the first DHCPDISCOVER from ``mac``, from dnsmasq's log.

    dnsmasq logs a packet's classes on the lines just before its DHCPDISCOVER line,
    all tagged with the transaction id.
    """
    found = dnsmasq.wait_for(rf"^dnsmasq-dhcp: (\d+) DHCPDISCOVER\(\S+\) {mac}", timeout)
    tag = f"dnsmasq-dhcp: {found.group(1)} "
    before = dnsmasq.text()[: found.start()].splitlines()
    classes = {"vendor class": "", "user class": ""}
    for line in reversed(before):
        if not line.startswith(tag):
            break
        key, _, value = line.removeprefix(tag).partition(": ")
        if key in classes and not classes[key]:
            classes[key] = value
    return classes["vendor class"], classes["user class"]


def write_chain_files(www: Path, vmlinuz: Path, initrd: Path, url: str, cmdline: str) -> None:
    """A boot root for iPXE: boot.ipxe loads the guest kernel and initramfs over HTTP,
    passing the boot NIC as BOOTIF; ipxe.efi is the NBP that UEFI fetches over TFTP."""
    www.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vmlinuz, www / "vmlinuz")
    shutil.copyfile(initrd, www / "initrd.img")
    if IPXE_EFI.exists():
        shutil.copyfile(IPXE_EFI, www / "ipxe.efi")
    (www / "boot.ipxe").write_text(
        "#!ipxe\n"
        f"kernel {url}/vmlinuz initrd=initrd.img {cmdline} BOOTIF=01-${{net0/mac:hexhyp}}\n"
        f"initrd --name initrd.img {url}/initrd.img\n"
        "boot\n")


def chain_dnsmasq_options(url: str, www: Path, mac: str, ip: str) -> list[str]:
    """dnsmasq as a classic PXE stack: iPXE gets the script URL, UEFI firmware gets
    ipxe.efi over TFTP, and ``mac`` always gets ``ip`` (so both DHCP clients must match)."""
    return [f"--dhcp-host={mac},{ip}", "--dhcp-userclass=set:ipxe,iPXE",
            "--dhcp-match=set:efi64,option:client-arch,7",
            f"--dhcp-boot=tag:ipxe,{url}/boot.ipxe", "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
            "--enable-tftp", f"--tftp-root={www}"]
