"""Boot events: what the packet and HTTP paths observed, for node states and timelines.

Producers (DHCP, TFTP, HTTP, the node API) call an ``EventSink`` with a
``BootEvent``; the sink must return at once (append to a buffer) because it is
called from packet paths. The node-config package turns events into node
states and stored timelines, in batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class BootEvent:
    at: float  # wall-clock seconds (time.time())
    source: str  # "dhcp" | "tftp" | "http" | "config" | "node"
    kind: str  # e.g. "DISCOVER", "OFFER", "ACK", "file", "script", "config", "state"
    mac: str | None = None  # lowercase aa:bb:.. when known
    address: str | None = None  # client IPv4 when known
    detail: dict[str, Any] = field(default_factory=dict)  # size, duration, xid, retransmit...


EventSink = Callable[[BootEvent], None]


def discard(_event: BootEvent) -> None:
    """The sink used when nobody listens."""
