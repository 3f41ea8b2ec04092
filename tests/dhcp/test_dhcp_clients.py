"""The DHCP service as a process in a lab namespace, with real clients in the other one:
ISC dhclient and busybox udhcpc get, renew and release leases; a reservation is
honoured; crafted PXE DISCOVERs from a three-NIC node; bad packets are survived."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dhcp_helpers import (
    Inventory,
    NodeSpec,
    ServerProcess,
    arch,
    exchange,
    lease_rows,
    mac_of,
    ns_socket,
    packet,
    wait_until,
)

from fleetboot.inventory.db import Database
from fleetboot.lab.netns import Lab
from fleetboot.protocols.dhcp import options as o

pytestmark = [pytest.mark.netns]

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def serve(lab: Lab, tmp_path: Path) -> Iterator[ServerFactory]:
    """Write an inventory and start the DHCP service on the lab's server interface."""
    started: list[ServerProcess] = []

    def start(inventory: Inventory | None = None, **settings: Any) -> ServerProcess:
        db_path = tmp_path / "fleetboot.db"
        db = Database(f"sqlite:///{db_path}")
        db.create_schema()
        (inventory or Inventory()).write(db)
        db.dispose()
        server = ServerProcess(lab, tmp_path, {"interfaces": [lab.server_if], **settings},
                               db_path)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.__exit__()


SCRIPT = """#!/bin/sh
# dhclient passes $reason, udhcpc passes $1; both: configure the address, log the event.
event="${reason:-$1}"
addr="${new_ip_address:-$ip}"
echo "$event $addr ${new_filename:-$boot_file}" >> LOG
case "$event" in
  BOUND|RENEW|REBIND|REBOOT|bound|renew) ip addr replace "$addr/24" dev "$interface" ;;
esac
exit 0
"""


