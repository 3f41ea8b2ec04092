"""The HTTP transport: streamed, verified per chunk, resumed by Range after a cut,
never fetching a verified chunk again (a Range-capable server on loopback)."""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from test_reload_netns import make_disk

from fleetboot.reload.httpfetch import fetch_http
from fleetboot.reload.store import DiskImageStore


def _server(root: Path, cut_after: int) -> tuple[ThreadingHTTPServer, list[str]]:
    """Serves ``root``; the first GET of chunks.bin is cut after ``cut_after`` bytes."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            data = (root / self.path.lstrip("/")).read_bytes()
            rng = self.headers.get("Range", "")
            seen.append(f"{self.path} {rng}")
            start = int(m.group(1)) if (m := re.match(r"bytes=(\d+)-$", rng)) else 0
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if self.path.endswith("chunks.bin") and len(seen) == 2:
                body = body[:cut_after]  # the connection drops mid-transfer
            self.wfile.write(body)
            self.close_connection = True

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, seen


def test_a_cut_transfer_resumes_at_the_first_unverified_chunk(tmp_path: Path) -> None:
    content = make_disk(tmp_path / "d.raw", mib=9)
    disk, _ = DiskImageStore(tmp_path / "root").add(tmp_path / "d.raw")
    entries = sorted(disk.manifest.chunks, key=lambda e: e.stored_offset)
    cut = entries[1].stored_offset + entries[1].stored_length + 100  # two chunks and a bit
    srv, seen = _server(tmp_path / "root", cut)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/{disk.url_path}"
        result = fetch_http(url, str(tmp_path / "out"), verify_disk=True, timeout_s=60)
    finally:
        srv.shutdown()
    assert result.status == "verified" and result.reasked_chunks == 1  # one resume
    assert (tmp_path / "out").read_bytes() == content
    assert result.disk_sha256 == hashlib.sha256(content).hexdigest()
    chunk_gets = [s for s in seen if "chunks.bin" in s]
    assert chunk_gets == [f"/{disk.url_path}/chunks.bin ",
                          f"/{disk.url_path}/chunks.bin bytes={entries[2].stored_offset}-"]
