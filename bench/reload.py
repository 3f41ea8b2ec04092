"""Benchmark: one disk image to N receivers, Fleetboot multicast vs udpcast vs nginx+curl.

Run as root: ``PYTHONPATH=src .venv/bin/python bench/reload.py [--n 1 8 32] [--loss 0 2]``.

Every receiver is a real process in its own network namespace on one bridge,
writing its own file. The server namespace reaches the bridge through one
veth whose egress has a tbf rate cap, the same for every peer:

- Fleetboot: ``fleetboot.reload.sender`` / ``fleetboot.reload.receiver multicast``
  (every chunk verified on arrival);
- udpcast: ``udp-sender`` / ``udp-receiver`` with the zstd-compressed image
  and ``--pipe "zstd -d"`` at the receivers (the same compressed bytes);
- HTTP unicast: nginx serving the same compressed image, one
  ``curl | zstd -d | dd`` per receiver.

Loss: iptables drops ``--loss`` percent of what each receiver gets, the same
for every peer. Times run from starting the server and the receivers to the
last receiver's exit; every output is hashed afterwards (not timed) and
compared with the source disk. One line per (N, loss):

``RESULT reload n=<N> loss=<p> fleetboot_s=<x> udpcast_s=<x> http_s=<x>
fleetboot_sent_ratio=<x> fleetboot_failed=<n>``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleetboot.lab.bridge import BridgeLab
from fleetboot.lab.netns import stop_process
from fleetboot.lab.nginx import start_nginx
from fleetboot.reload.store import DiskImageStore, StoredDisk

GROUP, PORT = "239.78.1.1", 5600
NGINX_PORT = 8088


def make_image(path: Path, mib: int) -> None:
    """A disk like a used root file system: binaries (incompressible), text and
    logs (compressible), zero-filled free space and never-written holes."""
    rnd = random.Random(13)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 9)))
             for _ in range(2000)]
    with open(path, "wb") as f:
        f.truncate(mib << 20)
        for region in range(0, mib, 10):  # per 10 MiB: 2 binary, 2 text, 2 zeros, 4 hole
            f.seek(region << 20)
            f.write(rnd.randbytes(2 << 20))
            text = b" ".join(rnd.choices(words, k=400_000))
            f.write((text * 2)[: 2 << 20])
            f.write(bytes(2 << 20))
        f.truncate(mib << 20)


def sha_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def wait_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    return time.monotonic()


def run_fleetboot(lab: BridgeLab, disk: StoredDisk, outs: list[Path], rate: str,
                  block: int, timeout_s: float) -> tuple[float, float, int, list[dict]]:  # type: ignore[type-arg]
    session = random.getrandbits(31)
    start = time.monotonic()
    receivers = [ns.popen([sys.executable, "-m", "fleetboot.reload.receiver", "multicast",
                           "--group", GROUP, "--port", str(PORT), "--sender",
                           f"{lab.server_ip}:{PORT + 1}", "--iface-ip", ip, "--session",
                           str(session), "--out", str(out), "--timeout", str(timeout_s)],
                          stdout=subprocess.PIPE)
                 for ns, ip, out in zip(lab.clients, lab.client_ips, outs, strict=True)]
    sender = lab.server.popen([sys.executable, "-m", "fleetboot.reload.sender", "--image",
                               str(disk.directory), "--group", GROUP, "--port", str(PORT),
                               "--iface-ip", lab.server_ip, "--rate", rate, "--expected",
                               str(len(outs)), "--session", str(session), "--block-size",
                               str(block), "--timeout", str(timeout_s)],
                              stdout=subprocess.PIPE)
    try:
        end = wait_all(receivers, timeout_s)
        stats = json.loads(sender.communicate(timeout=30)[0] or b"{}")
        results = [json.loads(p.communicate(timeout=5)[0] or b'{"status": "no output"}')
                   for p in receivers]
    finally:
        for p in [sender, *receivers]:
            stop_process(p)
    failed = sum(r.get("status") != "verified" for r in results)
    secs = sorted(float(r.get("seconds", 0.0)) for r in results)
    print(f"  fleetboot sender: {stats.get('seconds')} s, requests {stats.get('requests')}, "
          f"merged {stats.get('blocks_merged')}; receivers {secs[0]:.1f}-{secs[-1]:.1f} s, "
          f"re-asked chunks {sum(int(r.get('reasked_chunks', 0)) for r in results)}",
          flush=True)
    return end - start, float(stats.get("sent_ratio", 0.0)), failed, results


def run_udpcast(lab: BridgeLab, image_zst: Path, outs: list[Path], rate: str,
                timeout_s: float) -> float:
    start = time.monotonic()
    receivers = [ns.popen(["udp-receiver", "--file", str(out), "--interface", lab.client_if,
                           "--nokbd", "--pipe", "zstd -d -q", "--portbase", "9500"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for ns, out in zip(lab.clients, outs, strict=True)]
    sender = lab.server.popen(["udp-sender", "--file", str(image_zst), "--interface", "srv0",
                               "--min-receivers", str(len(outs)), "--max-bitrate", rate,
                               "--nokbd", "--portbase", "9500"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = wait_all(receivers, timeout_s)
    finally:
        for p in [sender, *receivers]:
            stop_process(p)
    return end - start


def run_http(lab: BridgeLab, name: str, outs: list[Path], timeout_s: float) -> float:
    url = f"http://{lab.server_ip}:{NGINX_PORT}/{name}"
    start = time.monotonic()
    receivers = [ns.popen(["sh", "-c", f"curl -sf {url} | zstd -d -q | "
                           f"dd of={out} bs=1M status=none"])
                 for ns, out in zip(lab.clients, outs, strict=True)]
    try:
        end = wait_all(receivers, timeout_s)
    finally:
        for p in receivers:
            stop_process(p)
    return end - start


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every process reaped so far (and their children)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def drops(lab: BridgeLab) -> tuple[int, int]:
    """(UDP datagrams the receivers' sockets dropped for want of buffer, packets the
    server link's tbf dropped) so far: where a loss the bench did not ask for happens."""
    rcvbuf = 0
    for ns in lab.clients:
        out = ns.run(["nstat", "-asz", "UdpRcvbufErrors"], check=False).stdout.split()
        rcvbuf += int(out[out.index("UdpRcvbufErrors") + 1]) if "UdpRcvbufErrors" in out else 0
    qdisc = lab.server.run(["tc", "-s", "qdisc", "show", "dev", "srv0"], check=False).stdout
    m = re.search(r"dropped (\d+)", qdisc)
    return rcvbuf, int(m.group(1)) if m else 0


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def check(outs: list[Path], want: str) -> int:
    bad = sum(not out.exists() or sha_of(out) != want for out in outs)
    for out in outs:
        out.unlink(missing_ok=True)
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--loss", type=float, nargs="+", default=[0.0, 2.0])
    ap.add_argument("--mib", type=int, default=256, help="virtual size of the disk image")
    ap.add_argument("--cap-mbit", type=float, default=100.0, help="tbf cap on the server link")
    ap.add_argument("--mtu", type=int, default=9000)
    ap.add_argument("--block-size", type=int, default=8192, help="Fleetboot's DATA block")
    ap.add_argument("--peers", nargs="+", default=["fleetboot", "udpcast", "http"])
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    # Clean up (namespaces, processes) on SIGTERM and on SIGINT even when started in the
    # background, where a shell makes SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rate = f"{args.cap_mbit * 0.95:.0f}m"  # each sender paces just under the shared cap
    work = Path(tempfile.mkdtemp(prefix="fb-reload-bench-"))
    try:
        raw = work / "disk.raw"
        make_image(raw, args.mib)
        want = sha_of(raw)
        disk, _ = DiskImageStore(work / "root").add(raw, name="bench")
        web = work / "web"
        web.mkdir()
        subprocess.run(["zstd", "-q", "-3", "-T1", str(raw), "-o", str(web / "disk.zst")],
                       check=True)
        m = disk.manifest
        print(f"image: {m.virtual_size >> 20} MiB virtual, {m.stored_size / 2**20:.1f} MiB "
              f"stored ({len(m.chunks)} chunks), zstd file "
              f"{(web / 'disk.zst').stat().st_size / 2**20:.1f} MiB; cap {args.cap_mbit} Mbit/s,"
              f" MTU {args.mtu}, block {args.block_size}", flush=True)
        for n in args.n:
            run_n(args, n, disk, web, work, want, rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_n(args: argparse.Namespace, n: int, disk: StoredDisk, web: Path, work: Path,
          want: str, rate: str) -> None:
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    outs = [out_dir / f"r{i}" for i in range(n)]
    with BridgeLab.create(n, mtu=args.mtu) as lab:
        lab.rate_cap(args.cap_mbit)
        nginx = (start_nginx(lab.server, web, work, f"{lab.server_ip}:{NGINX_PORT}")
                 if "http" in args.peers else None)
        try:
            for loss in args.loss:
                for ns in lab.clients:
                    ns.run(["iptables", "-F", "INPUT"], check=False)
                lab.receiver_loss(loss)
                load = loadavg()
                fb_s = ratio = udp_s = http_s = float("nan")
                failed = 0
                if "fleetboot" in args.peers:
                    cpu, (rcv0, tbf0) = children_cpu_s(), drops(lab)
                    fb_s, ratio, failed, _ = run_fleetboot(lab, disk, outs, rate,
                                                           args.block_size, args.timeout)
                    rcv1, tbf1 = drops(lab)
                    print(f"  fleetboot CPU {children_cpu_s() - cpu:.1f} s; drops: receiver "
                          f"buffers {rcv1 - rcv0}, tbf {tbf1 - tbf0}", flush=True)
                    failed = max(failed, check(outs, want))
                if "udpcast" in args.peers:
                    cpu = children_cpu_s()
                    udp_s = run_udpcast(lab, web / "disk.zst", outs, rate, args.timeout)
                    print(f"  udpcast CPU {children_cpu_s() - cpu:.1f} s, wrong outputs: "
                          f"{check(outs, want)}", flush=True)
                if "http" in args.peers:
                    cpu = children_cpu_s()
                    http_s = run_http(lab, "disk.zst", outs, args.timeout)
                    print(f"  http CPU {children_cpu_s() - cpu:.1f} s (nginx not counted), "
                          f"wrong outputs: {check(outs, want)}", flush=True)
                print(f"  loadavg before: {' '.join(load)}, after: "
                      f"{' '.join(loadavg())}", flush=True)
                print(f"RESULT reload n={n} loss={loss:g} fleetboot_s={fb_s:.2f} "
                      f"udpcast_s={udp_s:.2f} http_s={http_s:.2f} "
                      f"fleetboot_sent_ratio={ratio:.3f} fleetboot_failed={failed}",
                      flush=True)
        finally:
            stop_process(nginx)


if __name__ == "__main__":
    sys.exit(main())
