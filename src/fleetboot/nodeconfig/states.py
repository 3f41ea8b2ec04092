"""The node state machine, like the testbed's: pure, time is a parameter.

::

    OFF ──PXE DHCP/TFTP/script──▶ PXEBOOTING ──kernel/initrd──▶ BOOTING
                                    │   ▲                          │ config fetch
                          script:   ▼   │ PXE DHCP                 ▼
                          wait   WAITING                      CONFIGURING ──node: UP──▶ UP

plus RELOADING (the node re-images itself; it says so) and FAILED (it says so,
or an operator does), and DEPLOYING / DEPLOY_FAILED (``fleetboot deploy``: the
deploy agent reports its percent and the failure's reason as the message).
What Fleetboot sees (``BootEvent``) is first classified into a ``Signal``;
``step`` applies one signal. A firmware signal seen in a state after the
firmware phase means the machine rebooted: a new boot starts,
its number goes up, and the boot's duration is measured from there to UP.

A node that stays in a state past that state's timeout is flagged ``stuck``
(``check_timeout``), never moved: the operator decides what it means.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace

from fleetboot.server.events import BootEvent


class State(enum.StrEnum):
    OFF = "OFF"
    PXEBOOTING = "PXEBOOTING"
    BOOTING = "BOOTING"
    CONFIGURING = "CONFIGURING"
    UP = "UP"
    WAITING = "WAITING"
    RELOADING = "RELOADING"
    FAILED = "FAILED"
    DEPLOYING = "DEPLOYING"  # the deploy ramdisk writes an image (percent in the message)
    DEPLOY_FAILED = "DEPLOY_FAILED"  # a deployment failed (the reason in the message)


class Signal(enum.StrEnum):
    PXE_DHCP = "pxe_dhcp"  # a DHCP message from PXE firmware or iPXE
    BOOT_FILE = "boot_file"  # a TFTP transfer or boot program: the firmware phase
    SCRIPT = "script"  # the iPXE script was served (to boot a profile)
    WAIT = "wait"  # the script told the node to wait and ask again
    KERNEL = "kernel"  # kernel/initrd fetched, or the script said "local disk"
    HTTP_FILE = "http_file"  # another HTTP file (a kernel only right after the script)
    OS_DISCOVER = "os_discover"  # a booted OS's DHCP client starts
    OS_REQUEST = "os_request"  # a booted OS's DHCP REQUEST (also renewals)
    CONFIG = "config"  # the node fetched its configuration
    REPORT = "report"  # the node reported a state
    ADMIN = "admin"  # an operator set the state


# States a node may report about itself (POST /v1/self/state).
REPORTABLE: frozenset[State] = frozenset(
    {State.CONFIGURING, State.UP, State.FAILED, State.RELOADING, State.OFF, State.WAITING,
     State.DEPLOYING, State.DEPLOY_FAILED})

# Seconds a node may stay in a state before it is flagged; absent: forever.
DEFAULT_TIMEOUTS: Mapping[State, float] = {
    State.PXEBOOTING: 180.0,
    State.BOOTING: 300.0,
    State.CONFIGURING: 600.0,
    State.RELOADING: 3600.0,
    State.DEPLOYING: 3600.0,
}

_FIRMWARE = frozenset({State.PXEBOOTING, State.WAITING})
_PRE_CONFIG = frozenset({State.OFF, State.PXEBOOTING, State.WAITING, State.BOOTING,
                         State.FAILED})


@dataclass(frozen=True)
class NodeStatus:
    state: State = State.OFF
    since: float = 0.0
    boot: int = 0  # number of boots seen; timeline events carry it
    boot_started: float | None = None
    last_boot_s: float | None = None  # start of the last boot to UP
    stuck: bool = False
    script: bool = False  # this boot's iPXE script was served
    address: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Classified:
    signal: Signal
    target: State | None = None  # for REPORT and ADMIN
    message: str = ""


def _is_pxe(detail: Mapping[str, object]) -> bool:
    vendor = str(detail.get("vendor_class") or "")
    user = str(detail.get("user_class") or "")
    # UEFI HTTP boot firmware says "HTTPClient": its DHCP starts a network boot too.
    return (bool(detail.get("pxe") or detail.get("ipxe")) or vendor.startswith("PXEClient")
            or vendor.startswith("HTTPClient") or user == "iPXE")


def _dhcp(event: BootEvent) -> Classified | None:
    kind = event.kind.upper()
    if kind not in ("DISCOVER", "REQUEST", "SOLICIT"):  # SOLICIT: DHCPv6's DISCOVER
        return None  # replies, INFORM, RELEASE: timeline only
    if _is_pxe(event.detail):
        return Classified(Signal.PXE_DHCP)
    return Classified(Signal.OS_REQUEST if kind == "REQUEST" else Signal.OS_DISCOVER)


def _http(event: BootEvent) -> Classified | None:
    if event.detail.get("status") not in (None, 200, 206):
        return None  # a refused or failed download moved nothing forward
    role = str(event.detail.get("role") or event.kind)
    if event.kind == "script":
        # fleetboot.server.http says "boot": profile | local | wait | menu
        action = str(event.detail.get("action") or event.detail.get("boot") or "")
        if action == "wait":
            return Classified(Signal.WAIT)
        return Classified(Signal.KERNEL if action == "local" else Signal.SCRIPT)
    if role in ("kernel", "initrd", "image"):
        return Classified(Signal.KERNEL)
    if role in ("boot_program", "program"):
        return Classified(Signal.BOOT_FILE)
    return Classified(Signal.HTTP_FILE)


def _target(event: BootEvent) -> tuple[State, str] | None:
    try:
        state = State(str(event.detail.get("state", "")).upper())
    except ValueError:
        return None
    return state, str(event.detail.get("message") or "")


def classify(event: BootEvent) -> Classified | None:
    """What an event means for the state machine (None: it only goes on the timeline)."""
    if event.source == "dhcp":
        return _dhcp(event)
    if event.source == "tftp":
        return Classified(Signal.BOOT_FILE)
    if event.source == "http":
        return _http(event)
    if event.source == "config" and event.kind == "config":
        return Classified(Signal.CONFIG)
    if event.source in ("node", "admin") and event.kind == "state":
        found = _target(event)
        if found is None:
            return None
        signal = Signal.REPORT if event.source == "node" else Signal.ADMIN
        return Classified(signal, found[0], found[1])
    return None


def _move(st: NodeStatus, state: State, at: float, message: str = "") -> NodeStatus:
    if state is st.state and not message:
        return st
    return replace(st, state=state, since=at if state is not st.state else st.since,
                   stuck=False if state is not st.state else st.stuck, message=message)


def _new_boot(st: NodeStatus, state: State, at: float) -> NodeStatus:
    return replace(st, state=state, since=at, boot=st.boot + 1, boot_started=at, stuck=False,
                   script=False, message="")


def _firmware(st: NodeStatus, at: float) -> NodeStatus:
    if st.state is State.WAITING:  # asking again is part of the same boot
        return _move(st, State.PXEBOOTING, at)
    return st if st.state is State.PXEBOOTING else _new_boot(st, State.PXEBOOTING, at)


def _up(st: NodeStatus, at: float, message: str) -> NodeStatus:
    moved = _move(st, State.UP, at, message)
    if st.state is not State.UP and st.boot_started is not None:
        moved = replace(moved, last_boot_s=max(0.0, at - st.boot_started))
    return moved


def step(st: NodeStatus, c: Classified, at: float) -> NodeStatus:
    """The status after one classified event at time ``at``."""
    sig = c.signal
    if sig in (Signal.PXE_DHCP, Signal.BOOT_FILE):
        return _firmware(st, at)
    if sig is Signal.SCRIPT:
        return replace(_firmware(st, at), script=True)
    if sig is Signal.WAIT:
        if st.state is State.WAITING:
            return st
        return _move(_firmware(st, at), State.WAITING, at)
    if sig is Signal.KERNEL or (sig is Signal.HTTP_FILE and st.script and st.state in _FIRMWARE):
        # Outside the firmware phase a kernel download is someone's wget, not a boot.
        return _move(st, State.BOOTING, at) if st.state in _FIRMWARE else st
    if sig is Signal.OS_DISCOVER:
        if st.state in _FIRMWARE:
            return _move(st, State.BOOTING, at)
        # A DISCOVER from a running OS means it restarted without network boot.
        return st if st.state is State.BOOTING else _new_boot(st, State.BOOTING, at)
    if sig is Signal.OS_REQUEST:
        return _move(st, State.BOOTING, at) if st.state in _FIRMWARE else st
    if sig is Signal.CONFIG:
        return _move(st, State.CONFIGURING, at) if st.state in _PRE_CONFIG else st
    if sig in (Signal.REPORT, Signal.ADMIN) and c.target is not None:
        if c.target is State.UP:
            return _up(st, at, c.message)
        return _move(st, c.target, at, c.message)
    return st


def check_timeout(st: NodeStatus, now: float, timeouts: Mapping[State, float] = DEFAULT_TIMEOUTS,
                  ) -> NodeStatus | None:
    """The flagged status if the node just overstayed its state's timeout, else None."""
    limit = timeouts.get(st.state)
    if st.stuck or limit is None or now - st.since <= limit:
        return None
    return replace(st, stuck=True, message=(
        f"stuck in {st.state} for {now - st.since:.0f} s (timeout {limit:.0f} s)"))
