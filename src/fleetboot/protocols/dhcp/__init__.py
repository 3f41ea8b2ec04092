"""DHCPv4 + PXE: wire codec, option numbers, lease table and server state machine. No I/O."""

from fleetboot.protocols.dhcp.codec import (
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    decode,
    encode,
)
from fleetboot.protocols.dhcp.engine import DhcpEngine, LeaseRecord, Reply
from fleetboot.protocols.dhcp.leases import LeaseInfo, LeaseTable
from fleetboot.protocols.dhcp.settings import ArchBoot, DhcpConfigError, DhcpSettings
from fleetboot.protocols.dhcp.view import DhcpView, build_view

__all__ = [
    "ArchBoot",
    "DhcpConfigError",
    "DhcpDecodeError",
    "DhcpEncodeError",
    "DhcpEngine",
    "DhcpPacket",
    "DhcpSettings",
    "DhcpView",
    "LeaseInfo",
    "LeaseRecord",
    "LeaseTable",
    "Reply",
    "build_view",
    "decode",
    "encode",
]
