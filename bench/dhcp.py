#!/usr/bin/env python3
"""DHCPv4 throughput: Fleetboot against Kea and dnsmasq, measured the same way in one run.

Each server runs in the server namespace of a ``fleetboot.lab.netns.Lab``;
ISC's ``perfdhcp`` runs in the client namespace and, talking to the server's
unicast address over the veth pair, acts as a relay (giaddr 10.77.0.2), so the
served subnet 10.64.0.0/12 contains it. Every server keeps its leases on disk:
Fleetboot in SQLite (WAL, ACK only after the commit), Kea in its memfile with
``persist: true``, dnsmasq in its lease file (``--no-ping``).

ISC's method: raise the offered rate until drops pass 2.5% and report the
highest clean rate of 4-way exchanges (DISCOVER-OFFER-REQUEST-ACK) per second.
Each rate step starts the server afresh with an empty lease database. The
servers' searches take turns step by step, and a step that fails is run once
more before it counts as failed: the machine is shared, and a busy spell should
neither decide the result nor fall on one server only.

    sudo .venv/bin/python bench/dhcp.py            # about 4-5 minutes
    sudo .venv/bin/python bench/dhcp.py --servers fleetboot --duration 3

Ends with ``RESULT dhcp fleetboot=<n> kea=<n> dnsmasq=<n>`` (exchanges/s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Pool, Subnet
from fleetboot.lab.netns import Lab, stop_process

CIDR, MASK = "10.64.0.0/12", "255.240.0.0"
POOL = ("10.64.0.10", "10.76.255.254")  # ~850,000 addresses: never the limit here
LEASE_S = 3600
DROP_LIMIT = 2.5  # percent, ISC's threshold
START = {"fleetboot": 2000, "kea": 2000, "dnsmasq": 100}


@dataclass
class Step:
    offered: int
    rate: float  # 4-way exchanges per second perfdhcp achieved
    drops: float  # the worse of the two drop ratios, percent
    clean: bool
    extra: str = ""


@dataclass
class Outcome:
    server: str
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        clean = [s for s in self.steps if s.clean]
        return max(clean, key=lambda s: s.rate) if clean else None


# --- the servers --------------------------------------------------------------------------

Starter = Callable[[Lab, Path], subprocess.Popen[bytes]]


def fleetboot_template(root: Path) -> Path:
    """One migrated inventory with the benchmark subnet, copied for every step."""
    path = root / "template.db"
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    with db.session() as s:
        subnet = Subnet(name="bench", cidr=CIDR, router="10.77.0.1", dns_servers=["10.77.0.1"],
                        lease_seconds=LEASE_S)
        subnet.pools = [Pool(start=POOL[0], end=POOL[1])]
        s.add(subnet)
    db.dispose()
    return path


def start_fleetboot(lab: Lab, work: Path, template: Path) -> subprocess.Popen[bytes]:
    shutil.copyfile(template, work / "fleetboot.db")
    settings = {"interfaces": [lab.server_if]}
    argv = [sys.executable, "-m", "fleetboot.server.dhcp", "--db",
            f"sqlite:///{work / 'fleetboot.db'}", "--settings", json.dumps(settings),
            "--stats", str(work / "stats.json")]
    return _spawn(lab, work, argv)


def start_kea(lab: Lab, work: Path) -> subprocess.Popen[bytes]:
    config = {"Dhcp4": {
        "interfaces-config": {"interfaces": [lab.server_if], "dhcp-socket-type": "udp"},
        "lease-database": {"type": "memfile", "persist": True,
                           "name": str(work / "kea-leases4.csv"), "lfc-interval": 0},
        "valid-lifetime": LEASE_S, "renew-timer": LEASE_S // 2,
        "rebind-timer": LEASE_S * 7 // 8,
        "subnet4": [{"id": 1, "subnet": CIDR, "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}],
                     "option-data": [{"name": "routers", "data": "10.77.0.1"},
                                     {"name": "domain-name-servers", "data": "10.77.0.1"}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(work / "kea.log")}]}],
    }}
    (work / "kea.json").write_text(json.dumps(config))
    env = {**os.environ, "KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)}
    return _spawn(lab, work, ["kea-dhcp4", "-c", str(work / "kea.json")], env)


def start_dnsmasq(lab: Lab, work: Path) -> subprocess.Popen[bytes]:
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--no-resolv", "--no-hosts", "--no-ping", "--dhcp-authoritative",
            f"--interface={lab.server_if}", f"--pid-file={work / 'dnsmasq.pid'}",
            f"--dhcp-leasefile={work / 'dnsmasq.leases'}",
            f"--dhcp-range={POOL[0]},{POOL[1]},{MASK},{LEASE_S}",
            "--dhcp-option=option:router,10.77.0.1", "--dhcp-lease-max=1000000",
            "--log-facility=" + str(work / "dnsmasq.log")]
    return _spawn(lab, work, argv)


def _spawn(lab: Lab, work: Path, argv: list[str],
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(work / "server.out", "ab")  # noqa: SIM115 - handed to the child
    proc = lab.server.popen(argv, stdout=log, stderr=log, env=env)
    log.close()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, timeout_s=15)


# --- perfdhcp -----------------------------------------------------------------------------

def perfdhcp(lab: Lab, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return lab.client.run(["timeout", str(int(timeout)), "perfdhcp", "-4", "-l", lab.client_if,
                           *args, lab.server_ip], check=False)


def wait_ready(lab: Lab, proc: subprocess.Popen[bytes], work: Path) -> None:
    """A second of light load that completes exchanges proves the server answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = (work / "server.out").read_text(errors="replace")
            raise SystemExit(f"server exited during start-up:\n{out[-2000:]}")
        run = perfdhcp(lab, "-r", "20", "-p", "1", "-R", "1000000000", timeout=10)
        acks = re.findall(r"received packets: (\d+)", run.stdout)[1:]
        if acks and int(acks[0]) > 0:
            return
        time.sleep(0.2)
    raise SystemExit("server did not answer within 30 s")


