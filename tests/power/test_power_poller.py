"""The poller against a real ipmi_sim: states stored, only changes on the timeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.lab.bmc import IpmiSim
from fleetboot.nodeconfig.timeline import read_timeline
from fleetboot.power import service
from fleetboot.power.bulk import BulkSettings
from fleetboot.power.core import Operation, Outcome, PowerState
from fleetboot.power.models import power_states
from fleetboot.power.poller import PowerPoller, changed
from fleetboot.power.secrets import SecretBox

pytestmark = pytest.mark.slow


def test_changed_keeps_new_states_and_new_failures_only() -> None:
    on = Outcome("a", 1, Operation.STATUS, True, PowerState.ON)
    off = Outcome("b", 2, Operation.STATUS, True, PowerState.OFF)
    failed = Outcome("c", 3, Operation.STATUS, False, error="x")
    assert changed({1: "on", 2: "on", 3: "error"}, [on, off, failed]) == [off]
    assert changed({}, [on]) == [on]


async def test_poller_records_states_and_changes(sqlite_db: Database, ipmi_bmc: IpmiSim,
                                                 tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "power.key")
    with sqlite_db.session() as s:
        node_id = inventory.add_node(s, "n1", [inventory.parse_nic("52:54:00:aa:05:01")]).id
        service.configure(s, box, "n1", "ipmi", address="127.0.0.1", port=ipmi_bmc.port,
                          username="admin", password="secret")
    poller = PowerPoller(sqlite_db, lambda: box, 60, BulkSettings(timeout_s=10))
    await poller.poll_once()
    await poller.poll_once()
    with sqlite_db.session() as s:
        assert power_states(s) == {node_id: "off"}
        assert len(read_timeline(s, node_id)) == 1  # the first answer; the repeat is quiet
    assert ipmi_bmc.ipmitool("power", "on").returncode == 0
    await poller.poll_once()
    with sqlite_db.session() as s:
        assert power_states(s) == {node_id: "on"}
        events = read_timeline(s, node_id)
    assert [e.detail["power"] for e in events] == ["off", "on"]
