"""UEFI HTTP boot is one boot on the timeline (issue 17, item 4): the firmware's
``HTTPClient`` DHCP starts the network boot, like ``PXEClient`` does, so iPXE's own
DHCP after the HTTP download is the same boot, not a second one. Pure."""

from __future__ import annotations

from fleetboot.nodeconfig.states import NodeStatus, State, classify, step
from fleetboot.server.events import BootEvent

HTTP_CLIENT = {"vendor_class": "HTTPClient:Arch:00016:UNDI:003000"}


def _ev(source: str, kind: str, **detail: object) -> BootEvent:
    return BootEvent(0.0, source, kind, "52:54:00:00:00:01", None, dict(detail))


def test_http_boot_to_up_is_one_boot() -> None:
    st = NodeStatus()
    trail = []
    for i, e in enumerate([
        _ev("dhcp", "DISCOVER", **HTTP_CLIENT), _ev("dhcp", "REQUEST", **HTTP_CLIENT),
        _ev("http", "file", path="ipxe.efi", status=200),  # the firmware's download
        _ev("dhcp", "DISCOVER", user_class="iPXE"),
        _ev("http", "script", action="profile"),
        _ev("http", "file", path="vmlinuz", status=200),
        _ev("dhcp", "DISCOVER", vendor_class="udhcp 1.35.0"),
        _ev("config", "config", status=200),
        _ev("node", "state", state="UP"),
    ]):
        c = classify(e)
        st = step(st, c, float(i)) if c else st
        trail.append(st)
    assert [s.state for s in trail[:5]] == [State.PXEBOOTING] * 5
    assert trail[-1].state is State.UP
    assert {s.boot for s in trail} == {1}
