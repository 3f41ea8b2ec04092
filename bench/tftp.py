#!/usr/bin/env python3
"""TFTP benchmark: Fleetboot vs tftpd-hpa, dnsmasq and py3tftp, in one run.

Every server runs in a server namespace on its own address (port 69); the
clients run in a client namespace. Two links:

* ``direct``: a veth pair, no added delay;
* ``delayed``: 0.5 ms each way. This kernel has no ``sch_netem``, so
  ``Lab.netem`` cannot work here; the delay comes from a small C *delay line*
  (compiled on first use with gcc, source below) that bridges two veth pairs
  through a middle namespace with AF_PACKET sockets and holds every frame for
  the delay. It is used for every server alike.

Scenarios (MB/s = 10^6 bytes per second of file data):

* (a) one 32 MiB file with curl, blksize 512 and 1468;
* (b) 20 concurrent 10 MiB downloads with curl at 1468 (aggregate MB/s);
* (c) 1,000 concurrent downloads of a 100 KiB file at blksize 1468. Spawning
  1,000 curl processes would measure fork/exec more than TFTP, so this uses the
  small asyncio client below (one process, one socket per download, RFC 1350
  retransmission by the client), for every server alike;
* (d) Fleetboot with windowsize 16 on (a), with atftp (which speaks RFC 7440),
  against atftp's own lock-step figures.

On the direct link each measurement is repeated (``--reps``, servers
interleaved) and the best is kept, because the machine is shared; the delayed
link is latency-bound and runs ``--delayed-reps`` times (default once). All
clients run at ``nice 10`` (see ``NICE``), the servers at normal priority.

Usage (root)::

    .venv/bin/python bench/tftp.py            # full run, ~15 minutes
    .venv/bin/python bench/tftp.py --quick    # smaller files, a smoke test

Ends with ``RESULT tftp fleetboot_mbps=.. tftpd_hpa_mbps=.. dnsmasq_mbps=.. failed=..``:
aggregate MB/s of (b) on the delayed link, and Fleetboot's failed downloads
at 1,000 concurrent, summed over every run of (c) on both links.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from fleetboot.lab.netns import Lab, Namespace, run, unique_name  # noqa: E402

MiB = 1 << 20
# Clients run niced: on a real network they are other machines and do not compete with
# the server for CPU. With 20 curl processes at equal priority, a one-process server
# gets 1/21 of the CPU by fair share, a fork-per-transfer server half of it.
NICE = ["nice", "-n", "10"]
# --pin: servers on CPU 1, clients on CPU 0. In this VM a wake-up across CPUs costs
# several times one on the same CPU, so unpinned lock-step figures depend on where the
# scheduler happens to put server and client; pinned, every server pays the same.
SERVER_PIN: list[str] = []
SERVERS = ("fleetboot", "tftpd-hpa", "dnsmasq", "py3tftp")
HOST_SUFFIX = {"fleetboot": 1, "tftpd-hpa": 11, "dnsmasq": 12, "py3tftp": 13}

# --- the delay line ------------------------------------------------------------------------

DELAYLINE_C = r"""
/* delayline IF_A IF_B DELAY_US: forward every frame between two interfaces after DELAY_US. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 16384
#define SNAP 2048

struct queue { unsigned head, tail; long long due[SLOTS]; unsigned short len[SLOTS];
               unsigned char buf[SLOTS][SNAP]; };
static struct queue qa, qb;

static long long now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int open_if(const char *name) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    int idx = if_nametoindex(name), one = 1, size = 16 << 20;
    if (fd < 0 || !idx) { perror(name); exit(1); }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET; sll.sll_protocol = htons(ETH_P_ALL); sll.sll_ifindex = idx;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll)) { perror("bind"); exit(1); }
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    struct packet_mreq mr = {0};
    mr.mr_ifindex = idx; mr.mr_type = PACKET_MR_PROMISC;
    setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    return fd;
}

/* Veths leave UDP checksums to "hardware" (CHECKSUM_PARTIAL); a frame lifted off one with
 * a packet socket carries an unfinished checksum, so finish it here. */