def udp_errors(lab: Lab) -> tuple[int, int]:
    """UDP receive-buffer overflows so far in the server and the client namespace."""
    counts = []
    for ns in (lab.server, lab.client):
        lines = [line.split() for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
                 if line.startswith("Udp:")]
        counts.append(int(lines[1][lines[0].index("RcvbufErrors")]))
    return counts[0], counts[1]


def parse(output: str, seconds: int) -> tuple[float, float]:
    """(completed 4-way exchanges per second, worse drop ratio in percent).

    The rate is ACKs received over the sending period: perfdhcp's own "Rate:" also
    divides by the -W wait after the period, which would understate every server.
    """
    received = [int(n) for n in re.findall(r"received packets: (\d+)", output)]
    drops = [float(d) for d in re.findall(r"drops ratio: ([\d.]+) %", output)]
    if len(received) < 2 or len(drops) < 2:
        return 0.0, 100.0
    return received[1] / seconds, max(drops)


def measure(lab: Lab, start: Starter, rate: int, seconds: int, root: Path) -> Step:
    work = Path(tempfile.mkdtemp(dir=root))
    proc = start(lab, work)
    try:
        wait_ready(lab, proc, work)
        before = udp_errors(lab)
        # -W: after the period, wait 0.5 s for answers still on their way (no new
        # requests), so in-flight replies are not counted as drops for any server.
        run = perfdhcp(lab, "-r", str(rate), "-R", "1000000000", "-p", str(seconds),
                       "-W", "500000", timeout=seconds + 60)
        after = udp_errors(lab)
    finally:
        stop(proc)
    achieved, drops = parse(run.stdout, seconds)
    lost = [a - b for a, b in zip(after, before, strict=True)]
    extra = f"[socket overflows: server {lost[0]}, perfdhcp {lost[1]}] " if any(lost) else ""
    stats = work / "stats.json"
    if stats.exists():
        counters = json.loads(stats.read_text())
        batches = counters.get("dhcp.journal.batches", 0)
        if batches:
            extra += (f"{counters.get('dhcp.journal.records', 0) / batches:.0f} leases/commit, "
                     f"max commit {counters.get('dhcp.journal.commit_us_max', 0) / 1000:.0f} ms")
    shutil.rmtree(work, ignore_errors=True)
    return Step(rate, achieved, drops, drops <= DROP_LIMIT, extra)


