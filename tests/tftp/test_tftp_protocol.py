"""Protocol behaviour with crafted packets: bad input, traversal, probes, duplicates, quirks."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tftp_helpers import SECRET, Served
from tftp_rawclient import TftpClientError, fetch, recv, rrq, udp_socket

from fleetboot.protocols.tftp.codec import ErrorCode, OptionAck, decode
from fleetboot.protocols.tftp.options import TftpQuirk
from fleetboot.server.directory import StaticDirectory


async def _exchange(served: Served, packet: bytes, timeout: float = 3.0) -> bytes | None:
    """Send one datagram to port 69's stand-in; the reply, or None if there is none."""
    sock = udp_socket()
    try:
        await asyncio.get_running_loop().sock_sendto(sock, packet, served.addr)
        try:
            reply, _ = await recv(sock, timeout)
        except TimeoutError:
            return None
        return reply
    finally:
        sock.close()


def _error_code(reply: bytes | None) -> int:
    assert reply is not None and reply[:2] == b"\0\5", reply
    return struct.unpack("!H", reply[2:4])[0]


BAD_PACKETS = [
    (b"", ErrorCode.ILLEGAL_OPERATION),
    (b"\0", ErrorCode.ILLEGAL_OPERATION),
    (b"\0\x09whatever", ErrorCode.ILLEGAL_OPERATION),  # unknown opcode
    (b"\xff\xff", ErrorCode.ILLEGAL_OPERATION),
    (b"\0\1small.txt", ErrorCode.ILLEGAL_OPERATION),  # no NUL, no mode
    (b"\0\1small.txt\0", ErrorCode.ILLEGAL_OPERATION),  # no mode
    (b"\0\1small.txt\0binary\0", ErrorCode.ILLEGAL_OPERATION),  # bad mode
    (b"\0\1small.txt\0mail\0", ErrorCode.ILLEGAL_OPERATION),  # mail mode is a write thing
    (b"\0\1\0octet\0", ErrorCode.ILLEGAL_OPERATION),  # empty name
    (b"\0\1sm\xffall\0octet\0", ErrorCode.ILLEGAL_OPERATION),  # not UTF-8
    (b"\0\1small.txt\0octet\0blksize\0", ErrorCode.OPTION_NEGOTIATION),  # option w/o value
    (b"\0\1small.txt\0octet\0blksize\0abc\0", ErrorCode.OPTION_NEGOTIATION),
    (b"\0\1small.txt\0octet\0blksize\0" + b"4\0", ErrorCode.OPTION_NEGOTIATION),
    (b"\0\1small.txt\0octet\0blksize\0-1\0", ErrorCode.OPTION_NEGOTIATION),
    (b"\0\1small.txt\0octet\0timeout\0" + b"0\0", ErrorCode.OPTION_NEGOTIATION),
    (b"\0\1small.txt\0octet\0windowsize\0" + b"0\0", ErrorCode.OPTION_NEGOTIATION),
    (b"\0\1small.txt\0octet\0tsize\0x\0", ErrorCode.OPTION_NEGOTIATION),
    (b"\0\1small.txt\0octet\0BlkSize\x00512\x00blksize\x00512\x00", ErrorCode.OPTION_NEGOTIATION),
    (b"\0\1small.txt\0octet\0\0" + b"512\0", ErrorCode.OPTION_NEGOTIATION),  # empty option name
    (b"\0\3\0\1data", ErrorCode.ILLEGAL_OPERATION),  # DATA to the request port
    (b"\0\4\0\1", ErrorCode.ILLEGAL_OPERATION),  # ACK to the request port
    (b"\0\6blksize\0" + b"512\0", ErrorCode.ILLEGAL_OPERATION),  # OACK to the request port
    (b"\0\2upload\0octet\0", ErrorCode.ACCESS_VIOLATION),  # WRQ: read-only
    (b"\0\2../../tmp/x\0octet\0", ErrorCode.ACCESS_VIOLATION),
]


