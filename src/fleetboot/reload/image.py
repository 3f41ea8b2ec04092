"""Chunked, compressed, self-describing disk images (the Frisbee idea). Pure core.

A disk is cut into fixed-size pieces of ``chunk_size`` bytes of *disk* (1 MiB by
default). A piece that is all zeros is not stored: the receiver leaves it as it
is (a fresh sparse file or a discarded/zeroed device reads zeros). Every other
piece becomes a *chunk record*: a small header (its index, the disk offsets it
belongs at, its raw length, the SHA-256 of its raw bytes) and the zstd-compressed
bytes. Identical pieces are stored once (content addressing) and the record lists
every offset it belongs at, so a receiver can write records in any order and
verify each one on its own.

The *manifest* lists the records (where each sits in the image's record file)
and the disk's virtual size and whole-disk SHA-256. Everything here takes and
returns values; reading and writing files is in ``store.py``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import zstandard

from fleetboot.errors import FleetbootError

FORMAT = "fleetboot-disk/1"
CHUNK_SIZE = 1 << 20
MAGIC = b"FBC1"
# magic, chunk index, raw length, sha256, number of offsets; then u64 offsets,
# then a u32 CRC-32 of everything before it (a bad offset would write good data
# in the wrong place), a u32 compressed length and the compressed bytes.
_HEAD = struct.Struct("!4sIII32sH")
_OFFSET = struct.Struct("!Q")
_PAYLOAD_LEN = struct.Struct("!II")
ZSTD_LEVEL = 3


class ImageFormatError(FleetbootError):
    """A chunk record or manifest that is malformed or does not verify."""


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    index: int
    length: int  # raw bytes this chunk writes at each offset
    sha256: bytes
    offsets: tuple[int, ...]
    flags: int = 0


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    """One chunk as the manifest lists it: its header plus where its record is stored."""

    header: ChunkHeader
    stored_offset: int
    stored_length: int

    def to_json(self) -> dict[str, object]:
        h = self.header
        return {"index": h.index, "length": h.length, "sha256": h.sha256.hex(),
                "offsets": list(h.offsets), "stored_offset": self.stored_offset,
                "stored_length": self.stored_length}

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> ChunkEntry:
        try:
            header = ChunkHeader(int(raw["index"]), int(raw["length"]),  # type: ignore[call-overload]
                                 bytes.fromhex(str(raw["sha256"])),
                                 tuple(int(o) for o in raw["offsets"]))  # type: ignore[attr-defined]
            return cls(header, int(raw["stored_offset"]),  # type: ignore[call-overload]
                       int(raw["stored_length"]))  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageFormatError(f"manifest chunk entry is malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    virtual_size: int
    chunk_size: int
    disk_sha256: str
    chunks: tuple[ChunkEntry, ...]
    source_format: str = "raw"

    @property
    def image_id(self) -> str:
        """Content address: the same disk content gives the same id."""
        return self.disk_sha256[:16]

    @property
    def stored_size(self) -> int:
        return sum(c.stored_length for c in self.chunks)

    @property
    def data_size(self) -> int:
        """Raw bytes the receiver writes (zero pieces are never written)."""
        return sum(c.header.length * len(c.header.offsets) for c in self.chunks)

    @property
    def ratio(self) -> float:
        return self.virtual_size / self.stored_size if self.stored_size else float("inf")

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "name": self.name, "virtual_size": self.virtual_size,
            "chunk_size": self.chunk_size, "disk_sha256": self.disk_sha256,
            "source_format": self.source_format,
            "chunks": [c.to_json() for c in self.chunks]}, indent=1)

    def text_index(self) -> str:
        """The manifest for shell agents (busybox: no JSON, no struct): a first line
        ``fleetboot-disk/1 SIZE DISK_SHA256 CHUNKS CHUNK_SIZE``, then one line per
        chunk ``PAYLOAD_OFFSET PAYLOAD_LENGTH SHA256 LENGTH OFFSET[,OFFSET...]``
        where the payload is the zstd frame inside ``chunks.bin``."""
        lines = [f"{FORMAT} {self.virtual_size} {self.disk_sha256} {len(self.chunks)} "
                 f"{self.chunk_size}"]
        for c in self.chunks:
            h = c.header
            head = record_header_size(len(h.offsets))
            lines.append(f"{c.stored_offset + head} {c.stored_length - head} {h.sha256.hex()} "
                         f"{h.length} {','.join(map(str, h.offsets))}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ImageFormatError(f"manifest is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ImageFormatError(f"not a {FORMAT} manifest; re-import the disk with "
                                   "`fleetboot image add-disk`")
        try:
            return cls(str(raw["name"]), int(raw["virtual_size"]), int(raw["chunk_size"]),
                       str(raw["disk_sha256"]),
                       tuple(ChunkEntry.from_json(c) for c in raw["chunks"]),
                       str(raw.get("source_format", "raw")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageFormatError(f"manifest is malformed: {exc}") from exc


def record_header_size(n_offsets: int) -> int:
    return _HEAD.size + n_offsets * _OFFSET.size + _PAYLOAD_LEN.size


def encode_record(header: ChunkHeader, payload: bytes) -> bytes:
    parts = [_HEAD.pack(MAGIC, header.index, header.length, header.flags, header.sha256,
                        len(header.offsets))]
    parts += [_OFFSET.pack(o) for o in header.offsets]
    head = b"".join(parts)
    return b"".join((head, _PAYLOAD_LEN.pack(zlib.crc32(head), len(payload)), payload))


def decode_record(record: bytes | bytearray | memoryview) -> tuple[ChunkHeader, memoryview]:
    """Split a record into header and compressed payload; raise on any malformed field."""
    view = memoryview(record)
    if len(view) < _HEAD.size:
        raise ImageFormatError("chunk record is shorter than its header")
    magic, index, length, flags, sha, n_offsets = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise ImageFormatError("chunk record has a bad magic")
    pos = _HEAD.size
    end_offsets = pos + n_offsets * _OFFSET.size
    if n_offsets == 0 or len(view) < end_offsets + _PAYLOAD_LEN.size:
        raise ImageFormatError("chunk record has no offsets or is truncated")
    offsets = tuple(_OFFSET.unpack_from(view, pos + i * _OFFSET.size)[0]
                    for i in range(n_offsets))
    crc, plen = _PAYLOAD_LEN.unpack_from(view, end_offsets)
    if zlib.crc32(view[:end_offsets]) != crc:
        raise ImageFormatError("chunk record header does not match its CRC")
    start = end_offsets + _PAYLOAD_LEN.size
    if len(view) != start + plen:
        raise ImageFormatError("chunk record length does not match its payload length")
    return ChunkHeader(index, length, bytes(sha), offsets, flags), view[start:]


def make_record(index: int, offsets: Iterable[int], raw: bytes,
                compressor: zstandard.ZstdCompressor | None = None) -> tuple[ChunkHeader, bytes]:
    comp = compressor or zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    header = ChunkHeader(index, len(raw), hashlib.sha256(raw).digest(), tuple(offsets))
    return header, encode_record(header, comp.compress(raw))


def open_record(record: bytes | bytearray | memoryview,
                decompressor: zstandard.ZstdDecompressor | None = None
                ) -> tuple[ChunkHeader, bytes]:
    """Decode, decompress and verify one record; the raw bytes it writes at each offset."""
    header, payload = decode_record(record)
    dec = decompressor or zstandard.ZstdDecompressor()
    try:
        raw = dec.decompress(payload, max_output_size=header.length)
    except zstandard.ZstdError as exc:
        raise ImageFormatError(f"chunk {header.index} does not decompress: {exc}") from exc
    if len(raw) != header.length or hashlib.sha256(raw).digest() != header.sha256:
        raise ImageFormatError(f"chunk {header.index} does not match its checksum")
    return header, raw


def pieces(virtual_size: int, chunk_size: int,
           data_extents: Iterable[tuple[int, int]] | None = None) -> Iterator[tuple[int, int]]:
    """The (offset, length) pieces worth reading: those touching a data extent.

    ``data_extents`` are (start, length) ranges that may hold data (a sparse
    file's data or a qcow2's allocated ranges); ``None`` means the whole disk.
    Pieces are aligned to ``chunk_size`` and yielded once, in order.
    """
    extents = [(0, virtual_size)] if data_extents is None else sorted(data_extents)
    last = -1
    for start, length in extents:
        if length <= 0:
            continue
        first = start // chunk_size
        end = min(start + length, virtual_size)
        for n in range(max(first, last + 1), (end + chunk_size - 1) // chunk_size):
            last = n
            off = n * chunk_size
            yield off, min(chunk_size, virtual_size - off)


@dataclass
class ManifestBuilder:
    """Accumulates pieces into deduplicated records; the caller stores the records."""

    name: str
    virtual_size: int
    chunk_size: int = CHUNK_SIZE
    source_format: str = "raw"
    _by_sha: dict[bytes, int] = field(default_factory=dict)
    _offsets: list[list[int]] = field(default_factory=list)
    _raw_len: list[int] = field(default_factory=list)
    _sha: list[bytes] = field(default_factory=list)
    _compressor: zstandard.ZstdCompressor = field(
        default_factory=lambda: zstandard.ZstdCompressor(level=ZSTD_LEVEL))

    def add(self, offset: int, raw: bytes) -> bytes | None:
        """Take one piece; the compressed payload when it is new content, else None."""
        if raw.count(0) == len(raw):  # all zeros: nothing to write
            return None
        sha = hashlib.sha256(raw).digest()
        known = self._by_sha.get(sha)
        if known is not None:
            self._offsets[known].append(offset)
            return None
        self._by_sha[sha] = len(self._sha)
        self._sha.append(sha)
        self._raw_len.append(len(raw))
        self._offsets.append([offset])
        return self._compressor.compress(raw)

    def records(self, payloads: Iterable[bytes]) -> Iterator[tuple[ChunkHeader, bytes]]:
        """The final records (offsets complete only now, after every piece was seen)."""
        for i, payload in enumerate(payloads):
            header = ChunkHeader(i, self._raw_len[i], self._sha[i], tuple(self._offsets[i]))
            yield header, encode_record(header, payload)

    def manifest(self, disk_sha256: str, entries: list[ChunkEntry]) -> Manifest:
        return Manifest(self.name, self.virtual_size, self.chunk_size, disk_sha256,
                        tuple(entries), self.source_format)


def assemble(virtual_size: int, records: Iterable[bytes]) -> bytes:
    """The whole disk from records in any order (tests and small images only)."""
    disk = bytearray(virtual_size)
    for record in records:
        header, raw = open_record(record)
        for off in header.offsets:
            disk[off:off + header.length] = raw
    return bytes(disk)
