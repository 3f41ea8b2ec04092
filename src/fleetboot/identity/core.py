"""The pure core of node identity: what was seen on the link, and the decision.

Nothing here does I/O or reads a clock: addresses, MACs and times come in as
values. :class:`LinkBook` remembers, per IPv4 address, which MAC the DHCP
traffic seen on the link last tied to it (proxy mode: Fleetboot gives no
addresses, the site's server does). :func:`decide` turns the evidence about
one request into a :class:`Verdict`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# A binding seen once is kept this long after its last sighting: an OS renews its
# lease by unicast to the site server, which Fleetboot does not see. Freshness
# comes from the neighbour table, checked on every request.
HOLD_S = 7 * 86400.0
BOOK_LIMIT = 200_000  # addresses remembered (oldest sighting forgotten first)

REQUESTED = "requested"  # the client asked for the address (option 50 or ciaddr)
ACKNOWLEDGED = "acknowledged"  # the site server's ACK was seen on the link
BOOT_SERVER = "boot-server"  # the client asked Fleetboot's port 4011 from that address


@dataclass(frozen=True, slots=True)
class Binding:
    """``mac`` holds ``address`` as far as the DHCP traffic on the link shows."""

    address: str
    mac: str
    how: str  # REQUESTED | ACKNOWLEDGED | BOOT_SERVER
    server: str | None  # the DHCP server the client chose or that acknowledged
    seen: float
    until: float
    # Learned from the client's own broadcast sent from 0.0.0.0: it can only have
    # come from the served link (nothing routes 0.0.0.0), so no one off the link made it.
    from_link: bool = False


class LinkBook:
    """Address -> the MAC the link's DHCP traffic last tied to it (proxy mode).

    Any sighting of the address with another MAC replaces the binding: a binding
    that no longer holds is never kept beside the new one. A NAK, RELEASE or
    DECLINE from the holder drops it.
    """

    def __init__(self, hold_s: float = HOLD_S, limit: int = BOOK_LIMIT) -> None:
        self.hold_s = hold_s
        self.limit = max(1, limit)
        self._by_addr: OrderedDict[str, Binding] = OrderedDict()
        self.counters: dict[str, int] = {"requested": 0, "acknowledged": 0, "boot_server": 0,
                                         "moved": 0, "dropped": 0}

    def __len__(self) -> int:
        return len(self._by_addr)

    def saw(self, how: str, mac: str, address: str, now: float, server: str | None = None,
            lease_s: float = 0.0, from_link: bool = False) -> Binding:
        """Record a sighting; returns the binding now in force for ``address``."""
        old = self._by_addr.pop(address, None)
        if old is not None and old.mac != mac:
            self.counters["moved"] += 1
        elif old is not None:
            from_link = from_link or old.from_link
            if how == REQUESTED and old.how != REQUESTED:
                how, server = old.how, server or old.server  # a renewal keeps what was proven
        self.counters[how.replace("-", "_")] += 1
        binding = Binding(address, mac, how, server, now, now + max(self.hold_s, lease_s),
                          from_link)
        self._by_addr[address] = binding
        while len(self._by_addr) > self.limit:
            self._by_addr.popitem(last=False)
        return binding

    def drop(self, mac: str, address: str | None = None) -> int:
        """Forget what ``mac`` holds (``address`` only, if given): NAK, RELEASE, DECLINE."""
        if address is not None:
            found = self._by_addr.get(address)
            gone = [address] if found is not None and found.mac == mac else []
        else:
            gone = [a for a, b in self._by_addr.items() if b.mac == mac]
        for addr in gone:
            del self._by_addr[addr]
        self.counters["dropped"] += len(gone)
        return len(gone)

    def holder(self, address: str, now: float) -> Binding | None:
        binding = self._by_addr.get(address)
        if binding is None or binding.until <= now:
            return None
        return binding

    def clear(self) -> None:
        self._by_addr.clear()


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the server knows about one request's peer."""

    address: str
    proxy: bool  # Fleetboot is a proxyDHCP server: it holds no leases
    local: bool = False  # the peer is this host (loopback): no link to check
    on_link: bool = True  # the peer sits on a serving interface's subnet
    link_mac: str | None = None  # the kernel's neighbour entry for the peer
    lease_mac: str | None = None  # Fleetboot's own current lease on the address
    seen: Binding | None = None  # proxy mode: what the link's DHCP traffic tied to it
    claimed_mac: str | None = None  # the MAC iPXE put in the URL (a claim, never proof)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``mac`` is who asked (None: nobody may be served as a node); ``reason`` says why."""

    mac: str | None
    reason: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.mac is not None


def decide(e: Evidence) -> Verdict:
    """Bind the peer to a MAC only when every piece of evidence agrees.

    * The claimed MAC (from the URL) must match whatever the server saw.
    * Normal mode: Fleetboot's own current lease names the MAC; on the link the
      neighbour entry must name the same MAC (an address taken over by another
      machine is refused). A routed peer (a relay's client) has no link entry
      here: the lease alone names it.
    * Proxy mode: no lease is consulted. The neighbour entry names the MAC, and
      the link's DHCP traffic must have tied the address to that same MAC.
    """
    # In proxy mode Fleetboot gave no address: its lease table is never evidence.
    seen_mac = e.seen.mac if e.seen is not None else None
    expected = seen_mac if e.proxy else e.lease_mac
    if e.claimed_mac is not None:
        saw = {m for m in (e.link_mac, expected) if m}
        if saw != {e.claimed_mac}:
            return Verdict(None, "claim_mismatch", f"the URL names {e.claimed_mac}, the server "
                           f"sees {' and '.join(sorted(saw)) or 'no MAC'} at {e.address}")
    if e.local:
        return Verdict(expected, "local") if expected else _nothing(e)
    if not e.on_link:
        # Reached through a router: its neighbour entry is the router's, nothing to check.
        if not e.proxy:
            return Verdict(e.lease_mac, "routed_lease") if e.lease_mac else _nothing(e)
        if e.seen is not None and e.seen.from_link:
            return Verdict(e.seen.mac, "routed_seen")
        return Verdict(None, "routed", f"{e.address} is reached through a router and no "
                       "DHCP broadcast of the machine itself tied it to a MAC on a served "
                       "link; in proxy mode Fleetboot identifies only what it saw there")
    if e.link_mac is None:
        return Verdict(None, "no_link_address", f"the kernel holds no link-layer address for "
                       f"{e.address}; the machine must talk to the server directly")
    if expected is None:
        return _nothing(e)
    if expected != e.link_mac:
        what = "the address seen on the link" if e.proxy else "Fleetboot's lease"
        return Verdict(None, "link_mismatch", f"{e.address} answers from {e.link_mac} but "
                       f"{what} names {expected}: the address was taken over or reassigned")
    return Verdict(e.link_mac, "link" if not e.proxy else "link_seen")


def _nothing(e: Evidence) -> Verdict:
    if e.proxy:
        return Verdict(None, "not_seen", f"no DHCP exchange of {e.address} was seen on the "
                       "link (proxy mode identifies a machine by the address its DHCP "
                       "server acknowledged)")
    return Verdict(None, "no_lease", f"{e.address} holds no current lease from Fleetboot")
