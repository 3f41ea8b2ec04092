"""Settings ``fleetboot serve`` accepts but an operator should hear about at start.

Neither stops the server (a boot root may be filled later; an address may be
reached through NAT), but neither may pass without a word.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

from fleetboot.boot.programs import architecture_warnings
from fleetboot.config import Settings


def address_is_local(address: str) -> bool:
    """Whether this host (in this network namespace) owns ``address``: only then does
    binding to it succeed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def startup_warnings(settings: Settings) -> list[str]:
    """One line per setting that looks wrong, saying what to do."""
    out = []
    root = Path(settings.boot_root)
    if not root.is_dir():
        out.append(f"boot_root {root} does not exist; it is created empty and nodes get "
                   "no boot files until you store some (fleetboot image add FILE), or set "
                   "boot_root in fleetboot.yaml")
    address = settings.server_address
    try:
        specific = not ipaddress.IPv4Address(address).is_unspecified
    except ValueError:
        specific = False  # the configuration model checks the syntax
    if specific and not address_is_local(address):
        out.append(f"server_address {address} is not an address of this host; nodes are "
                   "told to fetch boot files from it, so set it to this server's address on "
                   "the boot network (ip -br addr) unless NAT forwards it here")
    out += architecture_file_warnings(settings)
    return out


def architecture_file_warnings(settings: Settings) -> list[str]:
    """Architecture-table entries naming a boot program missing from the boot root
    (none when the boot root itself is missing: that has its own warning)."""
    root = Path(settings.boot_root)
    if not root.is_dir():
        return []
    table = {code: (a.name, a.tftp_file, a.http_file)
             for code, a in settings.architectures.items()}
    return architecture_warnings(table, lambda name: (root / name).is_file())