def measure_twice(lab: Lab, start: Starter, rate: int, seconds: int, root: Path) -> Step:
    step = measure(lab, start, rate, seconds, root)
    if not step.clean:
        again = measure(lab, start, rate, seconds, root)
        step = again if again.clean or again.rate > step.rate else step
    print(f" offered {rate:>6}/s: {step.rate:8.0f}/s, drops {step.drops:5.2f}%"
          f" {'clean' if step.clean else 'DROPS'} {step.extra}", flush=True)
    return step


RateSearch = Generator[int, Step, None]


def rate_search(first: int, bisect: int) -> RateSearch:
    """ISC's method as a generator: yields the next offered rate, receives its Step.

    Raise the rate by half again while clean; on the first failure bisect between
    the last clean and the failing rate. If even the first rate fails, halve it
    until one is clean, so a slow server still gets a figure.
    """
    rate, good, bad = first, 0, 0
    while not bad and rate <= 200_000:
        step = yield rate
        if step.clean:
            good, rate = rate, int(rate * 1.5)
        else:
            bad = rate
    while not good and rate > 25:
        rate //= 2
        step = yield rate
        if step.clean:
            good = rate
        else:
            bad = rate
    for _ in range(bisect if good and bad else 0):
        rate = (good + bad) // 2
        step = yield rate
        good, bad = (rate, bad) if step.clean else (good, rate)


def run_all(lab: Lab, starters: dict[str, Starter], names: list[str], seconds: int, root: Path,
            bisect: int) -> list[Outcome]:
    """Step the servers' searches in turn, so a busy spell on this shared machine falls
    on all of them rather than on whichever server happened to run then."""
    outcomes = {name: Outcome(name) for name in names}
    searches: dict[str, tuple[RateSearch, int]] = {}
    for name in names:
        search = rate_search(START[name], bisect)
        searches[name] = (search, next(search))
    while searches:
        for name in list(searches):
            search, rate = searches[name]
            print(f"{name:<10}", end="", flush=True)
            step = measure_twice(lab, starters[name], rate, seconds, root)
            outcomes[name].steps.append(step)
            try:
                searches[name] = (search, search.send(step))
            except StopIteration:
                del searches[name]
    return [outcomes[name] for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="fleetboot,kea,dnsmasq")
    parser.add_argument("--duration", type=int, default=5, help="seconds per perfdhcp run")
    parser.add_argument("--bisect", type=int, default=2, help="refining steps after the ramp")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark creates network namespaces")
    for tool in ("perfdhcp", "kea-dhcp4", "dnsmasq"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} missing: run scripts/install-system-deps.sh")
    root = Path(tempfile.mkdtemp(prefix="fb-bench-dhcp-"))
    template = fleetboot_template(root)
    starters: dict[str, Starter] = {
        "fleetboot": lambda lab, work: start_fleetboot(lab, work, template),
        "kea": start_kea,
        "dnsmasq": start_dnsmasq,
    }
    started = time.monotonic()
    try:
        with Lab.create() as lab:
            outcomes = run_all(lab, starters, args.servers.split(","), args.duration, root,
                               args.bisect)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'server':<10} {'best clean rate':>16} {'drops':>7} {'offered':>8} {'steps':>6}")
    results = {}
    for out in outcomes:
        best = out.best
        results[out.server] = int(best.rate) if best else 0
        if best is None:
            print(f"{out.server:<10} {'none clean':>16} {'':>7} {'':>8} {len(out.steps):>6}")
        else:
            print(f"{out.server:<10} {best.rate:>14.0f}/s {best.drops:>6.2f}% "
                  f"{best.offered:>8} {len(out.steps):>6}")
    print(f"(perfdhcp -p {args.duration}; {time.monotonic() - started:.0f} s in all)")
    print("RESULT dhcp " + " ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
