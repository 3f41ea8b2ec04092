"""DHCPv4 constants: message types, option codes (RFC 2132 and successors), PXE bits.

Only numbers live here; the codec treats every option as opaque bytes and the
engine knows which ones it reads and writes.
"""

from __future__ import annotations

import struct

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC_COOKIE = 0x63825363
BROADCAST_FLAG = 0x8000

# Message types (option 53)
DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8

MESSAGE_NAMES = {
    DISCOVER: "DISCOVER",
    OFFER: "OFFER",
    REQUEST: "REQUEST",
    DECLINE: "DECLINE",
    ACK: "ACK",
    NAK: "NAK",
    RELEASE: "RELEASE",
    INFORM: "INFORM",
}

# Option codes
PAD = 0
SUBNET_MASK = 1
ROUTER = 3
DNS_SERVERS = 6
HOSTNAME = 12
DOMAIN_NAME = 15
INTERFACE_MTU = 26
BROADCAST_ADDRESS = 28
VENDOR_SPECIFIC = 43
REQUESTED_ADDRESS = 50
LEASE_TIME = 51
OVERLOAD = 52
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAMETER_REQUEST_LIST = 55
MESSAGE = 56
MAX_MESSAGE_SIZE = 57
RENEWAL_TIME = 58
REBINDING_TIME = 59
VENDOR_CLASS = 60
CLIENT_ID = 61
TFTP_SERVER_NAME = 66
BOOTFILE_NAME = 67
USER_CLASS = 77
RELAY_AGENT_INFO = 82
CLIENT_ARCH = 93
CLIENT_NDI = 94
CLIENT_UUID = 97
IPXE_ENCAP = 175
END = 255

# Option 52 values: which BOOTP fields hold more options.
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2
OVERLOAD_BOTH = 3

# PXE (Intel PXE 2.1 spec) vendor sub-option 6, PXE_DISCOVERY_CONTROL. Bit 3 (value 8):
# "if a boot file name is in the offer, download it" -- no boot-server discovery on 4011.
PXE_DISCOVERY_CONTROL = 6
PXE_USE_BOOTFILE = 8
PXE_VENDOR_OPTIONS = bytes([PXE_DISCOVERY_CONTROL, 1, PXE_USE_BOOTFILE, END])

PXE_CLIENT = b"PXEClient"
HTTP_CLIENT = b"HTTPClient"
IPXE_USER_CLASS = b"iPXE"

# RFC 2131 4.1: without option 57 a client accepts 576-byte IP datagrams.
MIN_MAX_MESSAGE_SIZE = 576
IP_UDP_HEADERS = 28
# BOOTP relays and old clients expect at least 300 bytes of BOOTP message (RFC 1542 2.1).
MIN_PACKET = 300

# Wire ranges of stored subnet values (RFC 2132): option 26 is 16 bits and at least
# 68; lease times are 32 bits, all ones meaning "infinite" (never handed out); an
# option carries at most 255 bytes (so 63 DNS servers).
MIN_MTU, MAX_MTU = 68, 0xFFFF
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 60, 0xFFFFFFFE
MAX_OPTION_LEN = 255

U32 = struct.Struct("!I")
U16 = struct.Struct("!H")


def u32(value: int) -> bytes:
    return U32.pack(value)


def ip_bytes(value: int) -> bytes:
    return U32.pack(value)


def ip_text(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def ip_int(text: str) -> int:
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"{text!r} is not an IPv4 address")
    value = 0
    for part in parts:
        octet = int(part)
        if not 0 <= octet <= 255:
            raise ValueError(f"{text!r} is not an IPv4 address")
        value = (value << 8) | octet
    return value


def mac_text(mac: bytes) -> str:
    return mac.hex(":")
