"""The node state machine (pure): paths through a boot, new boots, timeouts, invariants."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetboot.nodeconfig.states import (
    DEFAULT_TIMEOUTS,
    Classified,
    NodeStatus,
    Signal,
    State,
    check_timeout,
    classify,
    step,
)
from fleetboot.server.events import BootEvent

PXE = {"vendor_class": "PXEClient:Arch:00007:UNDI:003000"}
MAC = "52:54:00:00:00:01"


def ev(source: str, kind: str, **detail: object) -> BootEvent:
    return BootEvent(0.0, source, kind, MAC, None, dict(detail))


def run(events: list[BootEvent], start: NodeStatus | None = None) -> list[NodeStatus]:
    st, out = start or NodeStatus(), []
    for i, e in enumerate(events):
        c = classify(e)
        st = step(st, c, float(i)) if c else st
        out.append(st)
    return out


def test_a_network_boot_to_up() -> None:
    trail = run([
        ev("dhcp", "DISCOVER", **PXE), ev("dhcp", "OFFER", **PXE),
        ev("dhcp", "DISCOVER", retransmit=1, **PXE), ev("dhcp", "REQUEST", **PXE),
        ev("tftp", "file", path="snponly.efi"),
        ev("dhcp", "DISCOVER", user_class="iPXE"),
        ev("http", "script", action="profile"),
        ev("http", "file", path="vmlinuz"),  # right after the script: the kernel
        ev("http", "file", path="initrd"),
        ev("dhcp", "DISCOVER", vendor_class="udhcp 1.35.0"),
        ev("dhcp", "REQUEST", vendor_class="udhcp 1.35.0"),
        ev("config", "config", status=200),
        ev("node", "state", state="UP"),
        ev("dhcp", "REQUEST", vendor_class="udhcp 1.35.0"),  # a renewal changes nothing
    ])
    states = [s.state for s in trail]
    assert states == [State.PXEBOOTING] * 7 + [State.BOOTING] * 4 + [State.CONFIGURING] + [
        State.UP] * 2
    assert {s.boot for s in trail} == {1}
    assert trail[-1].last_boot_s == 12.0 and trail[-1].boot_started == 0.0


def test_a_reboot_starts_a_new_boot() -> None:
    up = run([ev("dhcp", "DISCOVER", **PXE), ev("http", "file", role="kernel"),
              ev("node", "state", state="up")])[-1]
    assert up.state is State.UP and up.boot == 1
    again = run([ev("dhcp", "DISCOVER", **PXE)], up)[-1]
    assert again.state is State.PXEBOOTING and again.boot == 2 and again.since == 0.0
    disk = run([ev("dhcp", "DISCOVER", vendor_class="dhcpcd")], up)[-1]
    assert disk.state is State.BOOTING and disk.boot == 2  # rebooted from disk, no PXE


def test_wait_and_ask_again_is_one_boot() -> None:
    trail = run([ev("dhcp", "DISCOVER", **PXE), ev("http", "script", action="wait"),
                 ev("http", "script", action="wait"), ev("http", "script", action="profile"),
                 ev("http", "file", role="kernel")])
    assert [s.state for s in trail] == [State.PXEBOOTING, State.WAITING, State.WAITING,
                                        State.PXEBOOTING, State.BOOTING]
    assert trail[2].since == 1.0  # still waiting since the first "wait"
    assert {s.boot for s in trail} == {1}


def test_boot_files_outside_the_firmware_phase_are_no_boot() -> None:
    up = NodeStatus(State.UP, since=5.0, boot=3)
    for e in (ev("http", "file", role="kernel"), ev("http", "file", path="x.tgz"),
              ev("config", "config"), ev("dhcp", "REQUEST"), ev("dhcp", "ACK", **PXE)):
        c = classify(e)
        assert (step(up, c, 9.0) if c else up) == up


def test_local_disk_and_reports() -> None:
    trail = run([ev("dhcp", "DISCOVER", **PXE), ev("http", "script", action="local"),
                 ev("node", "state", state="RELOADING", message="imaging"),
                 ev("node", "state", state="bogus"), ev("admin", "state", state="FAILED")])
    assert [s.state for s in trail] == [State.PXEBOOTING, State.BOOTING, State.RELOADING,
                                        State.RELOADING, State.FAILED]
    assert trail[2].message == "imaging"


def test_timeouts_flag_once_and_a_move_clears_the_flag() -> None:
    st = NodeStatus(State.CONFIGURING, since=100.0, boot=1)
    limit = DEFAULT_TIMEOUTS[State.CONFIGURING]
    assert check_timeout(st, 100.0 + limit) is None
    stuck = check_timeout(st, 101.0 + limit)
    assert stuck is not None and stuck.stuck and stuck.state is State.CONFIGURING
    assert "stuck in CONFIGURING" in stuck.message
    assert check_timeout(stuck, 1e9) is None
    up = step(stuck, Classified(Signal.REPORT, State.UP), 2000.0)
    assert not up.stuck and up.state is State.UP
    assert check_timeout(up, 1e12) is None  # UP has no timeout


_events = st.sampled_from([
    ev("dhcp", "DISCOVER", **PXE), ev("dhcp", "REQUEST", **PXE), ev("dhcp", "ACK", **PXE),
    ev("dhcp", "DISCOVER"), ev("dhcp", "REQUEST"), ev("tftp", "file"),
    ev("http", "script", action="profile"), ev("http", "script", action="wait"),
    ev("http", "script", action="local"), ev("http", "file"), ev("http", "file", role="kernel"),
    ev("config", "config"), ev("node", "state", state="UP"),
    ev("node", "state", state="FAILED"), ev("admin", "state", state="OFF"),
    ev("node", "state", state="nonsense"), ev("other", "thing"),
])


@given(st.lists(st.tuples(_events, st.floats(0, 1000)), max_size=40))
def test_invariants_over_any_event_sequence(seq: list[tuple[BootEvent, float]]) -> None:
    status, now = NodeStatus(), 0.0
    for event, gap in seq:
        now += gap
        previous = status
        c = classify(event)
        status = step(status, c, now) if c else status
        assert status.boot in (previous.boot, previous.boot + 1)
        assert status.since <= now
        if status.state is not previous.state:
            assert status.since == now and not status.stuck
        if status.boot != previous.boot:
            assert status.boot_started == now
        if status.last_boot_s is not None:
            assert status.last_boot_s >= 0
        flagged = check_timeout(status, now + 10_000)
        if flagged is not None:
            assert flagged.state is status.state and flagged.stuck
            status = flagged


def test_the_vocabulary_of_fleetboots_own_servers() -> None:
    """What server/dhcp.py, server/tftp.py and server/http.py actually emit."""
    rx = {"dir": "rx", "retransmit": False, "vendor_class": "", "ipxe": True}
    trail = run([
        ev("dhcp", "DISCOVER", **rx), ev("dhcp", "OFFER", dir="tx", boot="ipxe"),
        ev("tftp", "start", file="undionly.kpxe"), ev("tftp", "done", file="undionly.kpxe"),
        ev("http", "script", boot="wait", status=200),
        ev("http", "script", boot="profile", status=200, profile="linux"),
        ev("http", "file", path="vmlinuz", status=404),  # failed: no progress
        ev("http", "file", path="vmlinuz", status=200, size=5, duration_s=0.1),
    ])
    assert [s.state for s in trail] == [State.PXEBOOTING] * 4 + [State.WAITING] + [
        State.PXEBOOTING] * 2 + [State.BOOTING]
