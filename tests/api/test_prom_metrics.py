"""/metrics of a running server: typed families checked by Prometheus's own promtool,
every family present from start-up, values that follow what happens."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from api_helpers import running

from fleetboot.inventory.db import Database

FAMILIES = ("fleetboot_nodes", "fleetboot_pool_addresses", "fleetboot_pool_addresses_leased",
            "fleetboot_leases", "fleetboot_transfers_in_flight", "fleetboot_admission_queue",
            "fleetboot_boot_duration_seconds", "fleetboot_boot_phase_seconds",
            "fleetboot_boot_events_total",
            "fleetboot_dhcp_dropped_total", "fleetboot_dhcp_ignored_total",
            "fleetboot_dhcp_rx_total", "fleetboot_dhcp_tx_total",
            "fleetboot_admission_booting", "fleetboot_scripts_served_total")


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                          capture_output=True, timeout=60)


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert match, f"{sample} not in\n{text}"
    return float(match.group(1))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (prometheus)")
async def test_metrics_pass_promtool_and_every_family_is_there_from_the_start(
        sqlite_db: Database, tmp_path: Path) -> None:
    async with running(sqlite_db, tmp_path) as server:
        async with httpx.AsyncClient(base_url=server.url) as c:
            first = await c.get("/metrics")
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = first.text
        checked = _promtool(text)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for family in FAMILIES:
            assert f"# TYPE {family} " in text, family
        helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
        types = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert helps == types
        assert _value(text, 'fleetboot_nodes{state="OFF"}') == 0
        assert _value(text, 'fleetboot_boot_events_total{protocol="dhcp"}') == 0

        async with server.client() as api:
            await api.post("/subnets", json={"name": "lab", "cidr": "10.9.0.0/24", "pools": [
                {"start": "10.9.0.10", "end": "10.9.0.29"}]})
            await api.post("/nodes", json={"name": "a",
                                           "interfaces": [{"mac": "52:54:00:00:00:01"}]})
            await server.follow_inventory()
            for state in ("BOOTING", "UP"):
                r = await api.put("/nodes/a/state", json={"state": state})
                assert r.status_code == 200
        async with httpx.AsyncClient(base_url=server.url) as c:
            text = (await c.get("/metrics")).text
        assert _promtool(text).returncode == 0
        assert _value(text, 'fleetboot_nodes{state="UP"}') == 1
        assert _value(text, 'fleetboot_boot_events_total{protocol="admin"}') == 2
        assert _value(text, 'fleetboot_boot_phase_seconds_count{phase="BOOTING"}') == 1
        assert _value(text, 'fleetboot_boot_phase_seconds_count{phase="PXEBOOTING"}') == 0
        assert _value(text, 'fleetboot_transfers_in_flight{protocol="http"}') == 0