@pytest.mark.parametrize(("packet", "code"), BAD_PACKETS)
async def test_bad_packets_get_an_error(tftp: Served, packet: bytes, code: int) -> None:
    assert _error_code(await _exchange(tftp, packet)) == code
    assert not tftp.server.sessions
    # The server still serves afterwards.
    result = await fetch(tftp.addr, "small.txt")
    assert result.data == (tftp.root / "small.txt").read_bytes()


async def test_error_packets_are_never_answered(tftp: Served) -> None:
    assert await _exchange(tftp, b"\0\5\0\1oops\0", timeout=0.5) is None
    assert tftp.server.stats.bad_packets == 1


TRAVERSALS = [
    ("../outside/secret", ErrorCode.ACCESS_VIOLATION),
    ("/../outside/secret", ErrorCode.ACCESS_VIOLATION),
    ("sub/../../outside/secret", ErrorCode.ACCESS_VIOLATION),
    ("..\\outside\\secret", ErrorCode.ACCESS_VIOLATION),  # backslashes are separators
    ("sub\\..\\..\\outside\\secret", ErrorCode.ACCESS_VIOLATION),
    ("link-outside", ErrorCode.ACCESS_VIOLATION),
    ("dir-outside/secret", ErrorCode.ACCESS_VIOLATION),
    ("x" * 2000, ErrorCode.ACCESS_VIOLATION),  # overlong
    ("a/" + "b" * 300, ErrorCode.ACCESS_VIOLATION),  # overlong component
    ("small.txt\x01", ErrorCode.ACCESS_VIOLATION),  # control character
    ("/", ErrorCode.ACCESS_VIOLATION),  # the root itself
    ("/etc/passwd", ErrorCode.FILE_NOT_FOUND),  # absolute: taken inside the root
    ("sub", ErrorCode.FILE_NOT_FOUND),  # a directory
    ("fifo", ErrorCode.FILE_NOT_FOUND),  # not a regular file (and opening must not block)
    ("does/not/exist", ErrorCode.FILE_NOT_FOUND),
]


@pytest.mark.parametrize(("name", "code"), TRAVERSALS)
async def test_traversal_and_odd_names(tftp: Served, name: str, code: int) -> None:
    reply = await _exchange(tftp, rrq(name))
    assert _error_code(reply) == code
    assert reply is not None and SECRET not in reply
    events = [e for e in tftp.events if e.kind == "error"]
    assert events and events[-1].detail["error_code"] == code


async def test_nul_in_name_ends_the_name(tftp: Served) -> None:
    # A NUL inside the name makes the rest the "mode": refused as a bad mode.
    reply = await _exchange(tftp, b"\0\1small.txt\0../outside/secret\0octet\0")
    assert _error_code(reply) == ErrorCode.ILLEGAL_OPERATION


async def test_absolute_path_under_root_is_served(tftp: Served) -> None:
    result = await fetch(tftp.addr, str(tftp.root / "small.txt"))
    assert result.data == (tftp.root / "small.txt").read_bytes()
    result = await fetch(tftp.addr, "/sub//./ipxe.efi")
    assert result.data == (tftp.root / "sub/ipxe.efi").read_bytes()


async def test_uefi_tsize_probe_then_fetch(tftp: Served) -> None:
    """edk2: RRQ with tsize, abort with error 8, RRQ again with blksize (new port)."""
    loop = asyncio.get_running_loop()
    probe = udp_socket()
    await loop.sock_sendto(probe, rrq("sub/ipxe.efi", {"tsize": "0", "blksize": "1468"}),
                           tftp.addr)
    reply, peer = await recv(probe, 3)
    oack = decode(reply)
    assert isinstance(oack, OptionAck)
    assert oack.options == {"tsize": "300000", "blksize": "1468"}
    assert peer[1] != tftp.port  # a transfer has its own port
    await loop.sock_sendto(probe, b"\0\5\0\x08tsize probe\0", peer)
    probe.close()
    result = await fetch(tftp.addr, "sub/ipxe.efi", {"blksize": "1468"})
    assert result.data == (tftp.root / "sub/ipxe.efi").read_bytes()
    await tftp.idle()
    stats = tftp.server.stats
    assert (stats.probes, stats.sessions_done, stats.sessions_failed) == (1, 1, 0)
    assert tftp.server.source.stats.static_cache_hits >= 1  # no second open/stat
    probe_event = next(e for e in tftp.events if e.kind == "error")
    assert probe_event.detail["outcome"] == "probe"
    assert tftp.kinds() == ["start", "options", "error", "start", "options", "done"]


