"""Tap devices for NICs with a ``bridge:NAME`` backend.

Each QEMU process gets its own taps (named from the instance, the NIC and the
process generation), so a migration destination on the same host can open
its NICs while the source still holds the old ones.
"""

from __future__ import annotations

import asyncio
import re

from fleetboot.vm.errors import VmError

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
        if n == 0:
            return out


def tap_name(instance_id: int, device: str, generation: int) -> str:
    """``fb<instance>-<nic>-<gen>`` in base 36: unique per process, at most 15 bytes."""
    digits = re.sub(r"\D", "", device) or "0"
    name = f"fb{_base36(instance_id)}-{_base36(int(digits))}-{_base36(generation)}"
    if len(name) > 15:
        raise VmError(f"tap name {name} exceeds 15 bytes; too many instances or restarts")
    return name


async def _ip(netns: str | None, *args: str) -> tuple[int, str]:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def check_bridge(bridge: str, netns: str | None = None) -> None:
    """Refuse a ``bridge:NAME`` backend whose bridge does not exist where QEMU will run."""
    argv = ["ip", *(("-n", netns) if netns else ()), "-d", "-o", "link", "show", "dev", bridge]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0 or b" bridge " not in out:  # the details name the link kind
        where = f" in namespace {netns}" if netns else ""
        raise VmError(f"bridge {bridge} does not exist{where}; create it (ip link add {bridge} "
                      "type bridge) or name an existing one in backend=bridge:NAME")


async def create_tap(name: str, bridge: str, netns: str | None = None) -> None:
    for args in (("tuntap", "add", name, "mode", "tap"),
                 ("link", "set", name, "master", bridge),
                 ("link", "set", name, "up")):
        code, err = await _ip(netns, *args)
        if code != 0:
            await delete_tap(name, netns)
            where = f" in namespace {netns}" if netns else ""
            raise VmError(f"cannot put tap {name} on bridge {bridge}{where}: {err}")


async def delete_tap(name: str, netns: str | None = None) -> None:
    await _ip(netns, "link", "del", name)
