"""DHCPv6 constants (RFC 8415 and the boot options of RFC 5970, RFC 6939). Numbers only."""

from __future__ import annotations

import ipaddress
import struct

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS_AND_RELAYS = "ff02::1:2"

# Message types
SOLICIT = 1
ADVERTISE = 2
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
DECLINE = 9
RECONFIGURE = 10
INFORMATION_REQUEST = 11
RELAY_FORW = 12
RELAY_REPL = 13

MESSAGE_NAMES = {
    SOLICIT: "SOLICIT", ADVERTISE: "ADVERTISE", REQUEST: "REQUEST", CONFIRM: "CONFIRM",
    RENEW: "RENEW", REBIND: "REBIND", REPLY: "REPLY", RELEASE: "RELEASE", DECLINE: "DECLINE",
    RECONFIGURE: "RECONFIGURE", INFORMATION_REQUEST: "INFORMATION-REQUEST",
    RELAY_FORW: "RELAY-FORW", RELAY_REPL: "RELAY-REPL",
}

# Option codes
CLIENTID = 1
SERVERID = 2
IA_NA = 3
IA_TA = 4
IAADDR = 5
ORO = 6
PREFERENCE = 7
ELAPSED_TIME = 8
RELAY_MSG = 9
AUTH = 11
UNICAST = 12
STATUS_CODE = 13
RAPID_COMMIT = 14
USER_CLASS = 15
VENDOR_CLASS = 16
VENDOR_OPTS = 17
INTERFACE_ID = 18
RECONF_ACCEPT = 20
DNS_SERVERS = 23
DOMAIN_LIST = 24
IA_PD = 25
INFORMATION_REFRESH_TIME = 32
BOOTFILE_URL = 59  # RFC 5970
BOOTFILE_PARAM = 60
CLIENT_ARCH_TYPE = 61
NII = 62
CLIENT_LINKLAYER_ADDR = 79  # RFC 6939, added by relays

# Status codes (option 13)
SUCCESS = 0
UNSPEC_FAIL = 1
NO_ADDRS_AVAIL = 2
NO_BINDING = 3
NOT_ON_LINK = 4
USE_MULTICAST = 5

# DUID types
DUID_LLT = 1
DUID_EN = 2
DUID_LL = 3
DUID_UUID = 4
HW_ETHERNET = 1

HOP_COUNT_LIMIT = 8  # RFC 8415 7.6: relays drop beyond this, so deeper nesting is malformed
INFINITY = 0xFFFFFFFF

PXE_CLIENT = b"PXEClient"
HTTP_CLIENT = b"HTTPClient"
IPXE_USER_CLASS = b"iPXE"

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
HEADER = struct.Struct("!I")  # message type (1 byte) + transaction id (3 bytes)
OPTION = struct.Struct("!HH")


def ip6_text(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def ip6_int(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def ip6_bytes(value: int) -> bytes:
    return value.to_bytes(16, "big")


def mac_text(mac: bytes) -> str:
    return mac.hex(":")
