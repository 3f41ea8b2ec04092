"""A small boot storm, end to end, against the classic stack and against Fleetboot.

Twenty simulated machines power on at once in a client namespace and boot
through the full chain against a real server stack in a server namespace.
Speed is not asserted here (that is bench/storm.py's job): every node must
reach UP, every phase must appear in order, and the server must agree.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from fleetboot.lab import netns
from fleetboot.storm.plan import PHASES, KiB, Payload, Timing, make_plan
from fleetboot.storm.report import draw, print_report
from fleetboot.storm.runner import StackRun, run_storm, simulate_in
from fleetboot.storm.stats import NodeResult, summarize
from fleetboot.storm.topology import StormNet

pytestmark = [pytest.mark.netns, pytest.mark.slow]

N = 20
PAYLOAD = Payload(bootfile=60 * KiB, kernel=512 * KiB, initrd=768 * KiB)


def _require(*programs: str) -> None:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (run scripts/install-system-deps.sh)")


def _check(run: StackRun) -> None:
    summary = run.summary
    failures = [f"{r.name}: {r.failed_phase}: {r.error}" for r in run.results if not r.ok]
    assert not failures, failures
    assert summary.up == N
    for node in run.results:
        assert [p.name for p in node.phases] == list(PHASES)
        assert all(p.end >= p.start for p in node.phases)
        sizes = {p.name: p.detail.get("size") for p in node.phases}
        assert sizes["tftp"] == PAYLOAD.bootfile
        assert sizes["kernel"] == PAYLOAD.kernel and sizes["initrd"] == PAYLOAD.initrd
    assert run.simulator_drops == 0


def test_classic_stack_boots_a_small_storm(tmp_path: Path) -> None:
    _require("dnsmasq", "nginx")
    runs = run_storm(make_plan(N, 0.0, 5, payload=PAYLOAD), ("classic",), tmp_path)
    run = runs["classic"]
    _check(run)
    # nginx logged one UP report per node.
    assert run.server.get("http.report.204") == N


@pytest.mark.skipif(importlib.util.find_spec("fleetboot.cli.serve") is None,
                    reason="fleetboot serve is not there yet")
def test_fleetboot_boots_a_small_storm(tmp_path: Path) -> None:
    _require("curl")
    runs = run_storm(make_plan(N, 0.0, 6, payload=PAYLOAD), ("fleetboot",), tmp_path)
    run = runs["fleetboot"]
    _check(run)
    # Fleetboot itself saw every node report UP.
    assert run.server.get("nodes.UP") == N
    line = print_report(runs)
    assert line.startswith(f"RESULT storm n={N} fleetboot_s=")
    draw(runs, tmp_path / "storm.png")
    assert (tmp_path / "storm.png").stat().st_size > 0


def test_nodes_that_get_no_answer_fail_in_their_phase_after_their_schedule(
        tmp_path: Path) -> None:
    """No server at all: every node retransmits on its schedule, then fails in pxe_dhcp."""
    _require()
    plan = make_plan(3, 0.0, 7, timing=Timing(pxe_discover=(0.2, 0.3, 0.4)),
                     payload=PAYLOAD).for_stack("classic", 80)
    with StormNet.create(plan.network) as net:
        output = simulate_in(net, plan, tmp_path)
    results = [NodeResult.from_dict(n) for n in output["nodes"]]
    assert [r.failed_phase for r in results] == ["pxe_dhcp"] * 3
    assert all(r.retries == 2 and r.error == "no OFFER after 3 tries" for r in results)
    assert all(r.phases[0].duration >= 0.9 for r in results)
    summary = summarize(results)
    assert (summary.up, summary.failed, summary.retries) == (0, 3, 6)


def test_proxy_stack_boots_a_small_storm_beside_the_site_dhcp_server(tmp_path: Path) -> None:
    """Issue 21: dnsmasq gives the addresses, Fleetboot in proxy mode everything else; every
    node is identified by what Fleetboot saw on the link and reaches UP."""
    _require("dnsmasq", "curl")
    runs = run_storm(make_plan(N, 0.0, 8, payload=PAYLOAD), ("proxy",), tmp_path)
    run = runs["proxy"]
    _check(run)
    assert run.server.get("nodes.UP") == N
    planned = {spec.name: spec.address for spec in run.plan.nodes}
    for node in run.results:  # the address came from the site server, the boot file from us
        pxe = next(p for p in node.phases if p.name == "pxe_dhcp")
        assert pxe.detail["address"] == planned[node.name] and pxe.detail["file"]
    line = print_report(runs)
    assert "proxy_failed=0" in line