static void fix_udp_checksum(unsigned char *f, ssize_t n) {
    if (n < 42 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17) return;
    unsigned ihl = (f[14] & 0x0f) * 4;
    if ((f[20] & 0x3f) || f[21]) return;                 /* a fragment: leave it */
    unsigned char *u = f + 14 + ihl;
    unsigned len = (u[4] << 8) | u[5];
    if (u + len > f + n || len < 8) return;
    unsigned long sum = 17 + len;
    for (int i = 0; i < 8; i += 2) sum += (f[26 + i] << 8) | f[27 + i];   /* addresses */
    u[6] = u[7] = 0;
    for (unsigned i = 0; i + 1 < len; i += 2) sum += (u[i] << 8) | u[i + 1];
    if (len & 1) sum += u[len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    unsigned short c = (unsigned short)~sum; if (!c) c = 0xffff;
    u[6] = c >> 8; u[7] = c & 0xff;
}

static void drain(int fd, struct queue *q, long long due) {
    for (;;) {
        unsigned slot = q->tail % SLOTS;
        if (q->tail - q->head >= SLOTS) {           /* full: drop, like a queue limit */
            unsigned char scratch[SNAP];
            if (recv(fd, scratch, sizeof scratch, 0) < 0) return;
            continue;
        }
        ssize_t n = recv(fd, q->buf[slot], SNAP, MSG_TRUNC);
        if (n < 0) return;
        if (n > SNAP) continue;                     /* larger than a frame: drop */
        fix_udp_checksum(q->buf[slot], n);
        q->len[slot] = (unsigned short)n; q->due[slot] = due; q->tail++;
    }
}

static void flush(int fd, struct queue *q, long long now) {
    while (q->head != q->tail) {
        unsigned slot = q->head % SLOTS;
        if (q->due[slot] > now) return;
        if (send(fd, q->buf[slot], q->len[slot], 0) < 0 && errno == EAGAIN) return;
        q->head++;
    }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: delayline IF_A IF_B DELAY_US\n"); return 2; }
    int a = open_if(argv[1]), b = open_if(argv[2]);
    long long delay = atoll(argv[3]) * 1000LL;
    prctl(PR_SET_TIMERSLACK, 1UL);
    printf("ready\n"); fflush(stdout);
    struct pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    for (;;) {
        long long now = now_ns();
        flush(b, &qa, now); flush(a, &qb, now);
        long long next = -1;
        if (qa.head != qa.tail) next = qa.due[qa.head % SLOTS];
        if (qb.head != qb.tail && (next < 0 || qb.due[qb.head % SLOTS] < next))
            next = qb.due[qb.head % SLOTS];
        struct timespec ts, *tp = NULL;
        if (next >= 0) {
            long long wait = next - now; if (wait < 0) wait = 0;
            ts.tv_sec = wait / 1000000000LL; ts.tv_nsec = wait % 1000000000LL; tp = &ts;
        }
        if (ppoll(fds, 2, tp, NULL) < 0 && errno != EINTR) { perror("ppoll"); return 1; }
        now = now_ns();
        if (fds[0].revents & POLLIN) drain(a, &qa, now + delay);
        if (fds[1].revents & POLLIN) drain(b, &qb, now + delay);
    }
}
"""


def build_delayline() -> Path:
    digest = hashlib.sha256(DELAYLINE_C.encode()).hexdigest()[:12]
    binary = Path(tempfile.gettempdir()) / f"fleetboot-delayline-{digest}"
    if not binary.exists():
        if shutil.which("gcc") is None:
            raise SystemExit("the delayed link needs gcc to build its delay line")
        source = binary.with_suffix(".c")
        source.write_text(DELAYLINE_C)
        run(["gcc", "-O2", "-o", str(binary), str(source)])
    return binary


# --- topologies ------------------------------------------------------------------------------


@dataclass
class Link:
    """A server namespace and a client namespace, direct or through the delay line."""

    name: str
    server: Namespace
    client: Namespace
    subnet: str
    closers: list[Callable[[], None]] = field(default_factory=list)

    def ip(self, server: str) -> str:
        return f"{self.subnet}.{HOST_SUFFIX[server]}"

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def direct_link(subnet: str) -> Link:
    lab = Lab.create(subnet=subnet)
    link = Link("direct", lab.server, lab.client, subnet, [lab.close])
    for name, suffix in HOST_SUFFIX.items():
        if name != "fleetboot":
            lab.server.ip("addr", "add", f"{subnet}.{suffix}/24", "dev", lab.server_if)
    return link


def delayed_link(subnet: str, delay_us: int) -> Link:
    binary = build_delayline()
    server, client, mid = (Namespace.create(p) for p in ("fbs", "fbc", "fbm"))
    link = Link("delayed", server, client, subnet, [client.delete, server.delete, mid.delete])
    try:
        mid.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        s_if, ms_if, c_if, mc_if = (unique_name(p) for p in ("vs", "vms", "vc", "vmc"))
        for here, there, ns in ((s_if, ms_if, server), (c_if, mc_if, client)):
            run(["ip", "link", "add", here, "type", "veth", "peer", "name", there])
            run(["ip", "link", "set", here, "netns", ns.name])
            run(["ip", "link", "set", there, "netns", mid.name])
            ns.ip("link", "set", here, "up")
            mid.ip("link", "set", there, "up")
        for suffix in HOST_SUFFIX.values():
            server.ip("addr", "add", f"{subnet}.{suffix}/24", "dev", s_if)
        client.ip("addr", "add", f"{subnet}.2/24", "dev", c_if)
        proc = mid.popen([str(binary), ms_if, mc_if, str(delay_us)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the delay line did not start")

        def stop() -> None:
            proc.kill()
            proc.wait()

        link.closers.append(stop)
        return link
    except BaseException:
        link.close()
        raise


# --- servers ----------------------------------------------------------------------------------


def server_argv(name: str, ip: str, root: Path) -> list[str]:
    if name == "fleetboot":
        return [sys.executable, "-m", "fleetboot.server.tftp", "--root", str(root), "--host", ip,
                "--port", "69", "--max-sessions", "4096"]
    if name == "tftpd-hpa":
        return ["in.tftpd", "--listen", "--address", f"{ip}:69", "--secure", str(root),
                "--foreground"]
    if name == "dnsmasq":
        return ["dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--pid-file=",
                "--bind-interfaces", f"--listen-address={ip}", "--enable-tftp",
                f"--tftp-root={root}", "--tftp-max=4096", "--quiet-tftp", "--user=root",
                "--group=root"]
    return [sys.executable, "-m", "py3tftp", "--host", ip, "-p", "69"]


@contextlib.contextmanager
def servers_running(link: Link, root: Path, names: Sequence[str]) -> Iterator[None]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    procs = []
    try:
        for name in names:
            argv = [*SERVER_PIN, *server_argv(name, link.ip(name), root)]
            procs.append(link.server.popen(argv, cwd=root,
                                           env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        for name in names:
            ok = client_run(link, ["probe", "--server", link.ip(name), "--file", "probe.bin"])
            if not ok.get("ok"):
                raise RuntimeError(f"{name} does not answer on {link.ip(name)}: {ok}")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- clients -----------------------------------------------------------------------------------


def client_run(link: Link, args: list[str], timeout: float = 600) -> dict[str, Any]:
    """Run this script's asyncio client in the client namespace; it prints one JSON line."""
    argv = link.client.exec_argv([*NICE, sys.executable, str(Path(__file__).resolve()), "client",
                                  *args])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": proc.stderr[-500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def timed(argvs: list[list[str]], timeout: float = 900) -> tuple[float, list[int]]:
    """Wall time until the last of the commands exits.

    A blocking ``wait()`` returns the moment a child exits; ``wait(timeout=...)``
    polls with sleeps of up to 50 ms, which would quantise short runs.
    """
    started = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for a in argvs]

    def kill_all() -> None:
        for proc in procs:
            proc.kill()

    killer = threading.Timer(timeout, kill_all)
    killer.start()
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    killer.cancel()
    return wall, codes


