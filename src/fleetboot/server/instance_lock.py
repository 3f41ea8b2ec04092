"""One DHCP server per interface: a second ``fleetboot serve`` on the same link
refuses to start, naming the first.

DHCP sockets share ports 67 and 4011 through SO_REUSEADDR, so a second server
binds fine and both answer every client. Each server therefore holds, per
interface it serves, a listening unix socket in the abstract namespace
(``\\0fleetboot-dhcp/<ifname>``). The kernel frees it when the process dies,
``kill -9`` included, so there is no stale lock to clean up; abstract names are
scoped to the network namespace, as interface names are, so servers in
different namespaces do not collide; and it needs no writable directory,
which a sandboxed unit (ProtectSystem=strict) may not have. The second server
learns the first one's process id from the socket itself (SO_PEERCRED).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from pathlib import Path

from fleetboot.errors import FleetbootError

_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class AlreadyServing(FleetbootError):
    pass


def _address(ifname: str) -> bytes:
    return b"\0fleetboot-dhcp/" + ifname.encode()


def claim_interface(ifname: str) -> socket.socket:
    """Hold ``ifname`` for this process until the returned socket is closed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_address(ifname))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise AlreadyServing(
            f"another Fleetboot server ({holder(ifname)}) already serves DHCP on {ifname}; "
            "two would both answer every client: stop that one first "
            "(systemctl stop fleetboot, or kill its PID), or serve another interface"
        ) from None
    return sock


def claim_interfaces(names: list[str]) -> list[socket.socket]:
    claims: list[socket.socket] = []
    try:
        for name in names:
            claims.append(claim_interface(name))
    except BaseException:
        release(claims)
        raise
    return claims


def release(claims: list[socket.socket]) -> None:
    for sock in claims:
        with contextlib.suppress(OSError):
            sock.close()
    claims.clear()


def holder(ifname: str) -> str:
    """``pid 1234: fleetboot --config ... serve`` for whoever holds ``ifname``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(_address(ifname))
        pid, _, _ = _PEERCRED.unpack(
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return "process unknown"
    finally:
        probe.close()
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        command = ""
    return f"pid {pid}: {command}" if command else f"pid {pid}"
