"""DhcpService in-process on loopback, on SQLite and PostgreSQL: an ACK arrives only once
its lease is in the database, the view reloads, leases come back after a restart."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from dhcp_helpers import exchange, packet

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Interface, Node, Pool, Subnet
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.settings import DhcpSettings
from fleetboot.server.dhcp import DhcpService, DhcpServiceError, Pacer
from fleetboot.server.events import BootEvent
from fleetboot.server.metrics import Metrics

SERVER, RELAY = "127.0.0.1", "127.0.0.2"
MAC = "52:54:00:5e:00:01"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((SERVER, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def relay_port() -> Iterator[tuple[socket.socket, int]]:
    """A socket playing the relay agent: the server answers relays on its own port."""
    port = free_port()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((RELAY, port))
    yield sock, port
    sock.close()


def inventory(db: Database) -> None:
    with db.session() as s:
        subnet = Subnet(name="lo", cidr="127.0.0.0/8", lease_seconds=600)
        subnet.pools = [Pool(start="127.0.1.1", end="127.0.1.250")]
        s.add(subnet)


def dora(sock: socket.socket, port: int, xid: int) -> tuple[int | None, int]:
    giaddr = o.ip_int(RELAY)
    offer = exchange(sock, packet(o.DISCOVER, MAC, xid, giaddr=giaddr), (SERVER, port), xid)
    assert offer is not None and offer.message_type == o.OFFER
    request = packet(o.REQUEST, MAC, xid, giaddr=giaddr, o54=offer.options[o.SERVER_ID],
                     o50=o.ip_bytes(offer.yiaddr))
    ack = exchange(sock, request, (SERVER, port), xid)
    assert ack is not None
    return ack.message_type, ack.yiaddr


def lease_in_db(db: Database, address: str) -> str | None:
    with db.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT mac FROM leases WHERE address = " + ("?" if db.url.startswith("sqlite")
                                                         else "%s"), (address,)).first()
    return None if row is None else str(row[0])


async def test_service_acks_after_commit_reloads_and_restarts(
        db: Database, relay_port: tuple[socket.socket, int]) -> None:
    inventory(db)
    sock, port = relay_port
    events: list[BootEvent] = []
    settings = DhcpSettings(address=SERVER, port=port, server_id=SERVER)
    service = DhcpService(settings, db, metrics=Metrics())
    await service.start()
    service.events = events.append  # the runtime may attach its sink late
    try:
        mt, yiaddr = await asyncio.to_thread(dora, sock, port, 11)
        assert mt == o.ACK
        address = o.ip_text(yiaddr)
        # The ACK left only after the commit: the row is there the moment it arrives.
        assert lease_in_db(db, address) == MAC
        assert service.mac_for_address(address) == MAC
        info = service.lease_by_address(address)
        assert info is not None and info.node is None
        with db.session() as s:
            node = Node(name="lo-node")
            node.interfaces = [Interface(mac=MAC, is_boot=True)]
            s.add(node)
        await service.reload()
        info = service.lease_by_address(address)
        assert info is not None and info.node == "lo-node"
        assert [e.kind for e in events if e.detail["dir"] == "tx"] == ["OFFER", "ACK"]
    finally:
        await service.stop()
    again = DhcpService(settings, db, metrics=Metrics())
    await again.start()
    try:
        info = again.lease_by_address(address)  # reloaded before any packet
        assert info is not None and info.mac == MAC and info.node == "lo-node"
        mt, yiaddr2 = await asyncio.to_thread(dora, sock, port, 12)
        assert (mt, yiaddr2) == (o.ACK, yiaddr)
    finally:
        await again.stop()


async def test_a_port_in_use_is_a_clear_error(sqlite_db: Database) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((SERVER, port))
        service = DhcpService(DhcpSettings(address=SERVER, port=port), sqlite_db,
                              metrics=Metrics())
        with pytest.raises(DhcpServiceError, match="cannot listen"):
            await service.start()


def test_pacer_lets_a_burst_through_then_the_rate() -> None:
    pacer = Pacer(rate=1000, burst=3)
    assert [pacer.take() for _ in range(4)] == [True, True, True, False]
    time.sleep(0.0025)
    assert pacer.take() and pacer.take()
    assert all(Pacer(rate=0, burst=1).take() for _ in range(100))  # 0: unpaced
