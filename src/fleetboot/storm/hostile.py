"""Hostile HTTP clients beside a boot storm (issue 11): run in the client namespace.

    python -m fleetboot.storm.hostile CONFIG.json OUT.json

Three kinds, each from its own addresses of the node network (the client
namespace can bind any of them, see ``topology``), each reconnecting as soon
as the server lets go, until SIGTERM:

- ``huge``: sends a request head that never ends (``X-Junk: aaaa...``, up to
  ``huge_mib``) and notes how much the server took and what it answered;
- ``slow``: asks for a large file and reads it at ``slow_rate`` bytes a second
  through a 4 KiB receive buffer (the 2 KiB/s readers of the issue);
- ``idle``: connects and sends nothing, or half a request head, then waits for
  the server to close.

Writes counters as JSON to OUT on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import resource
import signal
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PIECE = 64 << 10
READ = 512


@dataclass
class HostileConfig:
    server: str
    port: int
    huge_addresses: list[str]
    slow_addresses: list[str]
    idle_addresses: list[str]
    huge_per_address: int = 1
    huge_mib: int = 160
    slow_per_address: int = 10
    slow_path: str = "/boot/files/hostile-big.bin"
    slow_rate: int = 2048
    idle_per_address: int = 50


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    # The most head bytes one connection got into its socket before the server closed it;
    # kernel buffers on both sides included (the server parses at most its head limit).
    huge_taken_max: int = 0
    huge_answer_s: list[float] = field(default_factory=list)
    idle_held_s: list[float] = field(default_factory=list)
    slow_held_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def top(values: list[float]) -> float:
            return round(max(values), 3) if values else 0.0

        return {**dict(self.counts), "huge_taken_max": self.huge_taken_max,
                "huge_answer_max_s": top(self.huge_answer_s),
                "idle_held_max_s": top(self.idle_held_s),
                "slow_held_max_s": top(self.slow_held_s)}


async def _connect(cfg: HostileConfig, source: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        await asyncio.get_running_loop().sock_connect(sock, (cfg.server, cfg.port))
    except OSError:
        sock.close()
        raise
    return sock


async def _read_answer(sock: socket.socket, timeout_s: float) -> bytes:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout_s)
    except (OSError, TimeoutError):
        return b""


async def huge_header(cfg: HostileConfig, source: str, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    junk = b"a" * PIECE
    while True:
        try:
            sock = await _connect(cfg, source)
        except OSError:
            tally.counts["huge_connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        started, taken = time.monotonic(), 0
        try:
            await loop.sock_sendall(sock, b"GET /boot/script.ipxe HTTP/1.1\r\nHost: x\r\n"
                                          b"X-Junk: ")
            while taken < cfg.huge_mib << 20:
                await loop.sock_sendall(sock, junk)
                taken += PIECE
            tally.counts["huge_all_sent"] += 1  # the server took every byte
        except OSError:
            pass
        answer = await _read_answer(sock, 30.0)
        sock.close()
        tally.huge_answer_s.append(time.monotonic() - started)
        tally.huge_taken_max = max(tally.huge_taken_max, taken)
        tally.counts["huge_attempts"] += 1
        status = answer[9:12].decode(errors="replace") if answer.startswith(b"HTTP/") else "none"
        tally.counts[f"huge_status_{status}"] += 1


async def slow_reader(cfg: HostileConfig, source: str, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock = await _connect(cfg, source, rcvbuf=4096)
        except OSError:
            tally.counts["slow_connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        started, head = time.monotonic(), b""
        try:
            await loop.sock_sendall(sock, b"GET %s HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n" % cfg.slow_path.encode())
            while data := await loop.sock_recv(sock, READ):
                head = head or data[:12]
                await asyncio.sleep(READ / cfg.slow_rate)
            tally.counts["slow_closed"] += 1
        except OSError:
            tally.counts["slow_reset"] += 1
        finally:
            sock.close()
        tally.slow_held_s.append(time.monotonic() - started)
        status = head[9:12].decode(errors="replace") if head.startswith(b"HTTP/") else "none"
        tally.counts[f"slow_status_{status}"] += 1
        if status == "503":
            await asyncio.sleep(1.0)  # refused at once: knock again a little later


async def idle_connection(cfg: HostileConfig, source: str, partial: bool,
                          tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock = await _connect(cfg, source)
        except OSError:
            tally.counts["idle_connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        started = time.monotonic()
        try:
            if partial:
                await loop.sock_sendall(sock, b"GET /boot/script.ipxe HTTP/1.1\r\nHost: x\r\n")
            while await loop.sock_recv(sock, 4096):
                pass  # a 408, then the close
        except OSError:
            pass
        finally:
            sock.close()
        tally.idle_held_s.append(time.monotonic() - started)
        tally.counts["idle_closed_by_server"] += 1


async def run(cfg: HostileConfig, stop: asyncio.Event) -> dict[str, Any]:
    """Attack until ``stop`` is set; the counters."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(huge_header(cfg, a, tally))
             for a in cfg.huge_addresses for _ in range(cfg.huge_per_address)]
    tasks += [loop.create_task(slow_reader(cfg, a, tally))
              for a in cfg.slow_addresses for _ in range(cfg.slow_per_address)]
    tasks += [loop.create_task(idle_connection(cfg, a, i % 2 == 1, tally))
              for a in cfg.idle_addresses for i in range(cfg.idle_per_address)]
    started = time.monotonic()
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=5.0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"config": asdict(cfg), "wall_s": round(time.monotonic() - started, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), **tally.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    cfg = HostileConfig(**json.loads(args.config.read_text()))
    faulthandler.register(signal.SIGUSR1)  # where it hangs, if it ever does
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    result = loop.run_until_complete(run(cfg, stop))
    args.out.write_text(json.dumps(result, indent=1))
    os._exit(0)  # sockets still closing are the kernel's business now


if __name__ == "__main__":
    raise SystemExit(main())
