"""Parsing and normalising the addresses users type: MACs and IPv4."""

from __future__ import annotations

import ipaddress
import re

from fleetboot.errors import FleetbootError

_HEX = re.compile(r"^[0-9a-f]{12}$")


class AddressError(FleetbootError, ValueError):
    pass


def normalize_mac(text: str) -> str:
    """Accept ``AA:BB:..``, ``aa-bb-..``, ``aabb.ccdd.eeff`` or bare hex; return ``aa:bb:..``."""
    digits = re.sub(r"[:\-.\s]", "", text.strip().lower())
    if not _HEX.match(digits):
        raise AddressError(f"{text!r} is not a MAC address; write it like 52:54:00:12:34:56")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_or_none(text: str | None) -> str | None:
    """``normalize_mac`` for text from the wire: None when it is empty or not a MAC."""
    if not text:
        return None
    try:
        return normalize_mac(text)
    except AddressError:
        return None


def mac_to_bytes(mac: str) -> bytes:
    return bytes.fromhex(normalize_mac(mac).replace(":", ""))


def bytes_to_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])


def parse_ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise AddressError(f"{text!r} is not an IPv4 address; write it like 10.0.0.5") from None


def parse_network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise AddressError(
            f"{text!r} is not an IPv4 network ({exc}); write it like 10.0.0.0/24"
        ) from None


def unicast_mac(text: str) -> str:
    """``normalize_mac`` plus what a real NIC's address must be: not all-zero, not
    broadcast, not multicast (the group bit, bit 0 of the first octet)."""
    mac = normalize_mac(text)
    if mac == "00:00:00:00:00:00":
        raise AddressError(f"{text!r} is the all-zero MAC, which no NIC has; "
                           "copy the address from the machine (ip link)")
    if mac == "ff:ff:ff:ff:ff:ff":
        raise AddressError(f"{text!r} is the broadcast MAC, which no NIC has; "
                           "copy the address from the machine (ip link)")
    if int(mac[:2], 16) & 1:
        raise AddressError(f"{text!r} is a multicast MAC (odd first octet), which no NIC "
                           "has; copy the address from the machine (ip link)")
    return mac
def parse_ipv6(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text.strip())
    except ValueError:
        raise AddressError(f"{text!r} is not an IPv6 address; write it like fd00:77::5") from None


def parse_network6(text: str) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(text.strip(), strict=True)
    except ValueError as exc:
        raise AddressError(
            f"{text!r} is not an IPv6 prefix ({exc}); write it like fd00:77::/64"
        ) from None


def normalize_duid(text: str) -> str:
    """Accept ``00:01:..``, ``00-01-..`` or bare hex; return lowercase colon-separated hex."""
    digits = re.sub(r"[:\-\s]", "", text.strip().lower())
    if not re.fullmatch(r"(?:[0-9a-f]{2}){3,130}", digits):
        raise AddressError(f"{text!r} is not a DUID; write it as hex bytes like "
                           "00:03:00:01:52:54:00:12:34:56 (3-130 bytes)")
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