async def test_duplicate_rrq_is_the_same_session(tftp: Served) -> None:
    loop = asyncio.get_running_loop()
    sock = udp_socket()
    request = rrq("one.bin", {"blksize": "1024"})
    await loop.sock_sendto(sock, request, tftp.addr)
    await loop.sock_sendto(sock, request, tftp.addr)  # the client "lost" our OACK
    result = await fetch(tftp.addr, "one.bin", {"blksize": "1024"}, sock=sock)
    sock.close()
    assert result.data == (tftp.root / "one.bin").read_bytes()
    await tftp.idle()
    assert tftp.server.stats.sessions_started == 1
    assert tftp.server.stats.duplicate_requests >= 1


async def test_dropped_ack_is_retransmitted_by_timeout(
        make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp(timeout=0.2)
    result = await fetch(served.addr, "sub/ipxe.efi", {"blksize": "1024"},
                         drop_acks={3, 100})
    assert result.data == (served.root / "sub/ipxe.efi").read_bytes()
    await served.idle()
    assert served.server.stats.timeouts >= 2
    done = next(e for e in served.events if e.kind == "done")
    assert done.detail["retransmits"] >= 2


async def test_windowsize_with_a_lost_ack(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp(timeout=0.2)
    result = await fetch(served.addr, "one.bin", {"blksize": "1468", "windowsize": "16"},
                         drop_acks={32})
    assert result.oack == {"blksize": "1468", "windowsize": "16"}
    assert result.data == (served.root / "one.bin").read_bytes()


async def test_windowsize_is_capped(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp(max_windowsize=4)
    result = await fetch(served.addr, "one.bin", {"windowsize": "64"})
    assert result.oack == {"windowsize": "4"}
    assert result.data == (served.root / "one.bin").read_bytes()


async def test_blksize_clamped_to_mtu(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp(mtu=1500)
    result = await fetch(served.addr, "one.bin", {"blksize": "65464", "tsize": "0"})
    assert result.oack == {"blksize": "1468", "tsize": str(1 << 20)}
    assert max(result.data_sizes) == 1468


async def test_quirk_disables_options(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    quirk = TftpQuirk(network="127.0.0.0/8", disable_options=True)
    served = await make_tftp(quirks=[quirk])
    result = await fetch(served.addr, "one.bin", {"blksize": "1468", "tsize": "0"})
    assert result.oack is None and max(result.data_sizes) == 512
    assert result.data == (served.root / "one.bin").read_bytes()


async def test_quirk_by_mac_prefix(make_tftp: Callable[..., Awaitable[Served]],
                                   boot_root: tuple[Path, Path]) -> None:
    quirk = TftpQuirk(mac_prefix="52:54:00", max_blksize=1024)
    served = await make_tftp(quirks=[quirk])
    served.server.directory = StaticDirectory({"127.0.0.1": "52:54:00:aa:bb:cc"})
    result = await fetch(served.addr, "one.bin", {"blksize": "1468"})
    assert result.oack == {"blksize": "1024"}
    assert served.events[0].mac == "52:54:00:aa:bb:cc"


async def test_same_port_new_request_replaces_session(tftp: Served) -> None:
    loop = asyncio.get_running_loop()
    sock = udp_socket()
    await loop.sock_sendto(sock, rrq("one.bin"), tftp.addr)
    await recv(sock, 3)  # DATA 1 of one.bin; never acknowledged
    result = await fetch(tftp.addr, "small.txt", sock=sock)
    sock.close()
    assert result.data == (tftp.root / "small.txt").read_bytes()
    assert tftp.server.stats.sessions_started == 2


async def test_illegal_packet_to_session_port(tftp: Served) -> None:
    loop = asyncio.get_running_loop()
    sock = udp_socket()
    await loop.sock_sendto(sock, rrq("one.bin"), tftp.addr)
    _, peer = await recv(sock, 3)
    await loop.sock_sendto(sock, b"\0\3\0\1hello", peer)  # DATA in a read: illegal
    reply, _ = await recv(sock, 3)
    sock.close()
    assert _error_code(reply) == ErrorCode.ILLEGAL_OPERATION
    await tftp.idle()


async def test_session_gives_up_after_retries(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp(timeout=0.05, max_timeout=0.05, retries=2)
    sock = udp_socket()
    await asyncio.get_running_loop().sock_sendto(sock, rrq("one.bin"), served.addr)
    packets = []
    with pytest.raises(TimeoutError):
        while True:
            packets.append((await recv(sock, 1.0))[0])
    sock.close()
    assert len(packets) == 4  # DATA 1, two retransmissions, then an ERROR
    assert packets[-1][:2] == b"\0\5"
    assert served.server.stats.sessions_failed == 1
    assert served.events[-1].detail["outcome"] == "timed-out"


async def test_busy_server_drops_rrq(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp(max_sessions=1)
    sock = udp_socket()
    await asyncio.get_running_loop().sock_sendto(sock, rrq("one.bin"), served.addr)
    await recv(sock, 3)
    with pytest.raises(TftpClientError):
        await fetch(served.addr, "small.txt", timeout=0.2, retries=1)
    sock.close()
    assert served.server.stats.busy_drops >= 1


async def test_many_concurrent_sessions(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp()
    expected = (served.root / "sub/ipxe.efi").read_bytes()
    results = await asyncio.gather(*(fetch(served.addr, "sub/ipxe.efi", {"blksize": "1468"},
                                           timeout=2) for _ in range(200)))
    assert all(r.data == expected for r in results)
    await served.idle()
    assert len({r.server_port for r in results}) == 200
    assert served.server.stats.sessions_done == 200
    assert served.server.source.stats.static_opens <= 1


async def test_events_report_size_and_duration(tftp: Served) -> None:
    await fetch(tftp.addr, "one.bin", {"blksize": "1468", "tsize": "0"})
    await tftp.idle()
    start, options, done = tftp.events
    assert (start.kind, options.kind, done.kind) == ("start", "options", "done")
    assert start.source == "tftp" and start.address == "127.0.0.1"
    assert options.detail["options"] == {"blksize": "1468", "tsize": str(1 << 20)}
    assert done.detail["file"] == "one.bin"
    assert done.detail["bytes"] == done.detail["size"] == 1 << 20
    assert 0 < float(done.detail["duration"]) < 30
    assert done.detail["outcome"] == "done"


async def test_broken_event_sink_does_not_break_transfers(
        make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp()

    def explode(_event: object) -> None:
        raise RuntimeError("listener bug")

    served.server.events = explode
    result = await fetch(served.addr, "small.txt")
    assert result.data == (served.root / "small.txt").read_bytes()


async def test_stop_closes_sessions(make_tftp: Callable[..., Awaitable[Served]]) -> None:
    served = await make_tftp()
    sock = udp_socket()
    await asyncio.get_running_loop().sock_sendto(sock, rrq("one.bin"), served.addr)
    await recv(sock, 3)
    assert served.server.sessions
    await served.server.stop()
    sock.close()
    assert not served.server.sessions
    assert served.events[-1].detail["outcome"] == "aborted"