def curl(link: Link, server: str, name: str, blksize: int, out: Path) -> list[str]:
    return link.client.exec_argv([*NICE, "curl", "-sS", "--tftp-blksize", str(blksize),
                                  "-o", str(out), f"tftp://{link.ip(server)}/{name}"])


def atftp(link: Link, server: str, name: str, blksize: int, window: int, out: Path) -> list[str]:
    options = ["--option", f"blksize {blksize}"]
    if window > 1:
        options += ["--option", f"windowsize {window}"]
    return link.client.exec_argv([*NICE, "atftp", *options, "-g", "-r", name, "-l", str(out),
                                  link.ip(server)])


# --- scenarios -----------------------------------------------------------------------------------


@dataclass
class Bench:
    root: Path
    out: Path
    sizes: dict[str, int]
    reps: int
    results: dict[tuple[str, str, str], float | None] = field(default_factory=dict)
    failed: dict[tuple[str, str], int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, link: Link, scenario: str, server: str, mbps: float | None) -> None:
        key = (link.name, scenario, server)
        best = self.results.get(key)
        if key not in self.results or (mbps is not None and (best is None or mbps > best)):
            self.results[key] = mbps
        if mbps is None:
            self.notes.append(f"{server} failed {scenario} on the {link.name} link once")
        shown = "FAILED" if mbps is None else f"{mbps:8.2f} MB/s"
        print(f"  {link.name:8s} {scenario:22s} {server:10s} {shown}", flush=True)

    def check(self, out: Path, name: str) -> bool:
        return out.exists() and out.stat().st_size == self.sizes[name] and \
            out.read_bytes() == (self.root / name).read_bytes()

    def single(self, link: Link, server: str, blksize: int) -> None:
        out = self.out / f"a-{server}"
        out.unlink(missing_ok=True)
        wall, codes = timed([curl(link, server, "big.img", blksize, out)])
        ok = codes == [0] and self.check(out, "big.img")
        self.record(link, f"(a) 1x{self.sizes['big.img'] // MiB}MiB bs{blksize}", server,
                    self.sizes["big.img"] / wall / 1e6 if ok else None)

    def parallel(self, link: Link, server: str) -> None:
        outs = [self.out / f"b-{server}-{i}" for i in range(20)]
        for out in outs:
            out.unlink(missing_ok=True)
        wall, codes = timed([curl(link, server, "ten.img", 1468, o) for o in outs])
        ok = all(c == 0 for c in codes) and all(self.check(o, "ten.img") for o in outs)
        self.record(link, f"(b) 20x{self.sizes['ten.img'] // MiB}MiB bs1468", server,
                    20 * self.sizes["ten.img"] / wall / 1e6 if ok else None)

    def thousand(self, link: Link, server: str) -> None:
        crc = zlib.crc32((self.root / "small.img").read_bytes())
        got = client_run(link, ["many", "--server", link.ip(server), "--file", "small.img",
                                "--count", "1000", "--blksize", "1468", "--crc", str(crc)])
        failed = int(got.get("failed", 1000))
        self.failed[(link.name, server)] = self.failed.get((link.name, server), 0) + failed
        mbps = got["bytes"] / got["wall"] / 1e6 if got.get("wall") else None
        self.record(link, "(c) 1000x100KiB bs1468", server, mbps if failed == 0 else None)
        if failed:
            self.notes.append(f"{server} on {link.name}: {failed} of 1000 downloads failed")

    def windowed(self, link: Link, blksize: int, window: int) -> None:
        out = self.out / "d-fleetboot"
        out.unlink(missing_ok=True)
        wall, codes = timed([atftp(link, "fleetboot", "big.img", blksize, window, out)])
        ok = codes == [0] and self.check(out, "big.img")
        label = f"(d) atftp bs{blksize} w{window}"
        self.record(link, label, "fleetboot", self.sizes["big.img"] / wall / 1e6 if ok else None)


