"""``GET /v1/self/config`` for 10,000 nodes: Fleetboot against nginx serving the same bytes.

The honest part is identity. Fleetboot tells nodes apart by source address
(bound to a lease) and, for the full document, by the node's per-boot token.
wrk cannot choose source addresses, so the client namespace does it with
nftables: wrk thread j connects to server address 10.77.0.(101+j), whose rule
SNATs every *new connection* to the next address of thread j's share of the
fleet (``numgen inc``, 10.78.0.0/18, routed back by the server). One
connection per thread lets the Lua script (``config_wrk.lua``) know which node
each connection is and send that node's token, which ``cmdline_hook`` issued
exactly as for a real boot. After ``--per-conn`` requests a connection closes
and the next node connects. So every request goes the path a real node's
does, in the production composition (``create_app`` + ``HttpService`` with the
fast-path protocol): raw fast path, proxy-header check, the DHCP server's own
lease table for the real source address, node lookup, token check, ETag,
prepared bytes.

nginx (one worker, ``open_file_cache``) serves the same documents, written
out as static files, chosen by ``$remote_addr``: the same identity by address
(no tokens: nginx cannot check them), the same bytes, the same wrk script.
Both servers are pinned to CPU 0 and wrk to CPU 1; rounds alternate between
the servers and the medians are reported, so other load hits both alike.

Run as root: ``python bench/config.py``; ends with
``RESULT config fleetboot_rps=<n> nginx_rps=<n> p99_ms=<x>``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVER_IP = "10.77.0.1"
DST_PREFIX, DST_FIRST = "10.77.0.", 101
NODE_NET = ipaddress.IPv4Network("10.78.0.0/18")
FLEETBOOT_PORT, NGINX_PORT = 8080, 8081


def node_address(i: int) -> str:
    return str(NODE_NET.network_address + i + 1)


def node_mac(i: int) -> str:
    return f"52:54:01:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


# --- the inventory ------------------------------------------------------------------------


def build_inventory(url: str, nodes: int) -> None:
    """10,000 nodes with a realistic document (~2 KiB): accounts, mounts, files, attributes."""
    from fleetboot.inventory.db import Database
    from fleetboot.inventory.models import Interface, Node
    from fleetboot.nodeconfig import store

    db = Database(url)
    db.create_schema()
    with db.session() as s:
        s.add_all(Node(name=f"n{i:05d}", attributes={"rack": f"r{i // 40:03d}", "slot": i % 40},
                       interfaces=[Interface(mac=node_mac(i), name="eth0", is_boot=True)])
                  for i in range(nodes))
        keys = [f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{n * 40} {n}@ops" for n in "abc"]
        store.set_section(s, None, "accounts", [
            {"name": "ops", "uid": 1000, "groups": ["wheel", "adm"], "ssh_keys": keys},
            {"name": "ci", "uid": 1001, "groups": ["docker"], "ssh_keys": keys[:1]}])
        store.set_section(s, None, "mounts", [
            {"source": "nfs1:/export/home", "target": "/home", "options": "rw,hard"},
            {"source": "nfs1:/export/proj", "target": "/proj", "options": "ro"}])
        store.set_section(s, None, "routes", [{"destination": "10.200.0.0/16",
                                               "gateway": "10.78.0.1"}])
        store.set_section(s, None, "files", [
            {"path": "/etc/motd", "content_b64": "V2VsY29tZSB0byB0aGUgZmxlZXQuCg=="},
            {"path": "/usr/local/bin/agent", "url": "http://10.77.0.1:8080/boot/files/agent",
             "sha256": "ab" * 32, "mode": "0755"}])
        store.set_section(s, None, "tarballs", [
            {"url": "http://10.77.0.1:8080/boot/files/tools.tgz", "sha256": "cd" * 32,
             "dest": "/opt"}])
        store.set_section(s, None, "startup", {"command": "/usr/local/bin/agent --join"})
    db.dispose()


# --- the server process (runs inside the server namespace) --------------------------------


def serve(args: argparse.Namespace) -> None:
    """The production composition: the HTTP boot app with node-config's routes, run by
    ``HttpService`` with node-config's fast-path protocol stacked on the zero-copy one."""
    from sqlalchemy import select

    from fleetboot.config import HttpConfig, Settings
    from fleetboot.inventory.db import Database
    from fleetboot.inventory.models import Node
    from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
    from fleetboot.server.http import HttpService, create_app
    from fleetboot.server.runtime import freeze_startup_objects, tune_gc_for_packets

    out = Path(args.out)
    db = Database(args.db)
    settings = Settings(server_address=SERVER_IP, boot_root=str(out / "bootroot"),
                        http=HttpConfig(port=FLEETBOOT_PORT))
    (out / "bootroot").mkdir(exist_ok=True)
    tune_gc_for_packets()  # as `fleetboot serve` does

    async def main() -> None:
        with db.session() as s:
            rows = s.execute(select(Node.id, Node.name).order_by(Node.name)).all()
        directory = dhcp_leases(len(rows))
        service = NodeConfigService(db, directory, NodeConfigSettings.from_settings(settings),
                                    admin_token=args.admin)
        await service.start()
        tokens = issue_tokens(service, rows, out)
        await service.writer.flush()
        app = create_app(settings, db, directory, service.sink, extra_routes=service.routes(),
                         cmdline_hook=service.cmdline_hook)
        if args.path == "raw":
            http = HttpService.from_settings(app, settings, protocol=service.http_protocol())
        else:  # the ASGI fast path only: what any ASGI server would give
            http = HttpService.from_settings(service.wrap(app), settings)
        await http.start()
        freeze_startup_objects()  # as Runtime.start does in `fleetboot serve`
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"READY render_s={service.view.render_s:.2f} tokens={len(tokens)} "
              f"loop={args.loop} path={args.path} "
              f"protocol={getattr(http.protocol, '__name__', http.protocol)}", flush=True)
        await stop.wait()
        await http.stop()
        await service.stop()

    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def dhcp_leases(nodes: int) -> Any:
    """The DHCP server's own lease table behind the identity resolver, holding one bound
    lease per node: the lookup every request makes is the production one (the nodes are
    routed here, so the resolver asks the kernel for the route and keeps the lease)."""
    from fleetboot.identity.core import LinkBook
    from fleetboot.identity.neighbours import NeighbourTable
    from fleetboot.identity.resolver import IdentityResolver
    from fleetboot.protocols.dhcp.leases import BOUND, Lease, LeaseTable
    from fleetboot.protocols.dhcp.options import ip_int
    from fleetboot.server.dhcp import OwnLeases, all_interfaces

    table = LeaseTable()
    expires = time.time() + 86400
    table.load(Lease(ip_int(node_address(i)), bytes.fromhex(node_mac(i).replace(":", "")),
                     BOUND, expires, 1) for i in range(nodes))
    return IdentityResolver(proxy=False, leases=OwnLeases(table), book=LinkBook(),
                            neighbours=NeighbourTable(all_interfaces()))


