"""Settings of the DHCP server: plain frozen dataclasses the config file maps onto.

Policies and the architecture table are data, not code: the config file can
replace every entry. Defaults suit a lab: serve unknown machines from the pool,
give non-boot NICs an address without a boot file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from fleetboot.errors import FleetbootError
from fleetboot.protocols.dhcp.options import ip_int

UnknownPolicy = Literal["serve", "ignore"]
# address: an address, never a boot file; ignore_boot: no answer to firmware/iPXE
# (an OS DHCP client on that NIC still gets its address); ignore: no answer at all.
NonBootPolicy = Literal["address", "ignore_boot", "ignore"]


class DhcpConfigError(FleetbootError):
    pass


@dataclass(frozen=True)
class ArchBoot:
    """What one client architecture (option 93, IANA registry) boots first.

    ``tftp_file`` is a name under the TFTP boot root (PXE firmware); ``http_file``
    a path under the HTTP app's ``/boot/files/`` or a full ``http://`` URL (UEFI
    HTTP boot). ``{http_host}`` and ``{http_port}`` in either are filled in.
    """

    name: str
    tftp_file: str | None = None
    http_file: str | None = None


def default_architectures() -> Mapping[int, ArchBoot]:
    return MappingProxyType({
        0: ArchBoot("x86 BIOS", tftp_file="undionly.kpxe"),
        6: ArchBoot("x86 UEFI", tftp_file="snponly.efi"),
        7: ArchBoot("x86-64 UEFI", tftp_file="snponly.efi"),
        9: ArchBoot("x86-64 UEFI", tftp_file="snponly.efi"),
        # ARM64 gets Debian's network GRUB (no package ships an ARM64 iPXE); no package
        # ships an ARM32 UEFI network boot program, so code 10 is left out.
        11: ArchBoot("ARM64 UEFI", tftp_file="arm64/grubnetaa64.efi"),
        15: ArchBoot("x86 UEFI HTTP", http_file="ipxe.efi"),
        16: ArchBoot("x86-64 UEFI HTTP", http_file="ipxe.efi"),
        19: ArchBoot("ARM64 UEFI HTTP", http_file="arm64/grubnetaa64.efi"),
    })


@dataclass(frozen=True)
class DhcpSettings:
    interfaces: tuple[str, ...] = ()  # empty: one socket on ``address`` for every interface
    address: str = "0.0.0.0"
    port: int = 67
    client_port: int = 68
    proxy: bool = False  # proxyDHCP beside another DHCP server: boot info only, no addresses
    proxy_port: int = 4011
    server_id: str | None = None  # default: the address of the receiving interface
    next_server: str | None = None  # TFTP server when the subnet names none; else server id
    http_host: str | None = None  # host in boot URLs; default: the next server
    http_port: int = 8080
    ipxe_script_path: str = "/boot/script.ipxe"
    http_files_path: str = "/boot/files/"
    unknown_clients: UnknownPolicy = "serve"
    non_boot_interfaces: NonBootPolicy = "address"
    boot_unknown: bool = True  # unknown PXE clients get the boot file too (enrolment)
    authoritative: bool = True  # NAK requests for addresses we know to be wrong
    architectures: Mapping[int, ArchBoot] = field(default_factory=default_architectures)
    offer_hold_s: float = 30.0
    decline_hold_s: float = 600.0
    journal_window_ms: float = 5.0  # least time between two lease commits
    journal_max_batch: int = 4096
    # Reply pacing: at most tx_burst back to back, then tx_pace_per_s (0: unpaced).
    tx_pace_per_s: int = 30_000
    tx_burst: int = 64

    def __post_init__(self) -> None:
        if self.unknown_clients not in ("serve", "ignore"):
            raise DhcpConfigError(
                f"dhcp unknown_clients is {self.unknown_clients!r}; use 'serve' or 'ignore'")
        if self.non_boot_interfaces not in ("address", "ignore_boot", "ignore"):
            raise DhcpConfigError(f"dhcp non_boot_interfaces is {self.non_boot_interfaces!r};"
                                  " use 'address', 'ignore_boot' or 'ignore'")
        for name in ("port", "client_port", "proxy_port", "http_port"):
            if not 0 < getattr(self, name) < 65536:
                raise DhcpConfigError(f"dhcp {name} must be a UDP port (1-65535)")
        for name in ("address", "server_id", "next_server"):
            value = getattr(self, name)
            if value is not None:
                try:
                    ip_int(value)
                except ValueError:
                    raise DhcpConfigError(
                        f"dhcp {name} {value!r} is not an IPv4 address like 10.0.0.1") from None
        if self.journal_window_ms < 0 or self.journal_max_batch < 1:
            raise DhcpConfigError("dhcp journal_window_ms must be >= 0 and journal_max_batch >= 1")
        if self.tx_pace_per_s < 0 or self.tx_burst < 1:
            raise DhcpConfigError("dhcp tx_pace_per_s must be >= 0 and tx_burst >= 1")
        if self.offer_hold_s <= 0 or self.decline_hold_s <= 0:
            raise DhcpConfigError("dhcp offer_hold_s and decline_hold_s must be positive")