def make_files(root: Path, quick: bool) -> dict[str, int]:
    sizes = {"big.img": (8 if quick else 32) * MiB, "ten.img": (2 if quick else 10) * MiB,
             "small.img": 100 * 1024, "probe.bin": 1000}
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # tftpd-hpa and dnsmasq may read as another user
    for name, size in sizes.items():
        path = root / name
        if not path.exists() or path.stat().st_size != size:
            path.write_bytes(os.urandom(size))
        path.chmod(0o644)
    return sizes


def run_link(bench: Bench, link: Link, servers: Sequence[str], reps: int,
             scenarios: str = "abcd") -> None:
    print(f"link {link.name}:", flush=True)
    with servers_running(link, bench.root, servers):
        for blksize in (512, 1468) if "a" in scenarios else ():
            for _ in range(reps):
                for server in servers:
                    bench.single(link, server, blksize)
        for _ in range(reps if "b" in scenarios else 0):
            for server in servers:
                bench.parallel(link, server)
        for _ in range(reps if "c" in scenarios else 0):
            for server in servers:
                bench.thousand(link, server)
        for blksize in (512, 1468) if "d" in scenarios else ():
            for _ in range(reps):
                bench.windowed(link, blksize, 1)
                bench.windowed(link, blksize, 16)


def table(bench: Bench, servers: Sequence[str]) -> str:
    scenarios = sorted({(link, sc) for link, sc, _ in bench.results},
                       key=lambda k: (k[0] != "direct", k[1]))
    head = f"| link | scenario | {' | '.join(servers)} |"
    lines = [head, "|" + "---|" * (len(servers) + 2)]
    for link, scenario in scenarios:
        cells = []
        for server in servers:
            if (link, scenario, server) not in bench.results:
                cells.append("")
                continue
            value = bench.results[(link, scenario, server)]
            cells.append("failed" if value is None else f"{value:.2f}")
        lines.append(f"| {link} | {scenario} | {' | '.join(cells)} |")
    return "\n".join(lines)


