"""``GET /api/v1/nodes`` with 10,000 nodes: the latency of one page, and the web view's
first render of the fleet page in Debian's headless Chromium.

A real ``fleetboot serve`` (DHCP and TFTP off, HTTP on loopback) runs over an
inventory of N nodes (two NICs each, a third of them with a stored state) and
one viewer token. The client (httpx, one connection, sequential: the latency of
one operator's request, not a throughput test) asks for random pages of
``--limit`` nodes, a share of them filtered by state or name; then, if Chromium
is installed, the fleet page is opened and timed from the login click to the
first row on screen.

``python bench/api.py [--nodes 10000] [--requests 600]``; ends with
``RESULT api nodes=<N> p50_ms=<x> p99_ms=<x> first_render_s=<x>``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from fleetboot.api.tokens import create_token
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Interface, Node
from fleetboot.nodeconfig.models import NodeStateRow

STATES = ("UP", "BOOTING", "FAILED", "WAITING")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def populate(db: Database, n: int) -> str:
    """N nodes (bulk, in one transaction) and a viewer token; returns its secret."""
    with db.session() as s:
        for i in range(n):
            node = Node(name=f"node{i:05d}", arch="x86_64", attributes={})
            node.interfaces = [
                Interface(mac=f"52:54:02:{i >> 8 & 255:02x}:{i & 255:02x}:01", is_boot=True),
                Interface(mac=f"52:54:02:{i >> 8 & 255:02x}:{i & 255:02x}:02", is_boot=False)]
            s.add(node)
        s.flush()
        ids = [node_id for (node_id,) in s.query(Node.id)]
        now = time.time()
        s.add_all(NodeStateRow(node_id=node_id, state=STATES[k % len(STATES)], since=now,
                               boot=1, stuck=False, message="")
                  for k, node_id in enumerate(ids) if k % 3 == 0)
        _, secret = create_token(s, "bench", "viewer")
    return secret


def serve(workdir: Path, db_url: str, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "fleetboot.yaml"
    config.write_text(yaml.safe_dump({
        "boot_root": str(workdir / "boot"), "state_dir": str(workdir),
        "database": {"url": db_url}, "dhcp": {"enabled": False}, "tftp": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": port}}))
    ready = workdir / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "fleetboot.cli", "-c", str(config), "serve",
                             "--log-level", "warning", "--ready-file", str(ready)],
                            stdout=open(workdir / "serve.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("fleetboot serve did not start:\n"
                             + (workdir / "serve.log").read_text()[-2000:])
        time.sleep(0.05)
    return proc


def measure(url: str, secret: str, n: int, requests: int, limit: int) -> list[float]:
    rng = random.Random(7)
    times = []
    with httpx.Client(base_url=url + "/api/v1",
                      headers={"authorization": f"Bearer {secret}"}, timeout=30) as c:
        for k in range(requests + 20):
            params: dict[str, str | int] = {"limit": limit,
                                            "offset": rng.randrange(0, max(1, n - limit))}
            if k % 4 == 1:
                params = {"limit": limit, "state": rng.choice(STATES)}
            elif k % 4 == 2:
                params = {"limit": limit, "q": f"node0{rng.randrange(10)}"}
            started = time.perf_counter()
            r = c.get("/nodes", params=params)
            spent = time.perf_counter() - started
            r.raise_for_status()
            assert r.json()["items"], params
            if k >= 20:  # the first requests warm caches and the connection
                times.append(spent)
    return times


def first_render(url: str, secret: str) -> float | None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/ui/")
        wait = WebDriverWait(driver, 60)
        wait.until(EC.presence_of_element_located((By.ID, "token"))).send_keys(secret)
        started = time.perf_counter()
        driver.find_element(By.ID, "login").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#nodes tr")))
        return time.perf_counter() - started
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fleetboot-bench-api-"))
    proc = None
    try:
        db_url = f"sqlite:///{workdir}/fleetboot.db"
        db = Database(db_url)
        db.create_schema()
        started = time.monotonic()
        secret = populate(db, args.nodes)
        db.dispose()
        print(f"{args.nodes} nodes stored in {time.monotonic() - started:.1f} s", flush=True)
        port = free_port()
        proc = serve(workdir, db_url, port)
        url = f"http://127.0.0.1:{port}"
        times = measure(url, secret, args.nodes, args.requests, args.limit)
        ms = sorted(t * 1000 for t in times)
        p50 = statistics.median(ms)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        render = first_render(url, secret)
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"{len(ms)} requests of {args.limit} nodes: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {ms[-1]:.1f} ms; load average {' '.join(load)}")
        shown = f"{render:.2f}" if render is not None else "nan"
        print(f"RESULT api nodes={args.nodes} p50_ms={p50:.1f} p99_ms={p99:.1f} "
              f"first_render_s={shown}")
        return 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not os.environ.get("KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
