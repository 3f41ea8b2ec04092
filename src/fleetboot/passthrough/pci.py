"""PCI addresses (``DDDD:BB:SS.F``): parsing, normalising and splitting them up."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleetboot.passthrough.errors import PassthroughError

# Domains are 4 hex digits on most machines but wider ones exist (Intel VMD: 10000:..).
_ADDRESS = re.compile(
    r"^(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):(?P<slot>[0-9a-f]{1,2})"
    r"\.(?P<function>[0-7])$"
)


class PciAddressError(PassthroughError, ValueError):
    pass


@dataclass(frozen=True, order=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        match = _ADDRESS.match(text.strip().lower())
        if match is None:
            raise PciAddressError(
                f"{text!r} is not a PCI address; write it like 0000:3b:00.0 "
                "(domain:bus:slot.function)"
            )
        slot = int(match["slot"], 16)
        if slot > 0x1F:
            raise PciAddressError(f"{text!r}: PCI slot {slot:#x} is above 0x1f")
        return cls(int(match["domain"] or "0", 16), int(match["bus"], 16), slot,
                   int(match["function"]))

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function}"


def normalize_address(text: str) -> str:
    """``3b:0.0`` or ``0000:3B:00.0`` -> ``0000:3b:00.0``."""
    return str(PciAddress.parse(text))
