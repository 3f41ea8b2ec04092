"""Is anybody there? A session-less IPMI "Get Channel Authentication Capabilities".

pyghmi drives all its sessions from one shared I/O loop; measured here, 20
BMCs that never answer, mixed among 180 healthy ones, made most of the healthy
ones time out too (a cycle of 200: 14-55 ok instead of 180). So before a BMC
gets a pyghmi session it must answer this one request, the same one ipmitool
sends first, over asyncio: a silent BMC then costs only its own budget and
never enters pyghmi. (A BMC that answers this and wedges later inside a session
can still slow pyghmi down; that is rarer than a dead or unreachable BMC.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

# RMCP (version 6, no ack, class IPMI), IPMI 1.5 session header with no auth,
# then the message: BMC 0x20, netfn App (6), command 0x38, channel 0x0e (this
# one) with bit 7 (IPMI 2.0 data wanted), maximum privilege admin (4).
REQUEST = bytes.fromhex("0600ff07" "00" "00000000" "00000000" "09"
                        "2018c8" "810038" "8e04" "b5")
_CMD_OFFSET = 19  # 4 RMCP + 1 auth + 4 seq + 4 id + 1 length, then rqAddr netfn chk rsAddr seq


def checksum(data: bytes) -> int:
    """IPMI's two's-complement checksum: the bytes plus it sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def is_auth_caps_answer(data: bytes) -> bool:
    """Whether ``data`` is a BMC's answer to ``REQUEST`` (any completion code)."""
    if len(data) < _CMD_OFFSET + 2 or data[0] != 0x06 or data[3] & 0x1F != 0x07:
        return False
    netfn = data[15] >> 2
    return netfn == 0x07 and data[_CMD_OFFSET] == 0x38  # App response (6 | 1)


class _Probe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if is_auth_caps_answer(data) and not self.answered.done():
            self.answered.set_result(None)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable and the like: keep waiting until the deadline


async def answers(host: str, port: int, timeout_s: float, resend_s: float = 0.5) -> bool:
    """True if the BMC at host:port answers within ``timeout_s`` (resending meanwhile)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        return False
    family, _, _, _, addr = infos[0]
    transport, probe = await loop.create_datagram_endpoint(_Probe, family=family)
    try:
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            transport.sendto(REQUEST, addr)
            wait = min(resend_s, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(probe.answered), wait)
            if probe.answered.done():
                return True
        return False
    finally:
        transport.close()
