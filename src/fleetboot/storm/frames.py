"""Ethernet/IPv4/UDP framing for the simulator's raw DHCP socket. Pure.

Firmware sends its DHCP messages from address 0.0.0.0 with its own MAC as the
Ethernet source, which an ordinary UDP socket cannot do; the simulator writes
whole frames on an AF_PACKET socket instead. The DHCP message inside is built
by the project's DHCP codec; this module only wraps and unwraps it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_HEADER = struct.Struct("!6s6sH")
IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")
BROADCAST_MAC = b"\xff" * 6
MIN_FRAME = ETH_HEADER.size + IP_HEADER.size + UDP_HEADER.size

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    sport: int,
    dport: int,
    payload: bytes,
    ident: int = 0,
) -> bytes:
    """One Ethernet frame carrying ``payload`` in a UDP datagram (checksums filled in)."""
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    udp_len = UDP_HEADER.size + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp_sum = checksum(pseudo + UDP_HEADER.pack(sport, dport, udp_len, 0) + payload) or 0xFFFF
    ip_len = IP_HEADER.size + udp_len
    ip_wo_sum = IP_HEADER.pack(0x45, 0, ip_len, ident & 0xFFFF, 0, 64, socket.IPPROTO_UDP, 0,
                               src, dst)
    ip = IP_HEADER.pack(0x45, 0, ip_len, ident & 0xFFFF, 0, 64, socket.IPPROTO_UDP,
                        checksum(ip_wo_sum), src, dst)
    return (ETH_HEADER.pack(dst_mac, src_mac, ETH_P_IP) + ip
            + UDP_HEADER.pack(sport, dport, udp_len, udp_sum) + payload)


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    src_mac: bytes
    dst_mac: bytes
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    payload: bytes


def parse_udp_frame(frame: bytes) -> UdpDatagram | None:
    """The UDP datagram in an Ethernet frame, or None for anything else (never raises)."""
    if len(frame) < MIN_FRAME:
        return None
    dst_mac, src_mac, ethertype = ETH_HEADER.unpack_from(frame)
    if ethertype != ETH_P_IP:
        return None
    ver_ihl, _tos, total, _id, frag, _ttl, proto, _sum, src, dst = IP_HEADER.unpack_from(
        frame, ETH_HEADER.size)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < IP_HEADER.size or proto != socket.IPPROTO_UDP:
        return None
    if frag & 0x3FFF:  # a fragment (MF set or an offset): DHCP replies never are
        return None
    ip_start = ETH_HEADER.size
    if total < ihl + UDP_HEADER.size or ip_start + total > len(frame):
        return None
    sport, dport, udp_len, _ = UDP_HEADER.unpack_from(frame, ip_start + ihl)
    if udp_len < UDP_HEADER.size or ihl + udp_len > total:
        return None
    body = ip_start + ihl + UDP_HEADER.size
    return UdpDatagram(src_mac, dst_mac, socket.inet_ntoa(src), socket.inet_ntoa(dst),
                       sport, dport, bytes(frame[body : body + udp_len - UDP_HEADER.size]))


# A classic BPF program: accept IPv4 UDP to port 68 that is not a fragment,
# drop the rest. It keeps the kernel from copying the storm's TFTP and HTTP
# traffic into the raw DHCP socket. (code, jt, jf, k) per instruction.
_ACCEPT_DHCP_CLIENT = (
    (0x28, 0, 0, 12),  # ldh [12]            ethertype
    (0x15, 0, 8, ETH_P_IP),  # jeq IPv4, else drop
    (0x30, 0, 0, 23),  # ldb [23]            IP protocol
    (0x15, 0, 6, socket.IPPROTO_UDP),  # jeq UDP, else drop
    (0x28, 0, 0, 20),  # ldh [20]            flags + fragment offset
    (0x45, 4, 0, 0x1FFF),  # jset offset: drop
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 16),  # ldh [x+16]          UDP destination port
    (0x15, 0, 1, DHCP_CLIENT_PORT),  # jeq 68: accept, else drop
    (0x06, 0, 0, 0x40000),  # ret: accept the whole frame
    (0x06, 0, 0, 0),  # ret 0: drop
)


def dhcp_client_filter() -> bytes:
    """The BPF instructions as ``struct sock_filter[]`` bytes."""
    return b"".join(struct.pack("=HBBI", *ins) for ins in _ACCEPT_DHCP_CLIENT)


def bpf_instruction_count() -> int:
    return len(_ACCEPT_DHCP_CLIENT)
