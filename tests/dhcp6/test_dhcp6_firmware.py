"""OVMF booting over IPv6 (UEFI PXE, RFC 5970): ``fleetboot serve`` sends router
advertisements with the managed flag, answers OVMF's DHCPv6 with the node's address and
``tftp://[server]/snponly.efi`` (option 59, chosen from its architecture in option 61),
serves the file over TFTP on [::], and iPXE starts. IPv4 PXE is switched off in the
firmware (fw_cfg), so only IPv6 can boot it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from dhcp6_helpers import SERVER_ADDR, wait_dad

from fleetboot.lab.fleet import FleetbootServer
from fleetboot.lab.netns import Lab
from fleetboot.lab.qemu import NicSpec, VmSpec, lab_mac, start_vm

pytestmark = [
    pytest.mark.netns,
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU missing"),
]

MAC = lab_mac(0x0D0601)
NO_IPV4_PXE = ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n")


def wait_script(server: FleetbootServer, node: str, timeout: float) -> dict[str, Any]:
    """The node's first iPXE script request (an ``http`` ``script`` timeline event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in server.timeline(node):
            if event["source"] == "http" and event["kind"] == "script":
                return event
        time.sleep(2)
    raise AssertionError(f"{node} never fetched its script:\n{server.log_tail()}")


def test_ovmf_pxe_over_ipv6_starts_ipxe(bridged_lab: Lab, tmp_path: Path) -> None:
    lab = bridged_lab
    lab.server.ip("-6", "addr", "add", f"{SERVER_ADDR}/64", "dev", lab.server_dev, "nodad")
    wait_dad(lab)
    inventory = {
        "subnets6": [{"name": "lab6", "prefix": "fd00:77::/64",
                      "pools": [{"start": "fd00:77::1000", "end": "fd00:77::1fff"}],
                      "reservations": [{"mac": MAC, "address": "fd00:77::60"}]}],
        "nodes": [{"name": "uefi6", "interfaces": [{"mac": MAC, "boot": True}],
                   "boot": {"default": "local"}}],
    }
    config = {"dhcp": {"enabled": False},
              "dhcp6": {"enabled": True, "interfaces": [lab.server_dev],
                        "server_address": SERVER_ADDR, "router_advertisements": True,
                        "ra_interval_s": 5}}
    with FleetbootServer.start(lab, tmp_path / "srv", inventory, config=config) as server:
        spec = VmSpec("fb6-uefi", firmware="uefi", nics=(NicSpec(MAC, rom="", bootindex=1),),
                      extra_args=NO_IPV4_PXE)
        with start_vm(spec, tmp_path / "vm", lab) as vm:
            vm.wait_for(r"PXE over IPv6", timeout=120)
            vm.wait_for(r"iPXE", timeout=120)
            # iPXE configures IPv6 from the RA's managed flag, asks DHCPv6 (user class
            # iPXE) and fetches its script over IPv6; the server knows the node by that
            # lease and makes its boot decision (default: local) as for IPv4.
            script = wait_script(server, "uefi6", timeout=180)
        timeline = server.timeline("uefi6")
        leases = server.cli("leases").stdout
    assert script["address"].startswith("fd00:77::")
    assert (script["detail"]["node"], script["detail"]["boot"]) == ("uefi6", "local")
    replies = [e for e in timeline if e["source"] == "dhcp" and e["kind"] == "REPLY"
               and e["detail"].get("family") == 6]
    assert any(e["detail"].get("file") == f"tftp://[{SERVER_ADDR}]/snponly.efi"
               for e in replies), timeline
    assert any(e["source"] == "tftp" and e["address"] == "fd00:77::60" for e in timeline), \
        timeline
    assert "fd00:77::60" in leases and "uefi6" in leases


NO_PXE = (*NO_IPV4_PXE, "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n")
HTTP_MAC = lab_mac(0x0D0602)


def test_ovmf_http_boot_over_ipv6_starts_ipxe(bridged_lab: Lab, tmp_path: Path) -> None:
    """UEFI HTTP boot over IPv6: vendor class HTTPClient, option 59 an http://[...] URL.
    No DHCPv4 server and no PXE: OVMF's HTTPv4 attempt times out, then HTTPv6 boots."""
    lab = bridged_lab
    lab.server.ip("-6", "addr", "add", f"{SERVER_ADDR}/64", "dev", lab.server_dev, "nodad")
    wait_dad(lab)
    inventory = {
        "subnets6": [{"name": "lab6", "prefix": "fd00:77::/64",
                      "pools": [{"start": "fd00:77::1000", "end": "fd00:77::1fff"}]}],
        "nodes": [{"name": "http6", "interfaces": [{"mac": HTTP_MAC, "boot": True}],
                   "boot": {"default": "local"}}],
    }
    config = {"dhcp": {"enabled": False},
              "dhcp6": {"enabled": True, "interfaces": [lab.server_dev],
                        "server_address": SERVER_ADDR, "router_advertisements": True,
                        "ra_interval_s": 5}}
    with FleetbootServer.start(lab, tmp_path / "srv", inventory, config=config) as server:
        spec = VmSpec("fb6-http", firmware="uefi",
                      nics=(NicSpec(HTTP_MAC, rom="", bootindex=1),), extra_args=NO_PXE)
        with start_vm(spec, tmp_path / "vm", lab) as vm:
            vm.wait_for(r"HTTP Boot over IPv6", timeout=240)
            vm.wait_for(r"iPXE", timeout=120)
        timeline = server.timeline("http6")
    url = f"http://[{SERVER_ADDR}]:8080/boot/files/ipxe.efi"
    assert any(e["source"] == "dhcp" and e["detail"].get("file") == url for e in timeline), \
        timeline
    assert any(e["source"] == "http" and e["address"].startswith("fd00:77::")
               for e in timeline), timeline
