"""Writing verified chunk records to a file or block device, and checking the result."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field

import zstandard

from fleetboot.reload.image import ChunkHeader, ImageFormatError, open_record

_READ = 4 << 20


@dataclass
class DiskWriter:
    """Opens the target once; ``write_record`` verifies a record before writing it.

    A regular file is cut to the image's size and extended sparse, so the zero
    pieces the image skips read as zeros. A block device keeps what it had in
    those pieces unless ``zero_gaps`` is set (the deploy agent sets it).
    """

    path: str
    virtual_size: int
    written: int = 0
    corrupt: int = 0
    _fd: int = -1
    _dec: zstandard.ZstdDecompressor = field(default_factory=zstandard.ZstdDecompressor)
    _covered: list[tuple[int, int]] = field(default_factory=list)

    def open(self) -> DiskWriter:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self.virtual_size)
        elif _device_size(self._fd) < self.virtual_size:
            size = _device_size(self._fd)
            os.close(self._fd)
            raise ImageFormatError(f"{self.path} holds {size} bytes, the image needs "
                                   f"{self.virtual_size}; choose a larger target disk")
        return self

    def write_record(self, record: bytes | memoryview) -> ChunkHeader | None:
        """Verify and write one record; None (and counted) when it does not verify."""
        try:
            header, raw = open_record(record, self._dec)
        except ImageFormatError:
            self.corrupt += 1
            return None
        for off in header.offsets:
            if off + header.length > self.virtual_size:
                self.corrupt += 1
                return None
        for off in header.offsets:
            os.pwrite(self._fd, raw, off)
            self._covered.append((off, header.length))
        self.written += header.length * len(header.offsets)
        return header

    def zero_gaps(self) -> None:
        """Write zeros where no record wrote (block devices that held older data)."""
        zeros = bytes(_READ)
        pos = 0
        for off, length in [*sorted(self._covered), (self.virtual_size, 0)]:
            while pos < off:
                n = min(len(zeros), off - pos)
                os.pwrite(self._fd, zeros[:n], pos)
                pos += n
            pos = max(pos, off + length)

    def disk_sha256(self) -> str:
        """Read the whole target back and hash it (what the manifest's checksum covers)."""
        os.fsync(self._fd)
        h = hashlib.sha256()
        pos = 0
        while pos < self.virtual_size:
            data = os.pread(self._fd, min(_READ, self.virtual_size - pos), pos)
            if not data:
                break
            h.update(data)
            pos += len(data)
        return h.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)
