"""A boot storm (``bench/storm.py``'s Fleetboot stack) with and without operators watching:
five web views (page data, then the live event stream) and the management API polled
at 50 requests/s (``bench/api_observers.py``, in the server's namespace, over loopback).
Rounds alternate quiet / watched, so other load on the machine hits both alike; the
medians are compared. Target: the watched storm within 5 % of the quiet one, still 0
failed and 0 retries.

Run as root: ``python bench/api_storm.py [--nodes 1000] [--rounds 2]``; ends with
``RESULT api_storm n=<N> quiet_s=<x> watched_s=<x> slower_pct=<x> failed=<n>
retries=<n> api_requests=<n> api_errors=<n> api_p99_ms=<x>``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fleetboot.storm.fleetboot_stack import FleetbootStack
from fleetboot.storm.plan import KiB, MiB, Payload, make_plan
from fleetboot.storm.runner import StackRun, simulate_in
from fleetboot.storm.stacks import StormFiles
from fleetboot.storm.stats import NodeResult
from fleetboot.storm.topology import StormNet

HERE = Path(__file__).resolve().parent


def one_storm(plan: Any, files: StormFiles, workdir: Path, watched: bool) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with StormNet.create(plan.network) as net:
        stack = FleetbootStack(plan, files, workdir)
        observers = None
        try:
            stack.start(net)
            if watched:
                secret = stack._cli("token", "create", "watch", "--role", "viewer").split()[-1]
                url = f"http://127.0.0.1:{stack.http_port}"
                observers = net.server.popen(
                    [sys.executable, str(HERE / "api_observers.py"), url, secret],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                assert observers.stdout is not None
                ready = observers.stdout.readline().decode().strip()
                if ready != "READY":
                    raise SystemExit(f"observers did not start: {observers.stderr.read()!r}")  # type: ignore[union-attr]
            output = simulate_in(net, plan.for_stack("fleetboot", stack.http_port), workdir)
            watch: dict[str, Any] = {}
            if observers is not None:
                observers.send_signal(signal.SIGTERM)
                out, _ = observers.communicate(timeout=30)
                watch = json.loads(out.decode().strip().splitlines()[-1])
        finally:
            if observers is not None and observers.poll() is None:
                observers.kill()
                observers.wait()
            stack.stop()
    run = StackRun("fleetboot", plan, [NodeResult.from_dict(n) for n in output["nodes"]],
                   output.get("client", {}), {})
    s = run.summary
    return {"storm_s": s.storm_s, "failed": s.failed, "retries": s.retries, "watch": watch,
            "load": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=float, default=0.0)
    parser.add_argument("--kernel-mib", type=float, default=4.0)
    parser.add_argument("--initrd-mib", type=float, default=4.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/api_storm.py creates network namespaces: run it as root", file=sys.stderr)
        return 2
    payload = Payload(bootfile=100 * KiB, kernel=int(args.kernel_mib * MiB),
                      initrd=int(args.initrd_mib * MiB))
    plan = make_plan(args.nodes, args.window, 1, payload=payload)
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="fleetboot-api-storm-") as tmp:
        files = StormFiles.create(Path(tmp) / "files", plan)
        for k in range(args.rounds):
            for watched in (False, True):
                r = one_storm(plan, files, Path(tmp) / f"r{k}-{int(watched)}", watched)
                runs[watched].append(r)
                print(f"round {k} {'watched' if watched else 'quiet  '}: "
                      f"storm {r['storm_s']:.2f} s, failed {r['failed']}, "
                      f"retries {r['retries']}, load {r['load'][0]:.1f}"
                      + (f", api {r['watch']}" if watched else ""), flush=True)
    quiet = statistics.median(r["storm_s"] for r in runs[False])
    watched_s = statistics.median(r["storm_s"] for r in runs[True])
    failed = sum(r["failed"] for r in runs[True])
    retries = sum(r["retries"] for r in runs[True])
    api = [r["watch"] for r in runs[True]]
    print(f"RESULT api_storm n={args.nodes} quiet_s={quiet:.2f} watched_s={watched_s:.2f} "
          f"slower_pct={100 * (watched_s - quiet) / quiet:.1f} failed={failed} "
          f"retries={retries} api_requests={sum(a['requests'] for a in api)} "
          f"api_errors={sum(a['errors'] for a in api)} "
          f"api_p99_ms={max(a['p99_ms'] for a in api):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
