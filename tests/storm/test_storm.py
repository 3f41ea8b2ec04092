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
from fleetboot.storm.plan import PHASES, KiB, Payload, make_plan
from fleetboot.storm.report import draw, print_report
from fleetboot.storm.runner import StackRun, run_storm

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
