"""One storm against one stack, end to end, and the storm of several stacks.

For each stack: a fresh pair of namespaces, the stack started in the server
namespace, the simulator process run in the client namespace, counters read
from both, everything torn down again (also on failure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetboot.errors import FleetbootError
from fleetboot.storm.plan import StackKind, StormPlan
from fleetboot.storm.stacks import ClassicStack, Stack, StormFiles
from fleetboot.storm.stats import NodeResult, StormSummary, summarize
from fleetboot.storm.topology import StormNet


class StormError(FleetbootError):
    pass


@dataclass
class StackRun:
    kind: str
    plan: StormPlan
    results: list[NodeResult]
    client: dict[str, Any] = field(default_factory=dict)  # simulator health counters
    server: dict[str, Any] = field(default_factory=dict)  # the stack's own counters

    @property
    def tcp_retransmissions(self) -> int:
        return int(self.client.get("kernel.Tcp.RetransSegs", 0))

    @property
    def summary(self) -> StormSummary:
        # A TCP segment the simulated node had to send again is a retransmission too.
        return summarize(self.results, extra_retries=self.tcp_retransmissions)

    @property
    def simulator_drops(self) -> int:
        """Packets lost inside the simulator itself: a storm with these is not trustworthy."""
        return int(self.client.get("raw_socket_drops", 0)) + int(
            self.client.get("kernel.Udp.RcvbufErrors", 0))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "plan": self.plan.to_dict(),
                "nodes": [r.to_dict() for r in self.results],
                "client": self.client, "server": self.server}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackRun:
        return cls(data["kind"], StormPlan.from_dict(data["plan"]),
                   [NodeResult.from_dict(n) for n in data["nodes"]],
                   data.get("client", {}), data.get("server", {}))


def make_stack(kind: StackKind, plan: StormPlan, files: StormFiles, workdir: Path,
               fleetboot_settings: dict[str, Any] | None = None) -> Stack:
    """``fleetboot_settings``: dotted configuration keys over the stack's own file."""
    if kind == "classic":
        return ClassicStack(plan, files, workdir)
    if kind == "fleetboot":
        from fleetboot.storm.fleetboot_stack import FleetbootStack

        return FleetbootStack(plan, files, workdir, overrides=dict(fleetboot_settings or {}))
    if kind == "proxy":
        from fleetboot.storm.proxy_stack import ProxyStack

        return ProxyStack(plan, files, workdir, overrides=dict(fleetboot_settings or {}))
    raise StormError(f"unknown stack {kind!r}; choose classic, fleetboot or proxy")


def time_limit(plan: StormPlan) -> float:
    """A generous bound on one storm: the window plus every schedule run out."""
    t = plan.timing
    dhcp = sum(t.pxe_discover) + sum(t.pxe_request) + 2 * sum(t.ipxe_dhcp) + 2 * sum(t.os_dhcp)
    return plan.window_s + dhcp + 2 * sum(t.tftp) + 6 * t.http_idle_s + 300


def run_stack(plan: StormPlan, kind: StackKind, workdir: Path, files: StormFiles,
              progress: bool = False,
              fleetboot_settings: dict[str, Any] | None = None) -> StackRun:
    workdir = workdir / kind
    workdir.mkdir(parents=True, exist_ok=True)
    with StormNet.create(plan.network) as net:
        stack = make_stack(kind, plan, files, workdir, fleetboot_settings)
        try:
            stack.start(net)
            run_plan = plan.for_stack(kind, stack.http_port)
            load_before = os.getloadavg()[0]
            output = simulate_in(net, run_plan, workdir, progress)
            # Other work on the machine delays every lock-step exchange: keep the load.
            output.setdefault("client", {}).update(
                {"host.load1_before": load_before, "host.load1_after": os.getloadavg()[0]})
            server = stack.counters()
        finally:
            stack.stop()
    run = StackRun(kind, run_plan, [NodeResult.from_dict(n) for n in output["nodes"]],
                   output.get("client", {}), server)
    (workdir / "results.json").write_text(json.dumps(run.to_dict()))
    return run


def simulate_in(net: StormNet, plan: StormPlan, workdir: Path,
                progress: bool = False) -> dict[str, Any]:
    """Run the simulator process in the client namespace; its JSON output."""
    plan_path, out_path = workdir / "plan.json", workdir / "sim-out.json"
    plan_path.write_text(json.dumps(plan.to_dict()))
    out_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "fleetboot.storm.sim", str(plan_path), str(out_path),
            "--interface", net.client_if] + (["--progress"] if progress else [])
    log = workdir / "sim.log"
    with log.open("wb") as err:
        proc = net.client.popen(argv, stdout=err, stderr=None if progress else err)
        try:
            code = proc.wait(time_limit(plan))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            limit = time_limit(plan)
            raise StormError(f"the simulator ran past {limit:.0f} s; see {log}") from None
    if code != 0 or not out_path.exists():
        tail = log.read_text(errors="replace")[-2000:]
        raise StormError(f"the simulator failed (exit {code}):\n{tail}")
    data: dict[str, Any] = json.loads(out_path.read_text())
    return data


def run_storm(plan: StormPlan, kinds: tuple[StackKind, ...], workdir: Path,
              progress: bool = False,
              fleetboot_settings: dict[str, Any] | None = None) -> dict[str, StackRun]:
    """The same plan against each stack in turn, with byte-identical files."""
    files = StormFiles.create(workdir / "files", plan)
    return {kind: run_stack(plan, kind, workdir, files, progress, fleetboot_settings)
            for kind in kinds}