def issue_tokens(service: Any, rows: Any, out: Path) -> list[str]:
    """Each node's per-boot token, issued as its iPXE script would; and nginx's copies."""
    docroot = out / "docroot" / "by-addr"
    docroot.mkdir(parents=True, exist_ok=True)
    tokens = []
    for i, (node_id, _name) in enumerate(rows):

        class Ref:
            id = node_id

        cmdline = service.cmdline_hook(Ref(), node_mac(i), node_address(i))
        tokens.append(next(a[16:] for a in cmdline.split() if a.startswith("fleetboot.token=")))
        (docroot / f"{node_address(i)}.json").write_bytes(service.view.by_id[node_id].full.body)
    (out / "tokens.txt").write_text("\n".join(tokens) + "\n")
    return tokens


# --- the lab ------------------------------------------------------------------------------


def nft_rules(nodes: int, threads: int) -> str:
    """Thread j's connections to 10.77.0.(101+j) leave from j's nodes, one per connection."""
    lines = ["flush ruleset", "table ip fbbench {", " chain post {",
             "  type nat hook postrouting priority srcnat; policy accept;"]
    for j in range(threads):
        mine = list(range(j, nodes, threads))
        pairs = ", ".join(f"{k} : {node_address(i)}" for k, i in enumerate(mine))
        lines.append(f"  ip daddr {DST_PREFIX}{DST_FIRST + j} tcp dport {{ {FLEETBOOT_PORT}, "
                     f"{NGINX_PORT} }} counter snat to numgen inc mod {len(mine)} "
                     f"map {{ {pairs} }}")
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def nginx_conf(tmp: Path) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60;
  open_file_cache max=20000 inactive=60s;
  client_body_temp_path {tmp}/nginx-body;
  server {{
    listen {NGINX_PORT} backlog=4096;
    location = /v1/self/config {{
      default_type application/json;
      root {tmp}/docroot;
      try_files /by-addr/$remote_addr.json =403;
    }}
  }}
}}
""")
    return conf


@dataclass
class Run:
    server: str
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: dict[str, int]
    cpu_us: float = 0.0  # server CPU time per request: a capacity figure other load barely moves


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their children threads (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def parse_wrk(server: str, output: str) -> Run:
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    f = {k: int(v) for k, v in (w.split("=") for w in line.split()[1:])}
    return Run(server, f["requests"] / (f["duration_us"] / 1e6), f["p50_us"] / 1000,
               f["p99_us"] / 1000, f["max_us"] / 1000, f["requests"],
               {k: f[k] for k in ("connect", "read", "write", "status", "timeout")})


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from fleetboot.lab import netns

        self.args, self.tmp = args, tmp
        self.lab = netns.Lab.create()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._window = 0
        self.admin = secrets.token_urlsafe(16)

    def network(self) -> None:
        lab, a = self.lab, self.args
        for j in range(a.threads):
            lab.server.ip("addr", "add", f"{DST_PREFIX}{DST_FIRST + j}/24", "dev", lab.server_if)
        lab.server.ip("route", "add", str(NODE_NET), "via", lab.client_ip)
        (self.tmp / "rules.nft").write_text(nft_rules(a.nodes, a.threads))
        self.reset_nat()

    def reset_nat(self) -> None:
        """Restart the SNAT sequence where the Lua script starts: every counter at 0.

        Reloading the rules zeroes the numgen counters. Conntrack remembers the
        connections of the previous run, and a new connection that reused a
        client port still tracked there would keep its old mapping without
        consulting the rules; a fresh ephemeral port window per run avoids that.
        """
        self.lab.client.run(["nft", "-f", str(self.tmp / "rules.nft")])
        low = 16384 + (self._window % 9) * 5000
        self._window += 1
        self.lab.client.run(["sysctl", "-qw", f"net.ipv4.ip_local_port_range={low} {low + 4999}"])

    def start_servers(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
        server = self.lab.server.popen(
            ["taskset", "-c", "0", sys.executable, str(Path(__file__).resolve()), "--serve",
             "--db", self.args.db_url, "--out", str(self.tmp), "--admin", self.admin,
             "--loop", self.args.loop, "--path", self.args.path],
            stdout=subprocess.PIPE, env=env)
        self.procs.append(server)
        assert server.stdout is not None
        ready = server.stdout.readline().decode().strip()
        if not ready.startswith("READY"):
            raise RuntimeError(f"the Fleetboot server did not start: {ready!r}")
        (self.tmp / "nginx-body").mkdir(exist_ok=True)
        self.procs.append(self.lab.server.popen(
            ["taskset", "-c", "0", "nginx", "-c", str(nginx_conf(self.tmp)),
             "-e", str(self.tmp / "nginx-error.log")]))
        time.sleep(1.0)
        return ready

    def server_pids(self, server: str) -> list[int]:
        """The Fleetboot process, or nginx's master and worker."""
        proc = self.procs[0 if server == "fleetboot" else 1]
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        kids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [proc.pid, *kids]

    def curl(self, port: int, token: str) -> tuple[int, str]:
        url = f"http://{DST_PREFIX}{DST_FIRST}:{port}/v1/self/config"
        done = self.lab.client.run(["curl", "-s", "-o", "/dev/stdout", "-w", "\n%{http_code}",
                                    "-H", f"X-Fleetboot-Token: {token}", url], check=False)
        body, _, code = done.stdout.rpartition("\n")
        self.reset_nat()
        return int(code or 0), body

    def sanity(self, tokens: list[str]) -> None:
        """Node 0's first connection: the right document, from both servers; a wrong token fails."""
        fb_code, fb = self.curl(FLEETBOOT_PORT, tokens[0])
        ng_code, ng = self.curl(NGINX_PORT, tokens[0])
        bad_code, _ = self.curl(FLEETBOOT_PORT, tokens[1])
        if (fb_code, ng_code, bad_code) != (200, 200, 401) or fb != ng or '"n00000"' not in fb:
            raise RuntimeError(f"sanity check failed: fleetboot {fb_code}, nginx {ng_code}, "
                               f"wrong token {bad_code}")

    def wrk(self, port: int, seconds: float) -> str:
        a = self.args
        env = {**os.environ, "FB_TOKENS": str(self.tmp / "tokens.txt"), "FB_NODES": str(a.nodes),
               "FB_THREADS": str(a.threads), "FB_PER_CONN": str(a.per_conn),
               "FB_DST_PREFIX": DST_PREFIX, "FB_DST_FIRST": str(DST_FIRST), "FB_PORT": str(port),
               "FB_WITHOUT_TOKEN": "1" if a.without_token else "0"}
        self.reset_nat()
        argv = self.lab.client.exec_argv([
            "taskset", "-c", "1", "wrk", "-t", str(a.threads), "-c", str(a.threads),
            "-d", f"{seconds:.0f}s", "--timeout", "5s", "--latency",
            "-s", str(HERE / "config_wrk.lua"),
            # wrk test-connects to the URL's host first: an address without a SNAT rule,
            # or that probe would take thread 0's first node
            f"http://{SERVER_IP}:{port}/v1/self/config"])
        return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout

    def stats(self) -> dict[str, Any]:
        """The server's own counters, from its admin API."""
        done = self.lab.server.run([
            "curl", "-s", "-H", f"Authorization: Bearer {self.admin}",
            f"http://127.0.0.1:{FLEETBOOT_PORT}/v1/admin/nodeconfig/stats"], check=False)
        try:
            return dict(json.loads(done.stdout))
        except ValueError:
            return {}

    def close(self) -> dict[str, Any]:
        stats = self.stats()
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.lab.close()
        return stats


