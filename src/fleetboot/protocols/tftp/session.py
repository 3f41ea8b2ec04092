"""The state machine of one TFTP read transfer: what to send, never how. Pure.

Block numbers are absolute (1, 2, ... past 65535); only the wire carries them
modulo 65536, so rollover is a mapping at the edge, not a state. Block 0 stands
for the OACK when options were negotiated (the client acknowledges it with
ACK 0). A *window* is an inclusive range of absolute blocks to send; the
adapter turns it into packets. Time is a parameter (``now``, in seconds).

Retransmission happens only on timeout, with exponential backoff. A duplicate
or stale ACK never triggers a send: that is RFC 1123's cure for the Sorcerer's
Apprentice bug, and it also holds for windows (RFC 7440).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from fleetboot.protocols.tftp.codec import (
    MAX_BLOCK,
    Ack,
    Error,
    ErrorCode,
    TftpDecodeError,
    decode,
)
from fleetboot.protocols.tftp.options import Negotiated

Window = tuple[int, int]


class Outcome(StrEnum):
    RUNNING = "running"
    DONE = "done"  # the last block was acknowledged
    PROBE = "probe"  # client ended after the OACK (the UEFI tsize probe)
    CLIENT_ERROR = "client-error"  # client sent an ERROR during the transfer
    TIMED_OUT = "timed-out"
    ABORTED = "aborted"  # ended by the server (superseded, shutdown, peer unreachable)
    PROTOCOL_ERROR = "protocol-error"  # client sent something illegal


_RUNNING = Outcome.RUNNING


@dataclass(frozen=True, slots=True)
class SendError:
    code: int
    message: str


Action = Window | SendError | None


@dataclass(slots=True)
class SessionStats:
    """Per-session counters, kept by the state machine (fbtftp-style)."""

    started_at: float
    finished_at: float | None = None
    packets_sent: int = 0
    bytes_sent: int = 0  # DATA payload bytes put on the wire, retransmits included
    retransmitted_packets: int = 0
    duplicate_acks: int = 0
    stale_acks: int = 0
    timeouts: int = 0
    duplicate_requests: int = 0
    bad_packets: int = 0
    client_error: tuple[int, str] | None = None

    @property
    def duration(self) -> float:
        return 0.0 if self.finished_at is None else self.finished_at - self.started_at


@dataclass
class TimerPolicy:
    timeout: float = 1.0  # first retransmission timeout, seconds
    max_timeout: float = 8.0  # backoff cap
    retries: int = 6  # retransmissions of one window before giving up
    backoff: float = 2.0


class ReadSession:
    """One RRQ being served. Create it, call :meth:`start`, then feed it events."""

    # Slots: attribute access on the per-ACK path is measurably cheaper.
    __slots__ = ("_base_timeout", "_retries", "_timeout", "acked", "blksize", "deadline",
                 "has_oack", "last_block", "negotiated", "outcome", "sent_upto", "size",
                 "stats", "timers", "windowsize")

    def __init__(self, size: int, negotiated: Negotiated, timers: TimerPolicy | None = None,
                 now: float = 0.0) -> None:
        self.size = size
        self.negotiated = negotiated
        self.timers = timers or TimerPolicy()
        self.blksize = self.negotiated.blksize
        self.windowsize = self.negotiated.windowsize
        self.last_block = self.size // self.blksize + 1  # a short (maybe empty) block ends it
        self.has_oack = self.negotiated.oack is not None
        self.acked = -1 if self.has_oack else 0
        self.sent_upto = self.acked
        base = self.negotiated.timeout or self.timers.timeout
        self._base_timeout = base
        self._timeout = base
        self._retries = 0
        self.deadline = math.inf
        self.outcome = Outcome.RUNNING
        self.stats = SessionStats(started_at=now)

    # --- queries -----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.outcome is not Outcome.RUNNING

    def block_span(self, block: int) -> tuple[int, int]:
        """(offset, length) in the file of absolute DATA block ``block`` (>= 1)."""
        offset = (block - 1) * self.blksize
        return offset, max(0, min(self.blksize, self.size - offset))

    @property
    def bytes_acked(self) -> int:
        return min(self.size, max(0, self.acked) * self.blksize)

    # --- events ------------------------------------------------------------------

    def start(self, now: float) -> Window:
        self.stats.started_at = now
        return self._send(self._next_window(), now)

    def on_ack(self, wire_block: int, now: float) -> Window | None:
        """An ACK arrived. Returns the window to send, or None (never for duplicates).

        The per-packet path: written out flat, because Python call overhead is
        most of a lock-step transfer's CPU cost.
        """
        if self.outcome is not _RUNNING:
            return None
        sent = self.sent_upto
        block = sent - ((sent - wire_block) & MAX_BLOCK)
        if block <= self.acked:
            if block == self.acked:
                self.stats.duplicate_acks += 1
            else:
                self.stats.stale_acks += 1
            return None
        self.acked = block
        if self._retries:
            self._retries = 0
            self._timeout = self._base_timeout
        last_block = self.last_block
        if block >= last_block:
            self._finish(Outcome.DONE, now)
            return None
        last = block + self.windowsize
        if last > last_block:
            last = last_block
        stats = self.stats
        if block < sent:  # a partial ACK: part of the window was lost, resend it
            stats.retransmitted_packets += (last if last < sent else sent) - block
        if last > sent:
            self.sent_upto = last
        stats.packets_sent += last - block
        blksize = self.blksize
        stats.bytes_sent += (last * blksize if last < last_block else self.size) - block * blksize
        self.deadline = now + self._timeout
        return (block + 1, last)

    def on_packet(self, packet: bytes, now: float) -> Action:
        """Any datagram from the client; ACKs may also go straight to :meth:`on_ack`."""
        if self.finished:
            return None
        try:
            decoded = decode(packet)
        except TftpDecodeError:
            self.stats.bad_packets += 1
            return None
        if isinstance(decoded, Ack):
            return self.on_ack(decoded.block, now)
        if isinstance(decoded, Error):
            self.stats.client_error = (decoded.code, decoded.message)
            probe = self.acked < 0 and decoded.code == ErrorCode.OPTION_NEGOTIATION
            self._finish(Outcome.PROBE if probe else Outcome.CLIENT_ERROR, now)
            return None
        self.stats.bad_packets += 1
        self._finish(Outcome.PROTOCOL_ERROR, now)
        return SendError(ErrorCode.ILLEGAL_OPERATION, "only ACK or ERROR is expected in a read")

    def on_duplicate_request(self, now: float) -> Window | None:
        """The same RRQ again: the client missed our first packet, so resend it once
        now rather than wait for our timer; later duplicates are stale and ignored."""
        self.stats.duplicate_requests += 1
        if self.finished or self.acked > (-1 if self.has_oack else 0):
            return None
        return self._send((self.acked + 1, self.sent_upto), now)

    def on_timeout(self, now: float) -> Action:
        """Call when ``now >= deadline``: resend the window, or give up."""
        if self.finished or now < self.deadline:
            return None
        self.stats.timeouts += 1
        self._retries += 1
        if self._retries > self.timers.retries:
            self._finish(Outcome.TIMED_OUT, now)
            return SendError(ErrorCode.NOT_DEFINED, "timed out waiting for an ACK")
        self._timeout = min(self._timeout * self.timers.backoff, self.timers.max_timeout)
        return self._send((self.acked + 1, self.sent_upto), now)

    def abort(self, now: float, outcome: Outcome = Outcome.ABORTED) -> None:
        if not self.finished:
            self._finish(outcome, now)

    # --- internals ---------------------------------------------------------------

    def _next_window(self) -> Window:
        first = self.acked + 1
        if first == 0:
            return (0, 0)  # the OACK
        return (first, min(self.acked + self.windowsize, self.last_block))

    def _send(self, window: Window, now: float) -> Window:
        first, last = window
        self.stats.retransmitted_packets += max(0, min(last, self.sent_upto) - first + 1)
        self.sent_upto = max(self.sent_upto, last)
        count = last - first + 1
        self.stats.packets_sent += count
        if first > 0:
            end = min(self.size, last * self.blksize)
            self.stats.bytes_sent += end - (first - 1) * self.blksize
        self.deadline = now + self._timeout
        return window

    def _finish(self, outcome: Outcome, now: float) -> None:
        self.outcome = outcome
        self.deadline = math.inf
        self.stats.finished_at = now
