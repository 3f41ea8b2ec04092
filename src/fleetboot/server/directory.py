"""Who is asking: maps a request's source address to the node that holds its lease.

The DHCP service's lease table implements ``LeaseDirectory``; HTTP handlers use
it to identify nodes (a node may read only its own boot script and configuration).
"""

from __future__ import annotations

from typing import Protocol


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
