"""Who is asking: maps a request's source address to the node that holds its lease.

The DHCP service's lease table implements ``LeaseDirectory``; HTTP handlers use
it to identify nodes (a node may read only its own boot script and configuration).
"""

from __future__ import annotations

from typing import Protocol

from fleetboot.identity.core import Verdict
from fleetboot.inventory.addr import mac_or_none


class LeaseDirectory(Protocol):
    def mac_for_address(self, address: str) -> str | None:
        """The MAC holding a current (unexpired) lease on ``address``, if any."""
        ...


class StaticDirectory:
    """A fixed address→MAC map: nodes with static addresses, and HTTP tests without DHCP."""

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        self.mapping = dict(mapping or {})

    def mac_for_address(self, address: str) -> str | None:
        return self.mapping.get(address)


class DirectoryChain:
    """Several directories asked in turn: the DHCPv4 leases, then the DHCPv6 ones."""

    def __init__(self, *directories: LeaseDirectory) -> None:
        self.directories = directories

    def mac_for_address(self, address: str) -> str | None:
        for directory in self.directories:
            mac = directory.mac_for_address(address)
            if mac is not None:
                return mac
        return None

    def identify(self, address: str, claimed: str | None = None) -> Verdict:
        """The first directory that binds the address decides, each with its own checks
        (DHCPv4's against the link; a plain one by lease, the URL's MAC a claim to match).
        Without this, a chain would lose the DHCP service's checks of the ``?mac=`` claim.
        """
        refusal: Verdict | None = None
        for directory in self.directories:
            identify = getattr(directory, "identify", None)
            verdict = (identify(address, claimed) if identify is not None
                       else _by_lease(directory.mac_for_address(address), claimed))
            if verdict.ok:
                return verdict
            if refusal is None or refusal.reason == "no lease":  # say why one that knew it refused
                refusal = verdict
        return refusal or Verdict(None, "no lease", f"{address} holds no lease")


def _by_lease(mac: str | None, claimed: str | None) -> Verdict:
    if mac is None:
        return Verdict(None, "no lease")
    wanted = mac_or_none(claimed)
    if claimed and wanted != mac:
        return Verdict(None, "claim differs", f"the URL names {claimed}, the lease {mac}")
    return Verdict(mac, "lease")