def check_tools() -> None:
    if os.geteuid() != 0:
        sys.exit("bench/config.py needs root (network namespaces, nftables)")
    missing = [t for t in ("wrk", "nginx", "nft", "taskset", "curl") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run scripts/install-system-deps.sh")


def run_bench(args: argparse.Namespace) -> None:
    check_tools()
    with tempfile.TemporaryDirectory(prefix="fb-config-bench-") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)  # nginx's worker (www-data) reads the documents from here
        args.db_url = f"sqlite:///{tmp}/bench.db"
        started = time.monotonic()
        build_inventory(args.db_url, args.nodes)
        print(f"inventory: {args.nodes} nodes in {time.monotonic() - started:.1f} s", flush=True)
        bench = Bench(args, tmp)
        runs: list[Run] = []
        try:
            bench.network()
            print(f"server: {bench.start_servers()}", flush=True)
            tokens = (tmp / "tokens.txt").read_text().split()
            bench.sanity(tokens)
            for _ in range(args.rounds):
                for server, port in (("fleetboot", FLEETBOOT_PORT), ("nginx", NGINX_PORT)):
                    bench.wrk(port, args.warmup)
                    pids = bench.server_pids(server)
                    cpu = cpu_seconds(pids)
                    run = parse_wrk(server, bench.wrk(port, args.duration))
                    run.cpu_us = (cpu_seconds(pids) - cpu) / max(run.requests, 1) * 1e6
                    runs.append(run)
                    print(f"{server:9} {run.rps:9.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                          f"p99 {run.p99_ms:6.2f} ms  max {run.max_ms:7.2f} ms  "
                          f"cpu {run.cpu_us:5.1f} us/req  errors {run.errors}", flush=True)
        finally:
            stats = bench.close()
    report(args, runs, stats)


