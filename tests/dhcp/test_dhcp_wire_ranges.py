"""Every subnet value the inventory accepts fits its DHCP option (issue 11, item 7).

`subnet add --mtu 70000` used to be stored, and every DISCOVER on the subnet
then died in ``struct.pack``. The service layer now checks each value against
its wire range; this property says the two agree: whatever ``SubnetOptions``
accepts, the engine encodes into a decodable OFFER, and what it refuses is
exactly what would not fit.
"""

from __future__ import annotations

import ipaddress

import pytest
from dhcp_helpers import packet
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.inventory.service import InventoryError, SubnetOptions
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import decode
from fleetboot.protocols.dhcp.engine import DhcpEngine
from fleetboot.protocols.dhcp.leases import LeaseTable
from fleetboot.protocols.dhcp.settings import DhcpSettings
from fleetboot.protocols.dhcp.view import build_view

NET = ipaddress.IPv4Network("10.77.0.0/24")
SERVER = o.ip_int("10.77.0.1")
MAC = bytes.fromhex("525400000001")
# Everything the options request, so every stored value is encoded.
ALL_OPTIONS = bytes([1, 3, 6, 15, 26, 28, 51, 58, 59])


def _offer(opts: SubnetOptions) -> dict[int, bytes]:
    view = build_view(
        subnets=[{"id": 1, "name": "lab", "cidr": str(NET), "router": opts.router,
                  "dns_servers": list(opts.dns), "domain": opts.domain,
                  "lease_seconds": opts.lease_seconds, "next_server": opts.next_server,
                  "mtu": opts.mtu}],
        pools=[{"subnet_id": 1, "start": "10.77.0.100", "end": "10.77.0.199"}],
        reservations=[], interfaces=[])
    engine = DhcpEngine(DhcpSettings(), view, LeaseTable(), server_addresses=(SERVER,))
    reply = engine.handle(packet(o.DISCOVER, MAC, o55=ALL_OPTIONS), SERVER, 1_000_000.0)
    assert reply is not None and reply.data is not None
    offer = decode(reply.data)
    assert offer.message_type == o.OFFER
    return offer.options


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@given(mtu=st.none() | st.integers(-10, 1 << 20),
       lease=st.integers(-10, 1 << 34),
       dns=st.lists(st.integers(2, 254).map(lambda i: f"10.77.0.{i}"), max_size=80),
       domain=st.none() | st.lists(_label, min_size=1, max_size=20).map(".".join))
def test_accepted_values_always_encode(mtu: int | None, lease: int, dns: list[str],
                                       domain: str | None) -> None:
    opts = SubnetOptions(router="10.77.0.1", dns=tuple(dns), domain=domain,
                         lease_seconds=lease, mtu=mtu)
    try:
        checked = opts.checked(NET)
    except InventoryError:
        fits = ((mtu is None or 68 <= mtu <= 0xFFFF) and 60 <= lease < 0xFFFFFFFF
                and len(dns) * 4 <= 255 and (domain is None or len(domain) <= 253))
        assert not fits, "a value that fits its option was refused"
        return
    options = _offer(checked)
    assert options[o.LEASE_TIME] == o.u32(lease)
    if mtu is not None:
        assert options[o.INTERFACE_MTU] == o.U16.pack(mtu)
    if domain:
        assert options[o.DOMAIN_NAME] == domain.encode()


def test_mtu_70000_is_refused_before_any_discover_can_see_it() -> None:
    with pytest.raises(InventoryError, match="MTU 70000 is out of range"):
        SubnetOptions(mtu=70000).checked(NET)


def test_rows_stored_before_the_checks_still_give_an_offer() -> None:
    """An inventory written by an older version may hold mtu 70000: the view leaves it
    out with a problem report instead of failing every DISCOVER on the subnet."""
    view = build_view(
        subnets=[{"id": 1, "name": "lab", "cidr": str(NET), "lease_seconds": 1 << 40,
                  "mtu": 70000, "dns_servers": ["10.77.0.1"] * 70}],
        pools=[{"subnet_id": 1, "start": "10.77.0.100", "end": "10.77.0.199"}],
        reservations=[], interfaces=[])
    assert any("mtu 70000 does not fit" in p for p in view.problems)
    engine = DhcpEngine(DhcpSettings(), view, LeaseTable(), server_addresses=(SERVER,))
    reply = engine.handle(packet(o.DISCOVER, MAC, o55=ALL_OPTIONS), SERVER, 1_000_000.0)
    assert reply is not None and reply.data is not None
    offer = decode(reply.data)
    assert o.INTERFACE_MTU not in offer.options
    assert offer.options[o.LEASE_TIME] == o.u32(o.MAX_LEASE_SECONDS)
    assert len(offer.options[o.DNS_SERVERS]) == 4 * 63
