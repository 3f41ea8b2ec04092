"""The raw fast path in a real uvicorn, with real sockets from real (loopback) addresses."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from nodeconfig_helpers import Served, make_fleet, serve

from fleetboot.inventory.db import Database


def _client(served: Served, address: str) -> httpx.Client:
    # Binding the client socket to a node's address is what spoofing that address means here.
    return httpx.Client(base_url=served.base_url,
                        transport=httpx.HTTPTransport(local_address=address))


def _raw(served: Served, request: bytes, address: str = "127.0.0.10") -> bytes:
    port = int(served.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), source_address=(address, 0)) as sock:
        sock.sendall(request)
        sock.settimeout(5)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


@pytest.fixture
def served(sqlite_db: Database):  # type: ignore[no-untyped-def]
    fleet = make_fleet(sqlite_db)
    with serve(sqlite_db, fleet.directory()) as s:
        s.fleet = fleet  # type: ignore[attr-defined]
        yield s


def test_the_fast_path_serves_the_same_bytes_as_the_app(served: Served) -> None:
    fleet = served.fleet  # type: ignore[attr-defined]
    token = served.token(fleet["a"])
    with _client(served, fleet["a"].address) as c:
        fast = c.get("/v1/self/config", headers={"X-Fleetboot-Token": token})
        # percent-encoding misses the raw path: Starlette decodes and routes it to the app
        routed = c.get("/v1/self/c%6Fnfig", headers={"X-Fleetboot-Token": token})
        again = c.get("/v1/self/config", headers={"X-Fleetboot-Token": token,
                                                  "If-None-Match": fast.headers["etag"]})
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content and fast.headers["etag"] == routed.headers["etag"]
    assert fast.json()["accounts"][0]["name"] == "user-a"
    assert again.status_code == 304 and again.content == b""


def test_a_spoofed_source_address_gets_no_secret(served: Served) -> None:
    fleet = served.fleet  # type: ignore[attr-defined]
    token_a = served.token(fleet["a"])
    served.token(fleet["b"])
    with _client(served, fleet["b"].address) as c:  # A on B's address
        own_token = c.get("/v1/self/config", headers={"X-Fleetboot-Token": token_a})
        bare = c.get("/v1/self/config")
        proxied = c.get("/v1/self/config", headers={"X-Forwarded-For": fleet["a"].address,
                                                    "X-Fleetboot-Token": token_a})
    assert own_token.status_code == 401 and proxied.status_code == 403
    assert bare.status_code == 200 and "user-b" not in bare.text
    with _client(served, "127.0.0.77") as c:  # an address with no lease
        assert c.get("/v1/self/config").status_code == 403


def test_keep_alive_pipelining_head_and_close(served: Served) -> None:
    token = served.token(served.fleet["a"]).encode()  # type: ignore[attr-defined]
    get = b"GET /v1/self/config HTTP/1.1\r\nHost: x\r\nX-Fleetboot-Token: " + token + b"\r\n"
    pipelined = (get + b"\r\n") + (b"HEAD /v1/self/config/hostname HTTP/1.1\r\nHost: x\r\n\r\n") \
        + (get + b"Connection: close\r\n\r\n")
    out = _raw(served, pipelined)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.count(b'"node":"a"') == 2  # the HEAD has no body
    assert out.rstrip().endswith(b"}") and b"connection: close" in out.lower()
    old = _raw(served, b"GET /v1/self/config HTTP/1.0\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200") and b"connection: close" in old.lower()


def test_other_requests_still_reach_the_app(served: Served) -> None:
    with _client(served, "127.0.0.10") as c:
        assert c.get("/v1/self/client.sh").status_code == 200
        assert c.post("/v1/self/config").status_code == 405
        assert c.get("/v1/self/configuration").status_code == 404
        assert c.get("/nothing").status_code == 404
    garbage = _raw(served, b"GET /v1/self/config HTTP/1.1\r\nBad Header\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400")


def test_idle_connections_are_closed_busy_ones_kept(sqlite_db: Database) -> None:
    """One idle timer per connection does uvicorn's keep-alive job on the fast path."""
    fleet = make_fleet(sqlite_db)
    with serve(sqlite_db, fleet.directory(), keep_alive_s=1) as served:
        port = int(served.base_url.rsplit(":", 1)[1])
        request = b"GET /v1/self/config/hostname HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port),
                                      source_address=(fleet["a"].address, 0)) as busy, \
                socket.create_connection(("127.0.0.1", port),
                                         source_address=(fleet["a"].address, 0)) as idle:
            busy.settimeout(5)
            idle.settimeout(5)
            idle.sendall(request)
            assert idle.recv(65536).startswith(b"HTTP/1.1 200")
            for _ in range(8):  # 2 s of requests every 0.25 s: never idle for 1 s
                busy.sendall(request)
                assert busy.recv(65536).startswith(b"HTTP/1.1 200")
                time.sleep(0.25)
            assert idle.recv(65536) == b""  # closed by the server after 1 s idle
            busy.sendall(request)
            assert busy.recv(65536).startswith(b"HTTP/1.1 200")
