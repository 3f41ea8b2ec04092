"""The identity resolver: gathers the evidence for one peer and lets ``core.decide`` rule.

It is the ``LeaseDirectory`` every node-facing endpoint uses (HTTP scripts and
files, TFTP, the node-config API): ``mac_for_address`` answers only for a peer
whose identity holds (see ``fleetboot.identity``). Lookups are dict gets plus one
netlink neighbour get; nothing here waits on the database or disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from fleetboot.identity.core import Evidence, LinkBook, Verdict, decide
from fleetboot.inventory.addr import mac_or_none
from fleetboot.server.metrics import RateLimitedLog

log = logging.getLogger(__name__)


class Neighbours(Protocol):
    def lookup(self, address: str) -> str | None: ...

    def on_link(self, address: str) -> bool: ...


class Leases(Protocol):
    def mac_for_address(self, address: str) -> str | None:
        """The MAC of Fleetboot's own unexpired lease on ``address``."""
        ...


class IdentityResolver:
    """Peer address (+ the MAC a URL claims) -> :class:`Verdict`."""

    def __init__(self, *, proxy: bool, leases: Leases | None, book: LinkBook,
                 neighbours: Neighbours, local_addresses: Callable[[], set[str]] = set,
                 clock: Callable[[], float] = time.time) -> None:
        self.proxy = proxy
        self.leases = leases
        self.book = book
        self.neighbours = neighbours
        self.local_addresses = local_addresses
        self.clock = clock
        self.counters: dict[str, int] = {}
        self._rlog = RateLimitedLog(log)

    def identify(self, address: str, claimed: str | None = None) -> Verdict:
        if address.startswith("::ffff:"):
            address = address[7:]
        verdict = decide(self.evidence(address, claimed))
        counters = self.counters
        key = ("ok." if verdict.ok else "refused.") + verdict.reason
        counters[key] = counters.get(key, 0) + 1
        if not verdict.ok and verdict.reason in ("link_mismatch", "claim_mismatch"):
            self._rlog.warning(verdict.reason, "identity refused: %s", verdict.detail)
        return verdict

    def evidence(self, address: str, claimed: str | None = None) -> Evidence:
        local = _is_local(address) or address in self.local_addresses()
        claim = mac_or_none(claimed)
        if claimed and claim is None:
            claim = "unreadable"  # a claim that is not a MAC matches nothing
        if self.proxy:
            seen = self.book.holder(address, self.clock())
            lease_mac = None
        else:
            seen = None
            lease_mac = self.leases.mac_for_address(address) if self.leases else None
        if local:
            return Evidence(address, self.proxy, local=True, lease_mac=lease_mac, seen=seen,
                            claimed_mac=claim)
        on_link = self.neighbours.on_link(address)
        link = self.neighbours.lookup(address) if on_link else None
        return Evidence(address, self.proxy, on_link=on_link, link_mac=link,
                        lease_mac=lease_mac, seen=seen, claimed_mac=claim)

    # --- LeaseDirectory ---

    def mac_for_address(self, address: str) -> str | None:
        return self.identify(address).mac

    def explain(self, address: str) -> str:
        """Why ``address`` is (not) a node, for refusals (not counted again)."""
        if address.startswith("::ffff:"):
            address = address[7:]
        verdict = decide(self.evidence(address))
        return verdict.detail or verdict.reason


def _is_local(address: str) -> bool:
    # Cheaper than ipaddress on the hot path; the same answer for what a socket reports.
    return address.startswith("127.") or address == "::1"
