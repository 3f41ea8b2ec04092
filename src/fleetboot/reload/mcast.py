"""Receiver-driven multicast of chunk records (after Frisbee). Pure: bytes+time in, bytes out.

The sender multicasts *blocks* of chunk records to one group per deployment;
receivers ask it, by unicast, for what they are missing. A request names a
chunk and a run of its blocks; the sender keeps one queue of pending blocks,
so a block asked for by 30 receivers is sent once for all of them, and a
receiver that joins late asks for everything and is served when the sender
comes round again. A lost packet costs a re-request of that block, never the
stream. The sender paces itself with a token bucket (the rate limit that keeps
the boot network usable) and drops receivers it has not heard from for
``silent_s`` without waiting for them: nothing in the sender ever waits for a
particular receiver.

Wire format (network byte order), every packet starts with
``type u8, version u8, reserved u16, session u32``:

- JOIN  (receiver -> sender)  ``receiver u32``, then optionally its node name (UTF-8)
- INFO  (sender -> receiver)  ``chunks u32, block_size u16, virtual_size u64, disk_sha256 32s``
- REQ   (receiver -> sender)  ``receiver u32, chunks_done u32``, then ranges of
  ``chunk u32, first_block u16, count u16`` (count 0 = every block of the chunk)
- DATA  (sender -> group)     ``chunk u32, record_len u32, block u16, blocks u16``, bytes
- DONE  (receiver -> sender)  ``receiver u32, status u8`` (0 verified, 1 failed)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

VERSION = 1
_HDR = struct.Struct("!BBHI")
_JOIN = struct.Struct("!I")
_INFO = struct.Struct("!IHQ32s")
_REQ = struct.Struct("!II")
_RANGE = struct.Struct("!IHH")
_DATA = struct.Struct("!IIHH")
_DONE = struct.Struct("!IB")
DATA_HEADER = _HDR.size + _DATA.size
WIRE_OVERHEAD = 14 + 20 + 8  # Ethernet, IPv4 and UDP headers: what the rate limit counts
ALL_BLOCKS = 0
MAX_RECORD = 64 << 20  # far above a compressed 1 MiB chunk; bounds a receiver's memory
MAX_RANGES = 160
MAX_NAME = 63  # one request datagram stays under 1,500 bytes


class Kind(IntEnum):
    JOIN = 1
    INFO = 2
    REQ = 3
    DATA = 4
    DONE = 5


class WireError(ValueError):
    """A datagram that is not one of ours; adapters count and drop it."""


def header(kind: Kind, session: int) -> bytes:
    return _HDR.pack(kind, VERSION, 0, session)


def parse_header(data: bytes) -> tuple[Kind, int]:
    if len(data) < _HDR.size:
        raise WireError("short datagram")
    kind, version, _, session = _HDR.unpack_from(data)
    if version != VERSION or kind not in Kind._value2member_map_:
        raise WireError("unknown version or type")
    return Kind(kind), session


def blocks_of(record_len: int, block_size: int) -> int:
    return max(1, -(-record_len // block_size))


@dataclass(frozen=True, slots=True)
class Info:
    chunks: int
    block_size: int
    virtual_size: int
    disk_sha256: bytes


# ---------------------------------------------------------------- sender


@dataclass(slots=True)
class Member:
    addr: tuple[str, int]
    joined_at: float
    last_heard: float
    chunks_done: int = 0
    status: str = "receiving"  # receiving | verified | failed | dropped
    requests: int = 0
    blocks_asked: int = 0
    name: str = ""  # the node name the receiver gave when it joined


@dataclass
class SenderStats:
    data_packets: int = 0
    data_bytes: int = 0  # record bytes sent (payload of DATA packets)
    wire_bytes: int = 0
    requests: int = 0
    blocks_requested: int = 0
    blocks_merged: int = 0  # asked for while already queued: served once for all
    blocks_suppressed: int = 0  # asked for again just after being sent (still in flight)
    malformed: int = 0


@dataclass
class Sender:
    """What to multicast and when. ``receive`` takes control datagrams; ``poll``
    returns the DATA packets the token bucket allows now."""

    session: int
    records: Sequence[bytes | memoryview]
    info: Info
    rate_bps: float  # bits per second on the wire
    expected: int = 0  # the sender is finished when this many receivers are done
    silent_s: float = 10.0
    resend_guard_s: float = 0.15  # a block sent this recently is in flight, not lost
    # A loaded host wakes the sender late; the bucket holds this many bytes (at
    # least 25 ms at the rate) so a late wake-up sends what is due instead of
    # losing the time. The link's own queue (tbf latency) absorbs the burst.
    burst_bytes: int = 64 * 1024
    # Like udpcast's --min-receivers: hold DATA until ``expected`` receivers have
    # joined (or this long after the first joined), so a fleet booting together
    # is served in one round instead of one per straggler.
    start_wait_s: float = 10.0
    members: dict[int, Member] = field(default_factory=dict)
    stats: SenderStats = field(default_factory=SenderStats)
    # chunk -> bitmask of blocks to send; dict order is queue order
    _pending: dict[int, int] = field(default_factory=dict)
    # per chunk: blocks sent within resend_guard_s of the chunk's last send
    _recent: dict[int, tuple[int, float]] = field(default_factory=dict)
    _tokens: float = 0.0
    _token_time: float | None = None

    def __post_init__(self) -> None:
        bs = self.info.block_size
        self._nblocks = [blocks_of(len(r), bs) for r in self.records]

    # -- control path
    def receive(self, data: bytes, addr: tuple[str, int], now: float
                ) -> list[tuple[bytes, tuple[str, int]]]:
        try:
            kind, session = parse_header(data)
            if session != self.session:
                return []
            if kind is Kind.JOIN:
                return self._join(data, addr, now)
            if kind is Kind.REQ:
                self._request(data, addr, now)
            elif kind is Kind.DONE:
                self._done(data, now)
        except (WireError, struct.error):
            self.stats.malformed += 1
        return []

    def _member(self, rid: int, addr: tuple[str, int], now: float) -> Member:
        m = self.members.get(rid)
        if m is None or m.status == "dropped":
            m = self.members[rid] = Member(addr, now, now)
        m.last_heard = now
        return m

    def _join(self, data: bytes, addr: tuple[str, int], now: float
              ) -> list[tuple[bytes, tuple[str, int]]]:
        (rid,) = _JOIN.unpack_from(data, _HDR.size)
        m = self._member(rid, addr, now)
        raw_name = data[_HDR.size + _JOIN.size:_HDR.size + _JOIN.size + MAX_NAME]
        m.name = raw_name.decode("utf-8", "replace").strip() or m.name
        i = self.info
        reply = header(Kind.INFO, self.session) + _INFO.pack(
            i.chunks, i.block_size, i.virtual_size, i.disk_sha256)
        return [(reply, addr)]

    def _request(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        rid, done = _REQ.unpack_from(data, _HDR.size)
        m = self._member(rid, addr, now)
        m.chunks_done = done
        m.requests += 1
        self.stats.requests += 1
        pos = _HDR.size + _REQ.size
        while pos + _RANGE.size <= len(data):
            chunk, first, count = _RANGE.unpack_from(data, pos)
            pos += _RANGE.size
            if chunk >= len(self._nblocks):
                self.stats.malformed += 1
                continue
            n = self._nblocks[chunk]
            if count == ALL_BLOCKS:
                first, count = 0, n
            count = max(0, min(count, n - first))
            m.blocks_asked += count
            self._enqueue(chunk, first, count, now)

    def _enqueue(self, chunk: int, first: int, count: int, now: float) -> None:
        """Queue blocks ``first..first+count-1`` once (bitmask arithmetic, no per-block loop)."""
        self.stats.blocks_requested += count
        asked = ((1 << count) - 1) << first
        queued = self._pending.get(chunk, 0)
        mask, at = self._recent.get(chunk, (0, -1e9))
        recent = mask if now - at < self.resend_guard_s else 0
        new = asked & ~queued & ~recent
        self.stats.blocks_merged += (asked & queued).bit_count()
        self.stats.blocks_suppressed += (asked & recent & ~queued).bit_count()
        if new:
            self._pending[chunk] = queued | new

    def _done(self, data: bytes, now: float) -> None:
        rid, status = _DONE.unpack_from(data, _HDR.size)
        m = self.members.get(rid)
        if m is not None:
            m.last_heard = now
            m.status = "verified" if status == 0 else "failed"

    # -- data path
    def poll(self, now: float, max_packets: int = 256) -> list[bytes]:
        """DATA packets to send now (at most what the rate allows)."""
        self._drop_silent(now)
        self._refill(now)
        out: list[bytes] = []
        if self._holding(now):
            return out
        bs = self.info.block_size
        while self._pending and len(out) < max_packets:
            chunk, mask = next(iter(self._pending.items()))
            block = (mask & -mask).bit_length() - 1
            record = self.records[chunk]
            payload = record[block * bs:(block + 1) * bs]
            cost = len(payload) + DATA_HEADER + WIRE_OVERHEAD
            if self._tokens < cost:
                break
            self._tokens -= cost
            mask &= mask - 1
            if mask:
                self._pending[chunk] = mask
            else:
                del self._pending[chunk]
            sent, at = self._recent.get(chunk, (0, now))
            self._recent[chunk] = ((sent if now - at < self.resend_guard_s else 0) | 1 << block,
                                   now)
            out.append(header(Kind.DATA, self.session) + _DATA.pack(
                chunk, len(record), block, self._nblocks[chunk]) + payload)
            self.stats.data_packets += 1
            self.stats.data_bytes += len(payload)
            self.stats.wire_bytes += cost
        return out

    def _holding(self, now: float) -> bool:
        if len(self.members) >= self.expected or not self.members:
            return not self.members
        first = min(m.joined_at for m in self.members.values())
        return now - first < self.start_wait_s

    def _refill(self, now: float) -> None:
        if self._token_time is None:
            self._token_time = now
        rate = self.rate_bps / 8
        cap = max(self.burst_bytes, self.info.block_size + 200, int(rate * 0.025))
        self._tokens = min(self._tokens + (now - self._token_time) * rate, cap)
        self._token_time = now

    def next_wake(self, now: float) -> float:
        """When ``poll`` may have something to send again (or a receiver to drop)."""
        if not self._pending:
            return now + 0.05
        need = self.info.block_size + DATA_HEADER + WIRE_OVERHEAD - self._tokens
        return now + max(0.0, need / (self.rate_bps / 8))

    def _drop_silent(self, now: float) -> None:
        for m in self.members.values():
            if m.status == "receiving" and now - m.last_heard > self.silent_s:
                m.status = "dropped"

    @property
    def pending_blocks(self) -> int:
        return sum(mask.bit_count() for mask in self._pending.values())

    @property
    def finished(self) -> bool:
        """Every expected receiver has ended (verified, failed or dropped)."""
        ended = [m for m in self.members.values() if m.status != "receiving"]
        active = [m for m in self.members.values() if m.status == "receiving"]
        return not active and len(ended) >= max(self.expected, 1)


# ---------------------------------------------------------------- receiver


@dataclass(frozen=True, slots=True)
class ChunkArrived:
    """Every block of a chunk record is here; the adapter verifies and writes it."""

    index: int
    record: bytes


@dataclass(slots=True)
class _Partial:
    buf: bytearray
    nblocks: int
    have: int = 0  # bitmask
    count: int = 0


@dataclass
class Receiver:
    session: int
    receiver_id: int
    reask_s: float = 0.4  # re-ask for a chunk no sooner than this after asking
    max_reask_s: float = 2.0
    heartbeat_s: float = 1.0  # well under the sender's silent_s
    name: str = ""  # this node's name, sent with JOIN (the operator's progress table)
    quiet_s: float = 0.1  # ...and only when none of its blocks arrived this recently
    join_every_s: float = 0.2
    info: Info | None = None
    duplicates: int = 0
    blocks_received: int = 0
    requests_sent: int = 0
    reasked_chunks: int = 0
    _done: set[int] = field(default_factory=set)
    _partial: dict[int, _Partial] = field(default_factory=dict)
    _asked_at: dict[int, float] = field(default_factory=dict)
    _asks: dict[int, int] = field(default_factory=dict)
    _heard_at: dict[int, float] = field(default_factory=dict)
    _last_join: float = -1e9
    _last_sent: float = -1e9
    done_sent: int = 0
    failed: bool = False

    @property
    def complete(self) -> bool:
        return self.info is not None and len(self._done) == self.info.chunks

    @property
    def chunks_done(self) -> int:
        return len(self._done)

    def receive(self, data: bytes, now: float) -> ChunkArrived | None:
        """One datagram from the group or the sender (malformed raises WireError)."""
        kind, session = parse_header(data)
        if session != self.session:
            return None
        try:
            if kind is Kind.INFO and self.info is None:
                chunks, bs, size, sha = _INFO.unpack_from(data, _HDR.size)
                if bs == 0:
                    raise WireError("block size 0")
                self.info = Info(chunks, bs, size, sha)
            elif kind is Kind.DATA and self.info is not None:
                return self._data(data, now)
        except struct.error as exc:
            raise WireError(str(exc)) from exc
        return None

    def _data(self, data: bytes, now: float) -> ChunkArrived | None:
        chunk, rlen, block, nblocks = _DATA.unpack_from(data, _HDR.size)
        assert self.info is not None
        bs = self.info.block_size
        if chunk >= self.info.chunks or block >= nblocks or nblocks * bs < rlen \
                or block * bs + len(data) - DATA_HEADER > rlen:
            raise WireError("block outside the image")
        self.blocks_received += 1
        if chunk in self._done:
            self.duplicates += 1
            return None
        p = self._partial.get(chunk)
        if p is None:
            if rlen > MAX_RECORD:
                raise WireError("record larger than any chunk")
            p = self._partial[chunk] = _Partial(bytearray(rlen), nblocks)
        elif len(p.buf) != rlen or p.nblocks != nblocks:
            raise WireError("block disagrees with earlier blocks of its chunk")
        bit = 1 << block
        if p.have & bit:
            self.duplicates += 1
            return None
        payload = memoryview(data)[DATA_HEADER:]
        p.buf[block * bs:block * bs + len(payload)] = payload
        p.have |= bit
        p.count += 1
        self._heard_at[chunk] = now
        if p.count < p.nblocks:
            return None
        del self._partial[chunk]
        self._done.add(chunk)
        return ChunkArrived(chunk, bytes(p.buf))

    def chunk_failed(self, index: int) -> None:
        """The adapter found the record corrupt: ask for all of it again."""
        self._done.discard(index)
        self._asked_at.pop(index, None)
        self._heard_at.pop(index, None)

    def poll(self, now: float) -> list[bytes]:
        """Datagrams for the sender: JOIN until INFO arrives, then requests, then DONE."""
        if self.info is None:
            if now - self._last_join >= self.join_every_s:
                self._last_join = now
                return [header(Kind.JOIN, self.session) + _JOIN.pack(self.receiver_id)
                        + self.name.encode()[:MAX_NAME]]
            return []
        if self.complete or self.failed:
            return self._done_packets()
        ranges: list[bytes] = []
        for chunk in range(self.info.chunks):
            if chunk in self._done:
                continue
            asks = self._asks.get(chunk, 0)
            # A chunk with lost blocks is re-asked soon; one the sender has not
            # reached yet is still queued there, so asking again backs off.
            wait = self.reask_s if chunk in self._heard_at else min(
                self.reask_s * 2 ** asks, self.max_reask_s)
            if now - self._asked_at.get(chunk, -1e9) < wait:
                continue
            if now - self._heard_at.get(chunk, -1e9) < self.quiet_s:
                continue
            if chunk in self._asked_at:
                self.reasked_chunks += 1
            self._asked_at[chunk] = now
            self._asks[chunk] = asks + 1
            ranges += self._missing(chunk)
        if not ranges:
            if now - self._last_sent < self.heartbeat_s:
                return []
            ranges = []  # an empty request: "still here" (the sender drops the silent)
        head = header(Kind.REQ, self.session) + _REQ.pack(self.receiver_id, len(self._done))
        self._last_sent = now
        self.requests_sent += 1
        if not ranges:
            return [head]
        return [head + b"".join(ranges[i:i + MAX_RANGES])
                for i in range(0, len(ranges), MAX_RANGES)]

    def _missing(self, chunk: int) -> list[bytes]:
        p = self._partial.get(chunk)
        if p is None:
            return [_RANGE.pack(chunk, 0, ALL_BLOCKS)]
        out = []
        b = 0
        while b < p.nblocks:
            if p.have >> b & 1:
                b += 1
                continue
            start = b
            while b < p.nblocks and not p.have >> b & 1 and b - start < 0xFFFF:
                b += 1
            out.append(_RANGE.pack(chunk, start, b - start))
        return out

    def _done_packets(self) -> list[bytes]:
        if self.done_sent >= 3:
            return []
        self.done_sent += 1
        return [header(Kind.DONE, self.session) + _DONE.pack(self.receiver_id,
                                                              1 if self.failed else 0)]

    @property
    def finished_reporting(self) -> bool:
        return self.done_sent >= 3
