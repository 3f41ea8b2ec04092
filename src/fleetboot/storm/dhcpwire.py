"""The simulated clients' DHCP messages, built and read with the project's codec. Pure.

Only client-side choices live here: the three personalities a machine shows
during one boot (PXE firmware, iPXE, the booted OS: different vendor classes,
client-ids and parameter lists, as measured from the real clients) and which
fields a DISCOVER or REQUEST sets. The bytes on the wire come from
``fleetboot.protocols.dhcp.codec``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import DhcpDecodeError, DhcpPacket, decode, encode

# Parameter request lists as the real clients send them (real-clients.md, udhcpc).
PXE_PARAMS = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51,
                    54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
IPXE_PARAMS = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132,
                     133, 134, 135, 175, 203])
OS_PARAMS = bytes([1, 3, 6, 12, 15, 28, 42])
# iPXE's option 175: feature flags (HTTP, PXE extensions, bzImage, EFI, ...), version.
IPXE_FEATURES = bytes([0x13, 1, 1, 0x11, 1, 1, 0x18, 1, 1, 0x19, 1, 1, 0x24, 1, 1,
                       0xEB, 3, 1, 21, 1])


@dataclass(frozen=True)
class Personality:
    """Which DHCP client a machine is running at the moment."""

    kind: str  # "pxe" | "ipxe" | "os"
    options: tuple[tuple[int, bytes], ...]  # sent in this order in DISCOVER and REQUEST
    broadcast: bool = True


def _uuid(mac: bytes) -> bytes:
    return b"\0" + bytes(10) + mac  # option 97: type 0, a 16-byte GUID derived from the MAC


def pxe_personality(mac: bytes, arch: int, vendor_class: str, broadcast: bool) -> Personality:
    return Personality("pxe", (
        (o.MAX_MESSAGE_SIZE, o.U16.pack(1472)),
        (o.PARAMETER_REQUEST_LIST, PXE_PARAMS),
        (o.CLIENT_UUID, _uuid(mac)),
        (o.CLIENT_NDI, bytes([1, 3, 0])),
        (o.CLIENT_ARCH, o.U16.pack(arch)),
        (o.VENDOR_CLASS, vendor_class.encode()),
    ), broadcast)


def ipxe_personality(mac: bytes, arch: int, vendor_class: str, broadcast: bool) -> Personality:
    return Personality("ipxe", (
        (o.MAX_MESSAGE_SIZE, o.U16.pack(1472)),
        (o.CLIENT_ARCH, o.U16.pack(arch)),
        (o.CLIENT_NDI, bytes([1, 3, 10])),
        (o.VENDOR_CLASS, vendor_class.encode()),
        (o.USER_CLASS, o.IPXE_USER_CLASS),
        (o.IPXE_ENCAP, IPXE_FEATURES),
        (o.CLIENT_ID, b"\x01" + mac),
        (o.CLIENT_UUID, _uuid(mac)),
        (o.PARAMETER_REQUEST_LIST, IPXE_PARAMS),
    ), broadcast)


def os_personality(mac: bytes, vendor_class: str, broadcast: bool) -> Personality:
    # An RFC 4361 client-id (IAID + DUID-LL), as systemd-networkd and dhcpcd send:
    # different from the firmware's, as on real machines.
    client_id = b"\xff" + mac[-4:] + b"\x00\x03\x00\x01" + mac
    return Personality("os", (
        (o.CLIENT_ID, client_id),
        (o.MAX_MESSAGE_SIZE, o.U16.pack(576)),
        (o.VENDOR_CLASS, vendor_class.encode()),
        (o.PARAMETER_REQUEST_LIST, OS_PARAMS),
    ), broadcast)



@dataclass(frozen=True, slots=True)
class Reply:
    """What a client reads from a server's answer."""

    msg_type: int
    xid: int
    chaddr: bytes  # the client MAC the answer is for
    yiaddr: str
    siaddr: str
    file: str  # the BOOTP file field, else option 67
    server_id: str  # option 54, "" when absent
    options: dict[int, bytes]


def _message(xid: int, hw: bytes, secs: int, who: Personality, msg_type: int,
             extra: dict[int, bytes]) -> bytes:
    opts = {o.MESSAGE_TYPE: bytes([msg_type]), **extra}
    for code, value in who.options:
        opts.setdefault(code, value)
    packet = DhcpPacket(xid=xid, secs=min(secs, 0xFFFF),
                        flags=o.BROADCAST_FLAG if who.broadcast else 0,
                        chaddr=hw.ljust(16, b"\0"), options=opts)
    return encode(packet)


def discover(xid: int, hw: bytes, secs: int, who: Personality) -> bytes:
    return _message(xid, hw, secs, who, o.DISCOVER, {})


def request(xid: int, hw: bytes, secs: int, who: Personality, offer: Reply) -> bytes:
    """The SELECTING-state REQUEST for ``offer`` (RFC 2131 4.3.2): address and server id."""
    extra = {o.REQUESTED_ADDRESS: socket.inet_aton(offer.yiaddr)}
    if offer.server_id:
        extra[o.SERVER_ID] = socket.inet_aton(offer.server_id)
    return _message(xid, hw, secs, who, o.REQUEST, extra)


def read_reply(payload: bytes) -> Reply | None:
    """A server's BOOTREPLY, or None for anything else (malformed, a request, no type)."""
    try:
        packet = decode(payload)
    except DhcpDecodeError:
        return None
    msg_type = packet.message_type
    if packet.op != o.BOOTREPLY or msg_type is None:
        return None
    server_id = packet.options.get(o.SERVER_ID, b"")
    file = packet.file or packet.options.get(o.BOOTFILE_NAME, b"").rstrip(b"\0")
    return Reply(
        msg_type=msg_type, xid=packet.xid, chaddr=bytes(packet.mac),
        yiaddr=o.ip_text(packet.yiaddr),
        siaddr=o.ip_text(packet.siaddr), file=file.decode("utf-8", "replace"),
        server_id=o.ip_text(o.U32.unpack(server_id)[0]) if len(server_id) == 4 else "",
        options=packet.options,
    )