def verdicts(bench: Bench, servers: Sequence[str]) -> list[str]:
    out = []
    for (link, scenario, server), value in sorted(bench.results.items()):
        if server != "tftpd-hpa" or scenario.startswith("(d)"):
            continue
        mine = bench.results.get((link, scenario, "fleetboot"))
        ok = mine is not None and (value is None or mine >= value)
        out.append(f"{'PASS' if ok else 'FAIL'} fleetboot >= tftpd-hpa: {link} {scenario} "
                   f"({mine} vs {value})")
    failed = sum(v for (_, s), v in bench.failed.items() if s == "fleetboot")
    out.append(f"{'PASS' if failed == 0 else 'FAIL'} fleetboot failed downloads at 1,000 "
               f"concurrent: {failed}")
    for blksize in (512, 1468):
        lock = bench.results.get(("delayed", f"(d) atftp bs{blksize} w1", "fleetboot"))
        win = bench.results.get(("delayed", f"(d) atftp bs{blksize} w16", "fleetboot"))
        if lock and win:
            ratio = win / lock
            out.append(f"{'PASS' if ratio >= 4 else 'FAIL'} windowsize 16 vs lock-step, delayed, "
                       f"bs{blksize}: {ratio:.1f}x")
    return out


def main_bench(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds network namespaces")
    missing = [t for t in ("curl", "atftp", "in.tftpd", "dnsmasq") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {missing}: run scripts/install-system-deps.sh")
    servers = [s for s in SERVERS if s not in args.skip]
    work = Path(tempfile.mkdtemp(prefix="fleetboot-bench-"))
    out = Path(tempfile.mkdtemp(prefix="fleetboot-bench-out-", dir="/dev/shm"))
    work.chmod(0o755)
    try:
        bench = Bench(work / "root", out, make_files(work / "root", args.quick), args.reps)
        print(f"files: {bench.sizes}; servers: {servers}; pinned: {args.pin}; load average: "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        links: list[Callable[[], Link]] = []
        if "direct" in args.links:
            links.append(lambda: direct_link("10.93.0"))
        if "delayed" in args.links:
            links.append(lambda: delayed_link("10.94.0", args.delay_us))
        for make in links:
            link = make()
            try:
                reps = args.reps if link.name == "direct" else args.delayed_reps
                run_link(bench, link, servers, reps, args.scenarios)
            finally:
                link.close()
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (2 cores, shared machine)")
        print(table(bench, servers))
        print()
        for line in verdicts(bench, servers) + bench.notes:
            print(line)
        b_label = f"(b) 20x{bench.sizes['ten.img'] // MiB}MiB bs1468"
        b = {s: bench.results.get(("delayed", b_label, s)) for s in servers}
        failed = sum(v for (_, s), v in bench.failed.items() if s == "fleetboot")

        def fmt(v: float | None) -> str:
            return "nan" if v is None else f"{v:.2f}"

        print(f"RESULT tftp fleetboot_mbps={fmt(b.get('fleetboot'))} "
              f"tftpd_hpa_mbps={fmt(b.get('tftpd-hpa'))} dnsmasq_mbps={fmt(b.get('dnsmasq'))} "
              f"failed={failed}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


# --- the asyncio client (runs inside the client namespace) ---------------------------------------


class Download:
    """One RRQ, driven by the reader callback and a shared sweeper (RFC 1350 client side)."""

    def __init__(self, client: ManyClient, index: int) -> None:
        self.client = client
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("0.0.0.0", 0))
        self.peer: tuple[str, int] | None = None
        self.expected = 1
        self.since_ack = 0
        self.blksize = 512
        self.window = 1
        self.parts: list[bytes] = []
        self.size = 0
        self.retries = 0
        self.timeout = client.timeout
        self.deadline = 0.0
        self.last_sent = client.request
        self.done = False
        self.error: str | None = None

    def start(self, now: float) -> None:
        self.client.loop.add_reader(self.sock.fileno(), self.on_readable)
        self._send(self.client.request, self.client.server, now)

    def _send(self, packet: bytes, addr: tuple[str, int], now: float) -> None:
        self.last_sent = packet
        self.deadline = now + self.timeout
        with contextlib.suppress(OSError):  # lost: the sweeper will retransmit
            self.sock.sendto(packet, addr)

    def on_readable(self) -> None:
        now = self.client.loop.time()
        for _ in range(64):
            try:
                packet, addr = self.sock.recvfrom(70000)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if self.peer is None:
                self.peer = addr
            elif addr != self.peer:
                continue
            self.retries = 0
            self.timeout = self.client.timeout
            self.handle(packet, now)
            if self.done:
                return

    def handle(self, packet: bytes, now: float) -> None:
        assert self.peer is not None
        opcode = packet[1] if len(packet) >= 4 and packet[0] == 0 else 0
        if opcode == 6:  # OACK
            fields = packet[2:].split(b"\0")
            options = dict(zip(fields[::2], fields[1::2], strict=False))
            self.blksize = int(options.get(b"blksize", b"512"))
            self.window = int(options.get(b"windowsize", b"1"))
            self._send(b"\0\4\0\0", self.peer, now)
        elif opcode == 3:
            block = (packet[2] << 8) | packet[3]
            if block != self.expected & 0xFFFF:
                if (self.expected - 1 - block) & 0xFFFF < 0x8000:  # old: re-ACK what we have
                    self._send(struct.pack("!HH", 4, (self.expected - 1) & 0xFFFF), self.peer, now)
                return
            payload = packet[4:]
            self.parts.append(payload)
            self.size += len(payload)
            self.expected += 1
            self.since_ack += 1
            last = len(payload) < self.blksize
            if last or self.since_ack >= self.window:
                self.since_ack = 0
                self._send(struct.pack("!HH", 4, block), self.peer, now)
            if last:
                self.finish(None)
        elif opcode == 5:
            self.finish(f"error {packet[2:4].hex()}: {packet[4:-1].decode(errors='replace')}")

    def on_timeout(self, now: float) -> None:
        self.retries += 1
        if self.retries > self.client.retries:
            self.finish("timed out")
            return
        self.timeout = min(self.timeout * 2, 4.0)
        self._send(self.last_sent, self.peer or self.client.server, now)

    def finish(self, error: str | None) -> None:
        self.done = True
        self.error = error
        self.client.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.client.finished(self)


class ManyClient:
    def __init__(self, server: str, name: str, options: dict[str, str], count: int,
                 timeout: float = 1.0, retries: int = 8) -> None:
        self.server = (server, 69)
        flat = [s for kv in options.items() for s in kv]
        self.request = b"\0\1" + b"".join(s.encode() + b"\0" for s in [name, "octet", *flat])
        self.count = count
        self.timeout = timeout
        self.retries = retries
        self.active: set[Download] = set()
        self.results: list[Download] = []
        self.loop = asyncio.get_running_loop()
        self.all_done = self.loop.create_future()

    def finished(self, download: Download) -> None:
        self.active.discard(download)
        self.results.append(download)
        if len(self.results) == self.count and not self.all_done.done():
            self.all_done.set_result(None)

    async def run(self) -> float:
        started = self.loop.time()
        downloads = [Download(self, i) for i in range(self.count)]
        self.active.update(downloads)
        for download in downloads:
            download.start(started)
        while not self.all_done.done():
            await asyncio.sleep(0.05)
            now = self.loop.time()
            for download in list(self.active):
                if download.deadline <= now:
                    download.on_timeout(now)
        return self.loop.time() - started


async def client_main(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.count + 256)), hard))
    options = {"blksize": str(args.blksize)} if args.blksize != 512 else {}
    if args.windowsize > 1:
        options["windowsize"] = str(args.windowsize)
    client = ManyClient(args.server, args.file, options, args.count)
    wall = await client.run()
    bad = [d for d in client.results
           if d.error or (args.crc is not None and zlib.crc32(b"".join(d.parts)) != args.crc)]
    errors = sorted({d.error or "bad content" for d in bad})[:5]
    return {"ok": not bad, "wall": wall, "failed": len(bad),
            "bytes": sum(d.size for d in client.results if d not in bad), "errors": errors}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode")
    bench = sub.add_parser("bench", help="the benchmark (default)")
    for p in (parser, bench):
        p.add_argument("--quick", action="store_true", help="8 MiB/2 MiB files, one repetition")
        p.add_argument("--reps", type=int, default=3, help="repetitions on the direct link")
        p.add_argument("--links", nargs="+", default=["direct", "delayed"])
        p.add_argument("--skip", nargs="*", default=[], choices=SERVERS)
        p.add_argument("--delayed-reps", type=int, default=1, help="repetitions, delayed link")
        p.add_argument("--delay-us", type=int, default=500)
        p.add_argument("--pin", action="store_true", help="servers on CPU 1, clients on CPU 0")
        p.add_argument("--scenarios", default="abcd", help="a subset of abcd to run")
    c = sub.add_parser("client", help="the asyncio client, run inside the client namespace")
    c.add_argument("kind", choices=["many", "probe"])
    c.add_argument("--server", required=True)
    c.add_argument("--file", required=True)
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--blksize", type=int, default=512)
    c.add_argument("--windowsize", type=int, default=1)
    c.add_argument("--crc", type=int, default=None)
    args = parser.parse_args(argv)
    if args.mode == "client":
        try:
            import uvloop

            result = uvloop.run(client_main(args))
        except ImportError:
            result = asyncio.run(client_main(args))
        print(json.dumps(result), flush=True)
        return
    if args.quick:
        args.reps = 1
    if args.pin:
        SERVER_PIN[:] = ["taskset", "-c", "1"]
        NICE[:0] = ["taskset", "-c", "0"]
    main_bench(args)


if __name__ == "__main__":
    main()
