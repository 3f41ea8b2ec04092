"""Operators watching a storm: N web views (each loads the fleet page's data, then keeps
the server-sent-events stream open, reconnecting as a browser's EventSource does) and an
API poller at a fixed rate (random pages of ``GET /api/v1/nodes``). Runs until SIGTERM,
then prints one JSON line: requests, errors, latency percentiles, events received.

``python bench/api_observers.py URL TOKEN [--views 5] [--rps 50]`` (bench/api_storm.py
starts it in the storm's server namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time

import httpx


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.events = 0
        self.reconnects = 0


async def view(client: httpx.AsyncClient, stats: Stats, stop: asyncio.Event) -> None:
    """One open web page: its first data, then the live stream until the end."""
    for path in ("/whoami", "/nodes?limit=100", "/pools"):
        r = await client.get(path)
        stats.errors += r.status_code != 200
    while not stop.is_set():
        try:
            async with client.stream("GET", "/events", timeout=None) as stream:
                async for line in stream.aiter_lines():
                    stats.events += line.startswith("data:")
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            stats.errors += 1
        stats.reconnects += 1
        await asyncio.sleep(0.5)  # the page's `retry: 500`


async def poller(client: httpx.AsyncClient, stats: Stats, rps: float,
                 stop: asyncio.Event) -> None:
    """Open loop: a request every 1/rps seconds whether or not the last one answered
    (at most 50 outstanding), as independent pollers would."""
    rng = random.Random(3)
    interval, due = 1.0 / rps, time.monotonic()
    outstanding: set[asyncio.Task[None]] = set()

    async def one(offset: int) -> None:
        started = time.perf_counter()
        try:
            r = await client.get("/nodes", params={"limit": 100, "offset": offset})
            stats.errors += r.status_code != 200
        except httpx.HTTPError:
            stats.errors += 1
        stats.latencies.append(time.perf_counter() - started)

    while not stop.is_set():
        due += interval
        if len(outstanding) < 50:
            task = asyncio.create_task(one(rng.randrange(0, 1000)))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    await asyncio.gather(*outstanding, return_exceptions=True)


async def main(url: str, token: str, views: int, rps: float) -> dict[str, object]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    stats = Stats()
    headers = {"authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=views + 50)
    async with httpx.AsyncClient(base_url=url + "/api/v1", headers=headers, timeout=30,
                                 limits=limits) as client:
        tasks = [asyncio.create_task(view(client, stats, stop)) for _ in range(views)]
        tasks.append(asyncio.create_task(poller(client, stats, rps, stop)))
        print("READY", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ms = sorted(x * 1000 for x in stats.latencies) or [float("nan")]
    return {"requests": len(stats.latencies), "errors": stats.errors, "events": stats.events,
            "reconnects": stats.reconnects, "p50_ms": round(ms[len(ms) // 2], 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--rps", type=float, default=50.0)
    a = parser.parse_args()
    print(json.dumps(asyncio.run(main(a.url, a.token, a.views, a.rps))), flush=True)
