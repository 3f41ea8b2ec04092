"""DEPLOYING (percent as the message) and DEPLOY_FAILED (the reason) in the node state machine."""

from __future__ import annotations

from fleetboot.nodeconfig.states import (
    DEFAULT_TIMEOUTS,
    REPORTABLE,
    NodeStatus,
    State,
    classify,
    step,
)
from fleetboot.server.events import BootEvent

PXE = {"vendor_class": "PXEClient:Arch:00000:UNDI:002001"}


def ev(source: str, kind: str, **detail: object) -> BootEvent:
    return BootEvent(0.0, source, kind, "52:54:00:00:00:07", None, dict(detail))


def run(events: list[BootEvent]) -> list[NodeStatus]:
    st, out = NodeStatus(), []
    for i, e in enumerate(events):
        c = classify(e)
        st = step(st, c, float(i)) if c else st
        out.append(st)
    return out


def test_deploy_then_boot_from_disk_to_up() -> None:
    trail = run([
        ev("dhcp", "DISCOVER", **PXE), ev("http", "script", action="profile"),
        ev("http", "file", role="kernel"),
        ev("node", "state", state="DEPLOYING", message="40 %"),
        ev("node", "state", state="DEPLOYING", message="100 %"),
        ev("dhcp", "DISCOVER", **PXE), ev("http", "script", action="local"),
        ev("dhcp", "DISCOVER"), ev("config", "config"), ev("node", "state", state="UP")])
    states = [s.state for s in trail]
    assert states[3:5] == [State.DEPLOYING, State.DEPLOYING]
    assert trail[3].message == "40 %" and trail[4].message == "100 %"
    assert trail[4].since == 3.0  # the same state: progress does not restart its clock
    assert states[5:] == [State.PXEBOOTING, State.BOOTING, State.BOOTING, State.CONFIGURING,
                          State.UP]
    assert trail[-1].boot == 2


def test_deploy_failed_keeps_the_reason() -> None:
    trail = run([ev("node", "state", state="DEPLOYING", message="10 %"),
                 ev("node", "state", state="deploy_failed", message="disk-checksum")])
    assert trail[-1].state is State.DEPLOY_FAILED and trail[-1].message == "disk-checksum"
    assert {State.DEPLOYING, State.DEPLOY_FAILED} <= REPORTABLE
    assert State.DEPLOYING in DEFAULT_TIMEOUTS
