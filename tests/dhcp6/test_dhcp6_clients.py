"""Real DHCPv6 clients against the DHCPv6 service in a namespace lab: ISC dhclient -6
and dhcpcd (Debian's busybox has no udhcpc6), leases durable, malformed input counted."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from dhcp6_helpers import (
    SERVER_ADDR,
    Inventory6,
    dhclient6_files,
    lease6_rows,
    message,
    start_server6,
    wait_dad,
)

from fleetboot.lab.netns import Lab
from fleetboot.protocols.dhcp6 import options as o

pytestmark = pytest.mark.netns


def client_mac(lab: Lab) -> str:
    return lab.client.run(["cat", f"/sys/class/net/{lab.client_if}/address"]).stdout.strip()


def global_addrs(lab: Lab) -> list[str]:
    out = lab.client.ip("-6", "-o", "addr", "show", "dev", lab.client_if, "scope", "global")
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="isc-dhcp-client missing")
def test_dhclient6_gets_the_nodes_address_renews_and_releases(lab: Lab, tmp_path: Path) -> None:
    wait_dad(lab)
    mac = client_mac(lab)
    # The node is known by the MAC of its (IPv4) inventory entry; the IPv6 reservation is
    # by that MAC, not by the DUID the client makes up.
    inventory = Inventory6(nodes=[("node6", mac)],
                           reservations=[{"mac": mac, "address": "fd00:77::42"}])
    server = start_server6(lab, tmp_path, inventory)
    files, _log = dhclient6_files(tmp_path)
    pid_file = tmp_path / "dhclient6.pid"
    argv = ["dhclient", "-6", "-1", "-v", *files, lab.client_if]
    try:
        run = lab.client.run(argv, check=False)
        assert run.returncode == 0, run.stderr + server.log()
        assert global_addrs(lab) == ["fd00:77::42"]
        rows = lease6_rows(server.db_path)
        assert rows["fd00:77::42"][2] == mac
        events = server.events()
        assert any(e["kind"] == "REPLY" and e["address"] == "fd00:77::42" for e in events)
        # A second run renews (the lease file holds the binding) and keeps the address.
        again = lab.client.run(argv, check=False)
        assert again.returncode == 0, again.stderr
        assert global_addrs(lab) == ["fd00:77::42"]
        release = lab.client.run(["dhclient", "-6", "-r", "-v", *files, lab.client_if],
                                 check=False)
        assert release.returncode == 0, release.stderr
        deadline = time.monotonic() + 5
        while "fd00:77::42" in lease6_rows(server.db_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "fd00:77::42" not in lease6_rows(server.db_path)
    finally:
        lab.client.run(["sh", "-c", f"kill $(cat {pid_file}) 2>/dev/null"], check=False)
        stats = server.stop()
    assert stats.get("dhcp6.tx", 0) >= 4


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="isc-dhcp-client missing")
def test_dhclient6_stateless_gets_dns_by_information_request(lab: Lab, tmp_path: Path) -> None:
    wait_dad(lab)
    server = start_server6(lab, tmp_path, Inventory6())
    files, log = dhclient6_files(tmp_path)
    try:
        run = lab.client.run(["dhclient", "-6", "-S", "-1", "-v", *files, lab.client_if],
                             check=False)
        assert run.returncode == 0, run.stderr + server.log()
        assert "fd00:77::53" in log.read_text()  # option 23 from the subnet
        assert global_addrs(lab) == []  # stateless: no address
    finally:
        lab.client.run(["sh", "-c", f"kill $(cat {tmp_path / 'dhclient6.pid'}) 2>/dev/null"],
                       check=False)
        server.stop()
    kinds = {e["kind"] for e in server.events()}
    assert {"INFORMATION-REQUEST", "REPLY"} <= kinds


@pytest.mark.skipif(shutil.which("dhcpcd") is None, reason="dhcpcd-base missing")
def test_dhcpcd6_gets_a_pool_address_and_it_survives_a_restart(lab: Lab,
                                                                 tmp_path: Path) -> None:
    wait_dad(lab)
    server = start_server6(lab, tmp_path, Inventory6())
    conf = tmp_path / "dhcpcd.conf"
    conf.write_text(f"ipv6only\nnoipv6rs\ninterface {lab.client_if}\nia_na 1\n")
    # -c /bin/true: no hook scripts (they would rewrite the host's /etc/resolv.conf).
    argv = ["dhcpcd", "-f", str(conf), "-c", "/bin/true", "-6", "-1", "-B", "-t", "20",
            lab.client_if]
    try:
        run = lab.client.run(argv, check=False)
        assert run.returncode == 0, run.stdout + run.stderr + server.log()
        (addr,) = global_addrs(lab)
        assert addr.startswith("fd00:77::")
        assert addr in lease6_rows(server.db_path)  # durable before the client heard of it
        server.kill9()
        server.start()
        # After kill -9 the restarted server has the lease back in memory.
        assert "1 leases loaded" in server.log()
        assert addr in lease6_rows(server.db_path)
    finally:
        lab.client.run(["dhcpcd", "-f", str(conf), "-x", lab.client_if], check=False)
        server.stop()


def send_from_client(lab: Lab, payloads: list[bytes]) -> None:
    """Raw datagrams from the client namespace to the server's global address, port 547."""
    lab.client.ip("-6", "addr", "add", "fd00:77::9/64", "dev", lab.client_if, "nodad")
    script = ("import socket,sys\n"
              "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
              "for h in sys.argv[1:]:\n"
              f"    s.sendto(bytes.fromhex(h),('{SERVER_ADDR}',547))\n")
    lab.client.run(["python3", "-c", script, *(p.hex() for p in payloads)])


def test_malformed_datagrams_are_counted_and_the_server_keeps_serving(
        lab: Lab, tmp_path: Path) -> None:
    wait_dad(lab)
    server = start_server6(lab, tmp_path, Inventory6())
    good = message(o.SOLICIT, extra=[(o.RAPID_COMMIT, b"")])
    bad = [b"\x01", b"\x01\x00\x00\x01\x00\x01\x00\xff", b"\x0c" + bytes(40),
           good[:-3], b"\xff" * 300]
    try:
        send_from_client(lab, [*bad, good])
        deadline = time.monotonic() + 10
        while not lease6_rows(server.db_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(lease6_rows(server.db_path)) == 1  # the good one after the bad ones
    finally:
        stats = server.stop()
    assert stats["dhcp6.drop.malformed"] == len(bad), stats