def client_script(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "client.log"
    script = tmp_path / "client.sh"
    script.write_text(SCRIPT.replace("LOG", str(log)))
    script.chmod(0o755)
    return script, log


def events_in(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def wait_event(log: Path, name: str, timeout: float = 20.0) -> list[str]:
    found = wait_until(lambda: [e for e in events_in(log) if e and e[0] == name], timeout)
    assert found, f"client never reported {name}: {events_in(log)}"
    return found[-1]


def test_dhclient_gets_renews_and_releases(lab: Lab, serve: ServerFactory,
                                           tmp_path: Path) -> None:
    server = serve(Inventory(lease_seconds=6))
    mac = mac_of(lab.client, lab.client_if)
    script, log = client_script(tmp_path)
    files = ["-cf", "/dev/null", "-lf", str(tmp_path / "dhclient.leases"),
             "-pf", str(tmp_path / "dhclient.pid"), "-sf", str(script)]
    proc = lab.client.popen(["dhclient", "-4", "-d", *files, lab.client_if],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bound = wait_event(log, "BOUND")
        address = bound[1]
        assert address.startswith("10.77.0.1")
        assert wait_until(lambda: lease_rows(server.db_path).get(address) == mac)
        # T1 is half the 6 s lease: dhclient unicasts a REQUEST with ciaddr set.
        renewed = wait_event(log, "RENEW")
        assert renewed[1] == address
        server.wait_event({"kind": "REQUEST", "mac": mac, "address": address})
        release = lab.client.run(["dhclient", "-4", "-r", *files, lab.client_if], check=False)
        assert release.returncode == 0, release.stderr
        assert wait_until(lambda: address not in lease_rows(server.db_path))
        server.wait_event({"kind": "RELEASE", "mac": mac})
    finally:
        proc.kill()
        proc.wait()
    stats = server.stop()
    assert stats.get("dhcp.drop.malformed", 0) == 0


def test_udhcpc_gets_renews_and_releases(lab: Lab, serve: ServerFactory,
                                         tmp_path: Path) -> None:
    server = serve()
    mac = mac_of(lab.client, lab.client_if)
    script, log = client_script(tmp_path)
    proc = lab.client.popen(["busybox", "udhcpc", "-f", "-i", lab.client_if, "-s", str(script),
                             "-t", "5", "-T", "1", "-A", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        address = wait_event(log, "bound")[1]
        assert wait_until(lambda: lease_rows(server.db_path).get(address) == mac)
        proc.send_signal(signal.SIGUSR1)  # renew now
        assert wait_event(log, "renew")[1] == address
        proc.send_signal(signal.SIGUSR2)  # release
        assert wait_until(lambda: address not in lease_rows(server.db_path))
    finally:
        proc.kill()
        proc.wait()
    counters = server.stop()
    assert counters["dhcp.released"] == 1


def test_static_reservation_is_honoured(lab: Lab, serve: ServerFactory, tmp_path: Path) -> None:
    mac = mac_of(lab.client, lab.client_if)
    server = serve(Inventory(reservations=[(mac, "10.77.0.42", "reserved-host")]))
    script, log = client_script(tmp_path)
    result = lab.client.run(["busybox", "udhcpc", "-q", "-n", "-i", lab.client_if,
                             "-s", str(script), "-t", "5", "-T", "1"], check=False)
    assert result.returncode == 0, result.stderr
    assert wait_event(log, "bound")[1] == "10.77.0.42"
    assert wait_until(lambda: lease_rows(server.db_path).get("10.77.0.42") == mac)


NIC_MACS = ["52:54:00:3a:00:01", "52:54:00:3a:00:02", "52:54:00:3a:00:03"]
PXE = {"o60": b"PXEClient:Arch:00000:UNDI:002001", "o93": arch(0)}


def test_only_the_designated_nic_of_a_three_nic_node_gets_a_boot_file(
        lab: Lab, serve: ServerFactory) -> None:
    serve(Inventory(nodes=[NodeSpec("three", NIC_MACS, boot_index=1)]))
    sock = ns_socket(lab.client, 68, lab.client_if)
    try:
        answers = {}
        for i, mac in enumerate(NIC_MACS):
            reply = exchange(sock, packet(o.DISCOVER, mac, 100 + i, flags=o.BROADCAST_FLAG,
                                          **PXE), ("255.255.255.255", 67), 100 + i)
            assert reply is not None and reply.message_type == o.OFFER
            answers[mac] = reply
    finally:
        sock.close()
    boot = answers[NIC_MACS[1]]
    assert boot.file == b"undionly.kpxe" and boot.options[o.BOOTFILE_NAME] == b"undionly.kpxe"
    assert o.ip_text(boot.siaddr) == "10.77.0.1" and boot.options[o.VENDOR_CLASS] == b"PXEClient"
    for mac in (NIC_MACS[0], NIC_MACS[2]):
        other = answers[mac]
        assert other.yiaddr and other.file == b"" and o.BOOTFILE_NAME not in other.options


def test_non_boot_nics_can_be_left_unanswered(lab: Lab, serve: ServerFactory) -> None:
    serve(Inventory(nodes=[NodeSpec("three", NIC_MACS, boot_index=1)]),
          non_boot_interfaces="ignore_boot")
    sock = ns_socket(lab.client, 68, lab.client_if)
    try:
        def ask(mac: str, xid: int) -> object:
            return exchange(sock, packet(o.DISCOVER, mac, xid, flags=o.BROADCAST_FLAG, **PXE),
                            ("255.255.255.255", 67), xid, timeout=1.0)
        assert ask(NIC_MACS[0], 1) is None
        assert ask(NIC_MACS[1], 2) is not None
    finally:
        sock.close()


def test_garbage_is_counted_and_the_server_keeps_serving(lab: Lab,
                                                         serve: ServerFactory) -> None:
    server = serve()
    sock = ns_socket(lab.client, 68, lab.client_if)
    try:
        good = packet(o.DISCOVER, "52:54:00:00:99:01", 7, flags=o.BROADCAST_FLAG)
        junk = [b"", b"\x01", os.urandom(300), good[:250], good[:240] + b"\x35\x09\x01",
                good.replace(b"\x63\x82\x53\x63", b"\0\0\0\0"), os.urandom(3000),
                packet(o.DISCOVER, "52:54:00:00:99:02", o52=b"\x09")]
        for data in junk * 20:
            sock.sendto(data, (lab.server_ip, 67))
        time.sleep(0.3)
        reply = exchange(sock, good, ("255.255.255.255", 67), 7)
        assert reply is not None and reply.message_type == o.OFFER
    finally:
        sock.close()
    stats = server.stop()
    assert stats["dhcp.drop.malformed"] >= 100
    assert stats.get("dhcp.internal_errors", 0) == 0
    assert server.log().count("malformed") <= 3  # rate-limited: one line per interval


def test_proxy_dhcp_on_ports_67_and_4011(lab: Lab, serve: ServerFactory) -> None:
    server = serve(Inventory(nodes=[NodeSpec("three", NIC_MACS, boot_index=1)]), proxy=True)
    sock = ns_socket(lab.client, 68, lab.client_if)
    mac = NIC_MACS[1]
    try:
        offer = exchange(sock, packet(o.DISCOVER, mac, 5, flags=o.BROADCAST_FLAG, **PXE),
                         ("255.255.255.255", 67), 5)
        assert offer is not None and offer.message_type == o.OFFER
        assert offer.yiaddr == 0 and offer.file == b"undionly.kpxe"
        assert offer.options[o.VENDOR_CLASS] == b"PXEClient" and o.LEASE_TIME not in offer.options
        # Holding an address from the site's DHCP server, the client asks the boot server.
        ack = exchange(sock, packet(o.REQUEST, mac, 6, ciaddr=o.ip_int(lab.client_ip), **PXE),
                       (lab.server_ip, 4011), 6)
        assert ack is not None and ack.message_type == o.ACK and ack.file == b"undionly.kpxe"
        plain = exchange(sock, packet(o.DISCOVER, "52:54:00:00:77:01", 7,
                                      flags=o.BROADCAST_FLAG), ("255.255.255.255", 67), 7,
                         timeout=1.0)
        assert plain is None  # not a PXE client: the site's DHCP server answers it
    finally:
        sock.close()
    server.stop()
    assert lease_rows(server.db_path) == {}
