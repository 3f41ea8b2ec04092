"""A boot timeline laid out as a terminal waterfall. Pure: events in, rows out.

Each row is one event at its offset from the boot's first event, with a bar
whose position and length show when it happened and how long it took
(transfers carry a duration). Long silences get their own row: a gap of
4, 8, 16 or 32 seconds before a DHCP retransmission is a firmware timeout,
which is exactly what an operator asking "why did node 17 take 60 seconds?"
needs to see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class EventLike(Protocol):
    @property
    def at(self) -> float: ...

    @property
    def source(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def state(self) -> str | None: ...

    @property
    def detail(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Row:
    offset_s: float
    source: str
    label: str
    bar: str
    note: str = ""
    gap: bool = False  # a silence row, not an event
    alarm: bool = False  # retransmission, failure, timeout: shown in red


def duration_of(detail: Mapping[str, Any]) -> float:
    """Seconds an event lasted (transfers report duration_s, duration or duration_ms)."""
    for key, scale in (("duration_s", 1.0), ("duration", 1.0), ("duration_ms", 0.001)):
        value = detail.get(key)
        if isinstance(value, (int, float)) and value >= 0:
            return float(value) * scale
    return 0.0


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _label(e: EventLike) -> tuple[str, str, bool]:
    d = e.detail
    what = str(d.get("path") or d.get("file") or d.get("section") or d.get("state") or "")
    label = f"{e.kind} {what}".strip()
    notes = []
    if d.get("bytes") or d.get("size"):
        notes.append(_size(d.get("bytes") or d.get("size")))
    dur = duration_of(d)
    if dur:
        notes.append(f"{dur * 1000:.0f} ms" if dur < 1 else f"{dur:.1f} s")
    if d.get("dir") == "seen":  # proxy mode: the site DHCP server's reply, seen on the link
        notes.append(f"from site server {d.get('server')}")
    elif d.get("server_id"):  # the DHCP server the client chose
        notes.append(f"to server {d.get('server_id')}")
    if d.get("status") not in (None, 200, 304):
        notes.append(f"status {d.get('status')}")
    alarm = bool(d.get("retransmit")) or e.kind in ("timeout", "config_denied")
    if d.get("retransmit"):
        notes.append(f"retransmission #{d.get('retransmit')}" if isinstance(
            d.get("retransmit"), int) and d.get("retransmit") is not True else "retransmission")
    if e.kind == "timeout":
        notes.append(f"stuck in {d.get('state')} after {d.get('after_s')} s")
    if e.state:
        notes.append(f"-> {e.state}")
    if str(d.get("state", "")).upper() == "FAILED":
        alarm = True
    return label, ", ".join(n for n in notes if n), alarm


def _bar(start: float, length: float, span: float, width: int) -> str:
    if span <= 0:
        return "▏".ljust(width)
    first = min(width - 1, int(start / span * width))
    cells = max(1, min(width - first, round(length / span * width)))
    return (" " * first + ("█" * cells if length > 0 else "▏")).ljust(width)


def waterfall(events: Sequence[EventLike], width: int = 40, gap_s: float = 2.0) -> list[Row]:
    """Rows for ``events`` (any order), bars ``width`` cells wide."""
    if not events:
        return []
    ordered = sorted(events, key=lambda e: e.at)
    t0 = ordered[0].at
    span = max(max(e.at + duration_of(e.detail) for e in ordered) - t0, 1e-9)
    rows: list[Row] = []
    previous = t0
    for e in ordered:
        if e.at - previous >= gap_s:
            rows.append(Row(previous - t0, "", f"… {e.at - previous:.1f} s with no event", "",
                            gap=True))
        label, note, alarm = _label(e)
        rows.append(Row(e.at - t0, e.source, label,
                        _bar(e.at - t0, duration_of(e.detail), span, width), note, alarm=alarm))
        previous = max(previous, e.at + duration_of(e.detail))
    return rows
