"""The HTTP unicast transport: one streamed GET of ``chunks.bin``, resumed by Range.

The manifest says where every record sits in ``chunks.bin``. The receiver
streams the file from the first record it has not verified, verifies and
writes each record as soon as its bytes are in, and after a dropped
connection asks again with ``Range: bytes=<first unverified record>-``, so
nothing already verified is sent twice. The existing HTTP server serves the
store as ``/boot/files/disks/<id>/`` with Range support.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse

from fleetboot.reload.image import ChunkEntry, Manifest
from fleetboot.reload.store import MANIFEST, RECORDS
from fleetboot.reload.transport import ReceiveResult
from fleetboot.reload.writer import DiskWriter

_READ = 256 * 1024
MAX_ATTEMPTS = 20


class _Conn:
    def __init__(self, url: str, timeout_s: float) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"{url} is not an http:// URL")
        self.host, self.port = u.hostname, u.port or 80
        self.base = u.path.rstrip("/")
        self.timeout_s = timeout_s

    def get(self, name: str, start: int | None = None) -> tuple[http.client.HTTPConnection,
                                                                 http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        headers = {} if start is None else {"Range": f"bytes={start}-"}
        conn.request("GET", f"{self.base}/{name}", headers=headers)
        resp = conn.getresponse()
        wanted = 200 if start is None else 206
        if resp.status != wanted:
            conn.close()
            raise OSError(f"GET {name}: HTTP {resp.status} (wanted {wanted})")
        return conn, resp


def fetch_http(url: str, out: str, verify_disk: bool = False, zero_gaps: bool = False,
               timeout_s: float = 600.0) -> ReceiveResult:
    started = time.monotonic()
    conn = _Conn(url, min(timeout_s, 30.0))
    c, resp = conn.get(MANIFEST)
    manifest = Manifest.from_json(resp.read())
    c.close()
    writer = DiskWriter(out, manifest.virtual_size).open()
    entries = sorted(manifest.chunks, key=lambda e: e.stored_offset)
    progress = [0]  # records verified, in file order (kept when a transfer is cut)
    resumes = 0
    try:
        while progress[0] < len(entries) and resumes < MAX_ATTEMPTS \
                and time.monotonic() - started < timeout_s:
            try:
                _stream(conn, entries, progress, writer)
            except (OSError, http.client.HTTPException):
                resumes += 1
                time.sleep(min(2.0, 0.1 * resumes))
        done = progress[0]
        status = "verified" if done == len(entries) else "timeout"
        sha = None
        if status == "verified":
            if zero_gaps:
                writer.zero_gaps()
            if verify_disk:
                sha = writer.disk_sha256()
                status = "verified" if sha == manifest.disk_sha256 else "failed"
        return ReceiveResult(status, time.monotonic() - started, done, writer.written,
                             writer.corrupt, resumes, 0, 0, sha)
    finally:
        writer.close()


def _stream(conn: _Conn, entries: list[ChunkEntry], progress: list[int],
            writer: DiskWriter) -> None:
    """Read records from ``entries[progress[0]]`` on, counting each verified one."""
    done = progress[0]
    start = entries[done].stored_offset
    c, resp = conn.get(RECORDS, start if start else None)
    try:
        buf = bytearray()
        pos = start  # file offset of buf[0]
        while done < len(entries):
            data = resp.read(_READ)
            if not data:
                raise OSError("connection closed early")
            buf += data
            while done < len(entries):
                e = entries[done]
                end = e.stored_offset + e.stored_length - pos
                if len(buf) < end:
                    break
                record = bytes(buf[e.stored_offset - pos:end])
                if writer.write_record(record) is None:
                    raise OSError(f"chunk {e.header.index} did not verify")
                done += 1
                progress[0] = done
                del buf[:end]
                pos += end
    finally:
        c.close()
