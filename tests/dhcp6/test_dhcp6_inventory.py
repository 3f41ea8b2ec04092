"""IPv6 inventory: subnets, pools, reservations by MAC or DUID, YAML, leases6 journal and
the lease listing, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from fleetboot.errors import FleetbootError
from fleetboot.inventory import service6, yamlio
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Node
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.protocols.dhcp.engine import LeaseRecord
from fleetboot.protocols.dhcp6.engine import key_of
from fleetboot.protocols.dhcp6.options import ip6_int
from fleetboot.server.dhcp6_view import load_view6
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.leases6 import Lease6Journal, load_leases6

MAC = bytes.fromhex("525400123456")
DUID = b"\x00\x03\x00\x01" + MAC


def fill(db: Database) -> None:
    with db.session() as s:
        service6.add_subnet6(s, "lab6", "fd00:77::/64", dns=["fd00:77::53"],
                             domains=["lab.test"])
        service6.add_pool6(s, "lab6", "fd00:77::1000", "fd00:77::1fff")
        service6.add_reservation6(s, "lab6", "fd00:77::42", mac="52-54-00-12-34-56",
                                  hostname="n1")
        service6.add_reservation6(s, "lab6", "fd00:77::43", duid="00:04:" + "11" * 16)


def test_subnets_pools_reservations_and_the_view(db: Database) -> None:
    fill(db)
    view = load_view6(db)
    (subnet,) = view.subnets
    assert subnet.prefix == 64 and subnet.pools == ((ip6_int("fd00:77::1000"),
                                                     ip6_int("fd00:77::1fff")),)
    assert view.by_mac[MAC].address == ip6_int("fd00:77::42")
    assert view.by_duid[b"\x00\x04" + b"\x11" * 16].address == ip6_int("fd00:77::43")
    assert view.problems == ()


@pytest.mark.parametrize("call,message", [
    (lambda s: service6.add_subnet6(s, "x", "fd00:77::1/64"), "not an IPv6 prefix"),
    (lambda s: service6.add_subnet6(s, "x", "fd00:77::/80"), "overlaps"),
    (lambda s: service6.add_pool6(s, "lab6", "fd00:78::1", "fd00:78::2"), "not a host"),
    (lambda s: service6.add_pool6(s, "lab6", "fd00:77::1800", "fd00:77::2000"), "overlaps"),
    (lambda s: service6.add_reservation6(s, "lab6", "fd00:77::44"), "needs a MAC or a DUID"),
    (lambda s: service6.add_reservation6(s, "lab6", "fd00:77::44", mac="52:54:00:12:34:56"),
     "already has"),
    (lambda s: service6.add_reservation6(s, "lab6", "fd00:77::44", duid="zz"), "not a DUID"),
    (lambda s: service6.get_subnet6(s, "nope"), "subnet6 list"),
])
def test_bad_input_says_what_to_do(db: Database, call, message: str) -> None:  # type: ignore[no-untyped-def]
    fill(db)
    with pytest.raises(FleetbootError, match=message), db.session() as s:
        call(s)


def test_yaml_round_trip_with_subnets6(db: Database) -> None:
    fill(db)
    with db.session() as s:
        text = yamlio.export_inventory(s)
    assert "subnets6" in text and "fd00:77::42" in text
    with db.session() as s:
        assert yamlio.import_inventory(s, text)["subnets6"] == 1
    with db.session() as s:
        assert yamlio.export_inventory(s) == text


async def test_journal_writes_leases6_and_they_load_back(db: Database) -> None:
    fill(db)
    with db.session() as s:
        subnet_id = service6.get_subnet6(s, "lab6").id
    done: list[tuple[list[object], bool]] = []
    journal = Lease6Journal(db, lambda tokens, ok: done.append((tokens, ok)),
                            loop=asyncio.get_running_loop())
    journal.start()
    now = time.time()
    addr, other = ip6_int("fd00:77::1000"), ip6_int("fd00:77::1001")
    journal.submit(LeaseRecord("bind", addr, key_of(DUID, 7), now + 3600, now, subnet_id, MAC,
                               "n1"), "reply-1")
    journal.submit(LeaseRecord("bind", other, key_of(b"\x00\x04" + bytes(16), 1), now + 60,
                               now, subnet_id, None, None), "reply-2")
    journal.submit(LeaseRecord("free", other, key_of(b"\x00\x04" + bytes(16), 1)))
    for _ in range(200):
        if sum(len(t) for t, _ in done) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.to_thread(journal.stop)
    assert all(ok for _, ok in done)
    (lease,) = load_leases6(db)
    assert (lease.addr, lease.mac, lease.client_id, lease.hostname) == (addr, key_of(DUID, 7),
                                                                         MAC, "n1")
    assert lease.expires >= now + 3600 - 1e-3  # PostgreSQL keeps microseconds
    with db.session() as s:
        views = service6.list_all_leases(s, now=now)
        assert [(v.address, v.mac, v.subnet) for v in views] == [
            ("fd00:77::1000", "52:54:00:12:34:56", "lab6")]
        assert service6.list_all_leases(s, now=now, subnet="lab6") == views


def test_a_node_booted_over_ipv6_is_told_the_ipv6_config_url(sqlite_db: Database) -> None:
    cfg = SimpleNamespace(server_address="10.0.0.1",
                          http=SimpleNamespace(port=8080, public_url=None),
                          dhcp6=SimpleNamespace(server_address="fd00:77::1"))
    settings = NodeConfigSettings.from_settings(cfg)
    assert settings.base_url6 == "http://[fd00:77::1]:8080"
    service = NodeConfigService(sqlite_db, StaticDirectory(), settings)
    node = SimpleNamespace(id=1)
    with sqlite_db.session() as s:
        s.add(Node(id=1, name="n1"))
    v6 = dict(a.split("=", 1) for a in service.cmdline_hook(node, None, "fd00:77::42").split())
    v4 = dict(a.split("=", 1) for a in service.cmdline_hook(node, None, "10.0.0.42").split())
    assert v6["fleetboot.url"] == "http://[fd00:77::1]:8080"
    assert v4["fleetboot.url"] == "http://10.0.0.1:8080"
