"""Settings of the DHCPv6 server and of router advertisements: frozen dataclasses.

The architecture table is the DHCPv4 one (option 61 uses the same IANA
processor-architecture registry as option 93), so one ``architectures:``
section of the config file serves both families.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetboot.protocols.dhcp.settings import (
    ArchBoot,
    DhcpConfigError,
    NonBootPolicy,
    UnknownPolicy,
    default_architectures,
)
from fleetboot.protocols.dhcp6 import options as o


@dataclass(frozen=True)
class Dhcp6Settings:
    interfaces: tuple[str, ...] = ()  # empty: every interface with a global IPv6 address
    port: int = o.SERVER_PORT
    client_port: int = o.CLIENT_PORT
    server_duid: str | None = None  # hex; default DUID-LL of the first served interface
    server_address: str | None = None  # host in boot URLs; default: our address on the link
    http_port: int = 8080
    ipxe_script_path: str = "/boot/script.ipxe"
    http_files_path: str = "/boot/files/"
    unknown_clients: UnknownPolicy = "serve"
    non_boot_interfaces: NonBootPolicy = "address"
    boot_unknown: bool = True
    rapid_commit: bool = True  # answer a SOLICIT carrying rapid commit with a REPLY
    preference: int = 255  # option 7 in ADVERTISE: 255 makes clients take us at once
    architectures: Mapping[int, ArchBoot] = field(default_factory=default_architectures)
    # Option 60 (RFC 5970 boot file parameters) sent with every boot file URL, if any.
    boot_file_params: tuple[str, ...] = ()
    offer_hold_s: float = 30.0
    decline_hold_s: float = 600.0
    journal_window_ms: float = 5.0
    journal_max_batch: int = 4096
    # Reply pacing, as DHCPv4: at most tx_burst back to back, then tx_pace_per_s (0: unpaced).
    tx_pace_per_s: int = 30_000
    tx_burst: int = 64
    # Router advertisements (managed flag, prefix information) on served interfaces.
    # Off by default: where a router already advertises the link, a second one conflicts.
    router_advertisements: bool = False
    ra_interval_s: float = 30.0
    ra_router_lifetime_s: int = 0  # 0: "not a default router", only M/O flags and prefixes
    ra_autonomous: bool = False  # A flag in the prefix option: also SLAAC addresses

    def __post_init__(self) -> None:
        if self.unknown_clients not in ("serve", "ignore"):
            raise DhcpConfigError(
                f"dhcp6 unknown_clients is {self.unknown_clients!r}; use 'serve' or 'ignore'")
        if self.non_boot_interfaces not in ("address", "ignore_boot", "ignore"):
            raise DhcpConfigError(f"dhcp6 non_boot_interfaces is {self.non_boot_interfaces!r};"
                                  " use 'address', 'ignore_boot' or 'ignore'")
        for name in ("port", "client_port", "http_port"):
            if not 0 < getattr(self, name) < 65536:
                raise DhcpConfigError(f"dhcp6 {name} must be a UDP port (1-65535)")
        if self.server_address is not None:
            try:
                ipaddress.IPv6Address(self.server_address)
            except ValueError:
                raise DhcpConfigError(f"dhcp6 server_address {self.server_address!r} is not "
                                      "an IPv6 address like fd00::1") from None
        if self.server_duid is not None:
            try:
                raw = bytes.fromhex(self.server_duid.replace(":", ""))
            except ValueError:
                raw = b""
            if not 3 <= len(raw) <= 130:
                raise DhcpConfigError("dhcp6 server_duid must be 3-130 bytes of hex, like "
                                      "00:03:00:01:52:54:00:12:34:56")
        if not 0 <= self.preference <= 255:
            raise DhcpConfigError("dhcp6 preference must be 0-255")
        if self.journal_window_ms < 0 or self.journal_max_batch < 1:
            raise DhcpConfigError("dhcp6 journal_window_ms must be >= 0 and "
                                  "journal_max_batch >= 1")
        if self.tx_pace_per_s < 0 or self.tx_burst < 1:
            raise DhcpConfigError("dhcp6 tx_pace_per_s must be >= 0 and tx_burst >= 1")
        if self.offer_hold_s <= 0 or self.decline_hold_s <= 0:
            raise DhcpConfigError("dhcp6 offer_hold_s and decline_hold_s must be positive")
        if self.ra_interval_s < 3 or not 0 <= self.ra_router_lifetime_s <= 9000:
            raise DhcpConfigError("dhcp6 ra_interval_s must be >= 3 and ra_router_lifetime_s "
                                  "0-9000 (RFC 4861)")
