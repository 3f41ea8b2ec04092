"""HTTP boot file throughput: Fleetboot's app (sendfile on and off) vs nginx-light, loopback.

One 64 MiB file is downloaded with curl from each server: sequentially
(median of N runs) and by 8 clients at once. Besides MB/s it reports the
server's own CPU time per GiB sent (from /proc), which is what sendfile(2)
saves: on loopback the client's copy dominates wall time, on a real NIC the
server's CPU is what limits how many nodes boot at once.

Run as ``python bench/httpboot.py``; ends with
``RESULT http fleetboot_mbps=<x> fleetboot_stream_mbps=<x> nginx_mbps=<x> ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIZE = 64 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def curl(url: str) -> float:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                          url], check=True, capture_output=True, text=True).stdout.split()
    if int(out[0]) != SIZE:
        raise RuntimeError(f"{url}: got {out[0]} bytes")
    return SIZE / float(out[1]) / 1e6


def parallel(url: str, n: int) -> float:
    start = time.monotonic()
    procs = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", url]) for _ in range(n)]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("a parallel download failed")
    return n * SIZE / (time.monotonic() - start) / 1e6


def measure(url: str, pids: list[int], runs: int) -> dict[str, float]:
    curl(url)  # warm-up: page cache, chunk cache, connection set-up paths
    cpu0 = cpu_seconds(pids)
    seq = statistics.median(curl(url) for _ in range(runs))
    par = parallel(url, 8)
    cpu = cpu_seconds(pids) - cpu0
    gib = (runs + 8) * SIZE / (1 << 30)
    return {"seq_mbps": seq, "par8_mbps": par, "cpu_s_per_gib": cpu / gib}


# --- servers ----------------------------------------------------------------------------------


def serve_fleetboot(root: str, port: int, zero_copy: bool) -> None:
    from fleetboot.config import Settings
    from fleetboot.inventory.db import Database
    from fleetboot.server.directory import StaticDirectory
    from fleetboot.server.http import HttpService, create_app

    async def main() -> None:
        settings = Settings(boot_root=root)
        db = Database(f"sqlite:///{root}/../bench.db")
        db.create_schema()
        app = create_app(settings, db, StaticDirectory())
        svc = HttpService(app, "127.0.0.1", port, zero_copy=zero_copy)
        await svc.start()
        await svc.wait()

    asyncio.run(main())


@contextmanager
def fleetboot(root: str, zero_copy: bool) -> Iterator[tuple[str, list[int]]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", root, str(port),
                             "1" if zero_copy else "0"])
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/boot/files/big.bin", [proc.pid]
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def nginx(root: str, work: Path) -> Iterator[tuple[str, list[int]]]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_timeout 15;
  client_body_temp_path {work}/ct; proxy_temp_path {work}/pt;
  fastcgi_temp_path {work}/ft; uwsgi_temp_path {work}/ut; scgi_temp_path {work}/st;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(work), "-c", str(conf)])
    try:
        wait_port(port)
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
        yield f"http://127.0.0.1:{port}/big.bin", [proc.pid, *map(int, kids)]
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--serve", nargs=3, metavar=("ROOT", "PORT", "ZC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_fleetboot(args.serve[0], int(args.serve[1]), args.serve[2] == "1")
        return
    if not shutil.which("nginx") or not shutil.which("curl"):
        sys.exit("needs nginx-light and curl (scripts/install-system-deps.sh)")
    with tempfile.TemporaryDirectory(prefix="fb-bench-http-") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        (root / "big.bin").write_bytes(os.urandom(SIZE))
        for path in (work, root, root / "big.bin"):  # nginx's worker runs as nobody
            path.chmod(0o755)
        results = {}
        with fleetboot(str(root), True) as (url, pids):
            results["fleetboot (sendfile)"] = measure(url, pids, args.runs)
        with fleetboot(str(root), False) as (url, pids):
            results["fleetboot (stream)"] = measure(url, pids, args.runs)
        with nginx(str(root), work) as (url, pids):
            results["nginx-light (1 worker)"] = measure(url, pids, args.runs)
    print(f"{'server':<24} {'1 client MB/s':>14} {'8 clients MB/s':>15} {'server CPU s/GiB':>17}")
    for name, r in results.items():
        print(f"{name:<24} {r['seq_mbps']:>14.0f} {r['par8_mbps']:>15.0f} "
              f"{r['cpu_s_per_gib']:>17.3f}")
    zc, st, ng = (results[k] for k in results)
    print(f"RESULT http fleetboot_mbps={zc['seq_mbps']:.0f} "
          f"fleetboot_stream_mbps={st['seq_mbps']:.0f} nginx_mbps={ng['seq_mbps']:.0f} "
          f"fleetboot_par8_mbps={zc['par8_mbps']:.0f} nginx_par8_mbps={ng['par8_mbps']:.0f} "
          f"fleetboot_cpu_s_per_gib={zc['cpu_s_per_gib']:.3f} "
          f"stream_cpu_s_per_gib={st['cpu_s_per_gib']:.3f} "
          f"nginx_cpu_s_per_gib={ng['cpu_s_per_gib']:.3f}")


if __name__ == "__main__":
    main()
