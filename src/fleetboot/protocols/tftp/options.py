"""Option negotiation (RFC 2347/2348/2349/7440) and per-client quirks. Pure.

``negotiate`` turns the options a client asked for into the transfer
parameters and the OACK to send, within the limits of an :class:`OptionPolicy`.
Per-client quirks (:class:`TftpQuirk`) narrow the policy for firmware that
misbehaves with options or large blocks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fleetboot.protocols.tftp.codec import MAX_BLKSIZE, MIN_BLKSIZE, ErrorCode, TftpError

DEFAULT_BLKSIZE = 512
IPV4_OVERHEAD = 20 + 8 + 4  # IPv4 header + UDP header + TFTP DATA header
IPV6_OVERHEAD = 40 + 8 + 4


def blksize_for_mtu(mtu: int, ipv6: bool = False) -> int:
    """The largest blksize whose DATA packet fits one frame: MTU 1500 -> 1468."""
    size = mtu - (IPV6_OVERHEAD if ipv6 else IPV4_OVERHEAD)
    return max(MIN_BLKSIZE, min(MAX_BLKSIZE, size))


@dataclass(frozen=True)
class OptionPolicy:
    """What the server allows for one client."""

    options_enabled: bool = True
    max_blksize: int = 1468
    max_windowsize: int = 64
    tsize: bool = True
    timeout_option: bool = True


@dataclass(frozen=True)
class TftpQuirk:
    """Narrower settings for some clients, matched by address and/or MAC prefix.

    ``network`` is an address or CIDR ("10.0.0.7", "10.0.5.0/24");
    ``mac_prefix`` a MAC prefix ("52:54:00"). A quirk with both set needs both
    to match; the first matching quirk wins.
    """

    network: str | None = None
    mac_prefix: str | None = None
    disable_options: bool = False
    max_blksize: int | None = None
    max_windowsize: int | None = None
    description: str = ""

    def matches(self, ip: str, mac: str | None) -> bool:
        if self.network is None and self.mac_prefix is None:
            return False
        if self.network is not None:
            try:
                if ipaddress.ip_address(ip) not in ipaddress.ip_network(self.network, strict=False):
                    return False
            except ValueError:
                return False
        if self.mac_prefix is not None:
            prefix = self.mac_prefix.lower().replace("-", ":")
            if mac is None or not mac.lower().startswith(prefix):
                return False
        return True

    def apply(self, policy: OptionPolicy) -> OptionPolicy:
        new = policy
        if self.disable_options:
            new = replace(new, options_enabled=False)
        if self.max_blksize is not None:
            new = replace(new, max_blksize=min(new.max_blksize, self.max_blksize))
        if self.max_windowsize is not None:
            new = replace(new, max_windowsize=min(new.max_windowsize, self.max_windowsize))
        return new


def policy_for(base: OptionPolicy, quirks: Sequence[TftpQuirk], ip: str,
               mac: str | None) -> OptionPolicy:
    for quirk in quirks:
        if quirk.matches(ip, mac):
            return quirk.apply(base)
    return base


@dataclass(frozen=True)
class Negotiated:
    """Transfer parameters; ``oack`` is None when the reply is plain DATA 1."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None  # seconds asked for by the client, if any
    oack: dict[str, str] | None = None


def _int_option(name: str, value: str) -> int:
    text = value.strip()
    # isascii: str.isdigit() also accepts "¹" and other digits int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise TftpError(ErrorCode.OPTION_NEGOTIATION, f"option {name}={value!r} is not a number")
    return int(text)


def negotiate(requested: dict[str, str], size: int, policy: OptionPolicy) -> Negotiated:
    """Accept, clamp or refuse the client's options for a read of ``size`` bytes.

    Unknown options are ignored (RFC 2347). Malformed or out-of-range values
    raise :class:`TftpError` with code 8, which the server sends back.
    """
    if not policy.options_enabled or not requested:
        return Negotiated()
    oack: dict[str, str] = {}
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    for name, value in requested.items():
        if name == "blksize":
            asked = _int_option(name, value)
            if asked < MIN_BLKSIZE:
                raise TftpError(ErrorCode.OPTION_NEGOTIATION, f"blksize {asked} is below 8")
            blksize = min(asked, MAX_BLKSIZE, max(MIN_BLKSIZE, policy.max_blksize))
            oack[name] = str(blksize)
        elif name == "tsize" and policy.tsize:
            _int_option(name, value)  # RRQ sends 0; any number is accepted
            oack[name] = str(size)
        elif name == "timeout" and policy.timeout_option:
            asked = _int_option(name, value)
            if not 1 <= asked <= 255:
                raise TftpError(ErrorCode.OPTION_NEGOTIATION, f"timeout {asked} is not 1..255")
            timeout = float(asked)
            oack[name] = str(asked)
        elif name == "windowsize" and policy.max_windowsize >= 1:
            asked = _int_option(name, value)
            if not 1 <= asked <= 65535:
                raise TftpError(ErrorCode.OPTION_NEGOTIATION, f"windowsize {asked} is not 1..65535")
            windowsize = min(asked, policy.max_windowsize)
            oack[name] = str(windowsize)
    return Negotiated(blksize, windowsize, timeout, oack or None)
