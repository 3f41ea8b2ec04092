"""The disk-image store: ``<boot root>/disks/<image id>/{manifest.json,chunks.bin}``.

Importing reads the source once: qcow2 (or any format ``qemu-img`` reads) is
converted to a sparse raw file first, and only the data ranges of the sparse
file (``SEEK_DATA``/``SEEK_HOLE``) are read, so unallocated parts of a qcow2
and holes of a raw file cost nothing. ``chunks.bin`` is the concatenation of
the chunk records; the manifest says where each one is, so an HTTP client can
fetch single records by Range and a multicast sender can slice them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetboot.errors import FleetbootError
from fleetboot.reload.image import (
    CHUNK_SIZE,
    ChunkEntry,
    Manifest,
    ManifestBuilder,
    pieces,
)

DISKS_DIR = "disks"
MANIFEST = "manifest.json"
RECORDS = "chunks.bin"
INDEX = "index.txt"  # the manifest for busybox agents
_ZEROS = bytes(CHUNK_SIZE)


class DiskImageError(FleetbootError):
    pass


@dataclass(frozen=True)
class StoredDisk:
    manifest: Manifest
    directory: Path

    @property
    def records_path(self) -> Path:
        return self.directory / RECORDS

    @property
    def url_path(self) -> str:
        """Path under the boot root (what ``/boot/files/`` serves)."""
        return f"{DISKS_DIR}/{self.manifest.image_id}"

    def record(self, entry: ChunkEntry) -> bytes:
        with open(self.records_path, "rb") as f:
            f.seek(entry.stored_offset)
            return f.read(entry.stored_length)

    def all_records(self) -> list[bytes]:
        data = self.records_path.read_bytes()
        return [data[c.stored_offset:c.stored_offset + c.stored_length]
                for c in self.manifest.chunks]


def qemu_img_info(path: Path) -> dict[str, object]:
    try:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                             check=True, capture_output=True, text=True).stdout
    except FileNotFoundError as exc:
        raise DiskImageError("qemu-img is missing; install qemu-utils") from exc
    except subprocess.CalledProcessError as exc:
        raise DiskImageError(f"{path} is not a disk image qemu-img can read: "
                             f"{exc.stderr.strip()}") from exc
    info = json.loads(out)
    assert isinstance(info, dict)
    return info


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, length) of the data ranges of a sparse file (all of it if unsupported)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            yield pos, size - pos
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size) - start
        pos = end


class DiskImageStore:
    def __init__(self, boot_root: str | os.PathLike[str]) -> None:
        self.dir = Path(boot_root) / DISKS_DIR

    def add(self, source: str | os.PathLike[str], name: str | None = None,
            chunk_size: int = CHUNK_SIZE) -> tuple[StoredDisk, bool]:
        src = Path(source)
        if not src.is_file() and not src.is_block_device():
            raise DiskImageError(f"{src} is not a readable file or block device")
        info = qemu_img_info(src)
        fmt = str(info.get("format", "raw"))
        self.dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".import-", dir=self.dir))
        try:
            raw = src
            if fmt != "raw":
                raw = work / "disk.raw"
                subprocess.run(["qemu-img", "convert", "-O", "raw", str(src), str(raw)],
                               check=True, capture_output=True)
            manifest = _chunk_disk(raw, work, name or src.name, fmt, chunk_size)
            (work / MANIFEST).write_text(manifest.to_json())
            (work / INDEX).write_text(manifest.text_index())
            (work / "disk.raw").unlink(missing_ok=True)
            target = self.dir / manifest.image_id
            if target.exists():
                return self.get(manifest.image_id), False
            work.chmod(0o755)  # mkdtemp made it private; the HTTP server must read it
            os.rename(work, target)
            return StoredDisk(manifest, target), True
        except subprocess.CalledProcessError as exc:
            raise DiskImageError(f"qemu-img could not convert {src}: "
                                 f"{exc.stderr.decode(errors='replace').strip()}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def list(self) -> list[StoredDisk]:
        if not self.dir.is_dir():
            return []
        found = []
        for d in sorted(self.dir.iterdir()):
            if not d.name.startswith(".") and (d / MANIFEST).is_file():
                found.append(StoredDisk(Manifest.from_json((d / MANIFEST).read_text()), d))
        return found

    def get(self, ref: str) -> StoredDisk:
        """By image id, id prefix or name."""
        matches = [d for d in self.list()
                   if d.manifest.image_id.startswith(ref) or d.manifest.name == ref]
        if not matches:
            raise DiskImageError(f"no disk image {ref!r}; see `fleetboot image disks`")
        if len(matches) > 1:
            raise DiskImageError(f"{ref!r} names {len(matches)} disk images; give more "
                                 "of the id")
        return matches[0]


def _chunk_disk(raw: Path, work: Path, name: str, fmt: str, chunk_size: int) -> Manifest:
    size = _size_of(raw)
    builder = ManifestBuilder(name, size, chunk_size, fmt)
    disk_hash = hashlib.sha256()
    payload_spans: list[tuple[int, int]] = []
    zeros = _ZEROS if chunk_size == CHUNK_SIZE else bytes(chunk_size)
    with open(raw, "rb") as f, open(work / "payloads", "wb") as out:
        fd = f.fileno()
        hashed = 0
        for off, length in pieces(size, chunk_size, list(data_extents(fd, size))):
            hashed = _hash_zeros(disk_hash, hashed, off, zeros)
            data = os.pread(fd, length, off)
            disk_hash.update(data)
            hashed = off + length
            payload = builder.add(off, data)
            if payload is not None:
                payload_spans.append((out.tell(), len(payload)))
                out.write(payload)
        _hash_zeros(disk_hash, hashed, size, zeros)
    entries = []
    with open(work / "payloads", "rb") as p, open(work / RECORDS, "wb") as out:
        payloads = (os.pread(p.fileno(), n, at) for at, n in payload_spans)
        for header, record in builder.records(payloads):
            entries.append(ChunkEntry(header, out.tell(), len(record)))
            out.write(record)
    (work / "payloads").unlink()
    return builder.manifest(disk_hash.hexdigest(), entries)


def _hash_zeros(h: hashlib._Hash, start: int, end: int, zeros: bytes) -> int:
    while start < end:
        n = min(len(zeros), end - start)
        h.update(zeros[:n])
        start += n
    return end


def _size_of(path: Path) -> int:
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)