def report(args: argparse.Namespace, runs: list[Run], stats: dict[str, Any]) -> None:
    def median(server: str, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs if r.server == server))

    fb, ng = median("fleetboot", "rps"), median("nginx", "rps")
    p99, ng_p99 = median("fleetboot", "p99_ms"), median("nginx", "p99_ms")
    worst = max(r.p99_ms for r in runs if r.server == "fleetboot")
    errors = sum(sum(r.errors.values()) for r in runs)
    print(f"\n{args.nodes} nodes, {args.threads} connections (one node each, "
          f"{args.per_conn} requests, then the next node), {args.rounds} alternating round(s) "
          f"of {args.duration:.0f} s, loop {args.loop}, {args.path} path"
          f"{', no token' if args.without_token else ''}; medians of rounds")
    fb_cpu, ng_cpu = median("fleetboot", "cpu_us"), median("nginx", "cpu_us")
    print(f"fleetboot {fb:.0f} req/s (p99 {p99:.2f} ms, worst round {worst:.2f} ms), "
          f"nginx {ng:.0f} req/s (p99 {ng_p99:.2f} ms): fleetboot/nginx = {fb / ng:.0%}")
    print(f"server CPU per request: fleetboot {fb_cpu:.1f} us, nginx {ng_cpu:.1f} us: "
          f"one core's capacity ratio = {ng_cpu / fb_cpu:.0%}" if fb_cpu > 0 else "")
    print(f"request errors (both servers) = {errors}; server: {stats.get('fetches', '?')} "
          f"answered, denied {stats.get('denied', '?')}, {args.nodes} documents rendered in "
          f"{stats.get('render_s', 0):.2f} s, timeline rows {stats.get('timeline_written')}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} CPUs; other jobs make every figure noisier)")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"RESULT config fleetboot_rps={fb:.0f} nginx_rps={ng:.0f} p99_ms={p99:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=16,
                        help="wrk threads = connections = nodes connected at once")
    parser.add_argument("--per-conn", type=int, default=100,
                        help="requests per connection before the next node connects")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop",
                        help="the server's event loop (uvloop: what `fleetboot serve` runs)")
    parser.add_argument("--path", choices=("raw", "asgi"), default="raw",
                        help="raw: the uvicorn protocol fast path; asgi: the ASGI middleware")
    parser.add_argument("--without-token", action="store_true",
                        help="send no token: nodes known by address alone (the public "
                             "document); for --per-conn 1, where conntrack cannot keep the "
                             "token pairing exact at thousands of new connections a second")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--admin", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
    else:
        if not 1 <= args.threads <= 150 or args.nodes < args.threads:
            parser.error("--threads must be 1..150 and at most --nodes")
        if args.nodes > NODE_NET.num_addresses - 2:
            parser.error(f"at most {NODE_NET.num_addresses - 2} nodes")
        run_bench(args)


if __name__ == "__main__":
    main()
