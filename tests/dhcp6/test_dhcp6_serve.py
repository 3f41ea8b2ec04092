"""``fleetboot serve`` with IPv6: one inventory entry per node serves it in both families.
dhclient -6 gets the node's reserved address (the reservation names the node's MAC),
router advertisements put the prefix on the client's link, the iPXE script and a boot
file come over IPv6 (HTTP and TFTP on [::]), the script is the node's own (its IPv6
lease identifies it), and ``fleetboot leases`` lists the IPv6 lease with its node."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from dhcp6_helpers import SERVER_ADDR, dhclient6_files, wait_dad

from fleetboot.lab.fleet import FleetbootServer
from fleetboot.lab.netns import Lab

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("dhclient") is None, reason="no dhclient")]


def test_serve_dual_stack_dhcp6_ra_http_and_tftp(lab: Lab, tmp_path: Path) -> None:
    lab.server.ip("-6", "addr", "add", f"{SERVER_ADDR}/64", "dev", lab.server_dev, "nodad")
    wait_dad(lab)
    mac = lab.client.run(["cat", f"/sys/class/net/{lab.client_if}/address"]).stdout.strip()
    inventory = {
        "subnets": [{"name": "lab", "cidr": "10.77.0.0/24",
                     "pools": [{"start": "10.77.0.100", "end": "10.77.0.199"}]}],
        "subnets6": [{"name": "lab6", "prefix": "fd00:77::/64",
                      "pools": [{"start": "fd00:77::1000", "end": "fd00:77::1fff"}],
                      "reservations": [{"mac": mac, "address": "fd00:77::42"}]}],
        "nodes": [{"name": "n6", "interfaces": [{"mac": mac, "boot": True}],
                   "boot": {"default": "local"}}],
    }
    config = {"dhcp6": {"enabled": True, "interfaces": [lab.server_dev],
                        "server_address": SERVER_ADDR, "router_advertisements": True,
                        "ra_interval_s": 3}}
    with FleetbootServer.start(lab, tmp_path / "srv", inventory, config=config) as server:
        # The RA (managed flag, prefix on-link, not a default router) reaches the client:
        # the kernel adds the prefix as an on-link route that expires with the RA.
        deadline = time.monotonic() + 15
        route = ""
        while "expires" not in route and time.monotonic() < deadline:
            time.sleep(0.3)
            route = lab.client.ip("-6", "route", "show", "fd00:77::/64")
        assert "expires" in route, server.log_tail()
        assert "default" not in lab.client.ip("-6", "route")
        files, _log = dhclient6_files(tmp_path)
        run = lab.client.run(["dhclient", "-6", "-1", *files, lab.client_if], check=False)
        assert run.returncode == 0, run.stderr + server.log_tail()
        addrs = lab.client.ip("-6", "-o", "addr", "show", "dev", lab.client_if, "scope",
                              "global")
        assert "fd00:77::42" in addrs
        wait_dad(lab)  # a tentative address is never a source: curl would use link-local
        script = lab.client.run(["curl", "-sf", "--max-time", "10",
                                 f"http://[{SERVER_ADDR}]:8080/boot/script.ipxe"], check=False)
        assert script.returncode == 0, script.stderr + server.log_tail()
        assert script.stdout.startswith("#!ipxe") and "n6" in script.stdout, script.stdout
        fetched = tmp_path / "snponly.efi"
        tftp = lab.client.run(["curl", "-sf", "--max-time", "20", "-o", str(fetched),
                               f"tftp://[{SERVER_ADDR}]/snponly.efi"], check=False)
        assert tftp.returncode == 0, tftp.stderr + server.log_tail()
        assert fetched.stat().st_size == (tmp_path / "srv" / "bootroot" / "snponly.efi"
                                          ).stat().st_size
        leases = server.cli("leases").stdout
        assert "fd00:77::42" in leases and "n6" in leases, leases
        assert "lab6" in server.cli("subnet6", "list").stdout
        lab.client.run(["sh", "-c", f"kill $(cat {tmp_path / 'dhclient6.pid'}) 2>/dev/null"],
                       check=False)
