"""Helpers for the whole-chain tests: inventories for a lab, boot timelines read back from
the server's database (what ``fleetboot timeline`` shows), and phase matching.

A timeline event here is the JSON row of ``fleetboot timeline NODE --json``:
``{"source", "kind", "mac", "address", "state", "at", "detail": {...}}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Node
from fleetboot.lab import guest, netns, qemu
from fleetboot.lab.fleet import FleetbootServer
from fleetboot.lab.netns import Lab
from fleetboot.lab.qemu import Vm, VmError
from fleetboot.nodeconfig.timeline import boots, read_timeline

Event = dict[str, Any]
T = TypeVar("T")

# iPXE expands this to the MAC of the NIC it booted through; the lab initramfs then
# configures that NIC (pxelinux's BOOTIF convention), so one profile fits every node
# and Linux uses the NIC its firmware used.
BOOTIF_ARG = "BOOTIF=01-${netX/mac:hexhyp}"
SCRIPT_PATH = "/boot/script.ipxe"

_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1bc")
IPXE_ADDRESS = re.compile(r"net0: (\d+\.\d+\.\d+\.\d+)/")


def require_chain(*, uefi: bool = False) -> None:
    """Skip unless this machine can boot lab VMs through a namespace (root, QEMU, OVMF)."""
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    if shutil.which(qemu.QEMU) is None:
        pytest.skip("needs qemu-system-x86 (run scripts/install-system-deps.sh)")
    if uefi and not (qemu.OVMF_CODE.exists() and qemu.OVMF_VARS.exists()):
        pytest.skip("needs the ovmf package (run scripts/install-system-deps.sh)")


# --- inventory ------------------------------------------------------------------------


def subnet_doc(lab: Lab, first: int = 100, last: int = 199) -> dict[str, Any]:
    """The lab's /24 with a pool; the server is the router."""
    net = lab.server_ip.rsplit(".", 1)[0]
    return {"name": "lab", "cidr": f"{net}.0/24", "router": lab.server_ip,
            "lease_seconds": 3600, "pools": [{"start": f"{net}.{first}", "end": f"{net}.{last}"}]}


def node_doc(name: str, macs: Sequence[str], boot_mac: str, boot: str) -> dict[str, Any]:
    """A node whose interfaces are ``macs``; only ``boot_mac`` is its boot interface."""
    if boot_mac not in macs:
        raise ValueError(f"boot MAC {boot_mac} is not one of {list(macs)}")
    return {"name": name, "arch": "x86_64",
            "interfaces": [{"mac": m, "boot": m == boot_mac} for m in macs],
            "boot": {"default": boot}}


# --- timelines ------------------------------------------------------------------------


def all_events(server: FleetbootServer, node: str) -> list[Event]:
    """Every recorded event of ``node``, all boots, in time order.

    ``fleetboot timeline`` shows one boot at a time; a firmware that tries several
    NICs or reboots may open more than one, and a test must see them all. Reading
    beside the running server is safe (SQLite in WAL mode).
    """
    db = Database(server.database_url)
    try:
        with db.session() as s:
            node_id = s.scalar(select(Node.id).where(Node.name == node))
            if node_id is None:
                raise AssertionError(f"no node {node!r} in the server's inventory")
            events = [e.row() for b in boots(s, node_id)
                      for e in read_timeline(s, node_id, b[0])]
    finally:
        db.dispose()
    return sorted(events, key=lambda e: (e["at"], e["seq"]))


def of(events: Iterable[Event], source: str, kind: str | None = None,
       **detail: Any) -> list[Event]:
    """The events from ``source`` (of ``kind``) whose detail has these values;
    ``mac=`` and ``address=`` match the event's own fields."""
    out = []
    for e in events:
        if e["source"] != source or (kind is not None and e["kind"] != kind):
            continue
        fields = {**e["detail"], "mac": e["mac"], "address": e["address"]}
        if all(fields.get(k) == v for k, v in detail.items()):
            out.append(e)
    return out


def reply_to(events: Sequence[Event], request: Event, kind: str) -> Event:
    """The server's ``kind`` (OFFER/ACK) answering ``request`` (same MAC and xid)."""
    for e in events:
        if (e["source"] == "dhcp" and e["kind"] == kind and e["mac"] == request["mac"]
                and e["detail"].get("xid") == request["detail"].get("xid")
                and e["at"] >= request["at"]):
            return e
    raise AssertionError(f"no {kind} for {request['kind']} xid={request['detail'].get('xid')} "
                         f"from {request['mac']}:\n{describe(events)}")


def dhcp_macs(events: Iterable[Event]) -> set[str]:
    """MACs the DHCP server heard from (every received message)."""
    return {e["mac"] for e in events if e["source"] == "dhcp" and e["detail"].get("dir") == "rx"}


def boot_files_by_mac(events: Iterable[Event]) -> dict[str, set[str]]:
    """MAC -> boot files the DHCP server handed it (OFFER/ACK carrying a boot answer)."""
    out: dict[str, set[str]] = {}
    for e in events:
        if e["source"] == "dhcp" and e["detail"].get("dir") == "tx" and e["detail"].get("file"):
            out.setdefault(e["mac"], set()).add(e["detail"]["file"])
    return out


def describe(events: Sequence[Event]) -> str:
    """A compact timeline for assertion messages."""
    if not events:
        return "(no events)"
    t0 = events[0]["at"]
    keys = ("xid", "vendor_class", "boot", "file", "path", "status", "outcome", "options",
            "state")
    lines = []
    for e in events:
        d = e["detail"]
        shown = " ".join(f"{k}={d[k]}" for k in keys if d.get(k) not in (None, "", {}))
        lines.append(f"{e['at'] - t0:8.3f} {e['source']:6} {e['kind']:9} {e['mac'] or '-':17} "
                     f"{e['address'] or '-':13} {e['state'] or '-':11} {shown}")
    return "\n".join(lines)


# --- phases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One step of a boot: the first event after the previous phase that matches."""

    name: str
    match: Callable[[Event], bool]
    state: str | None = None  # the node state the server recorded with that event


def find_phases(events: Sequence[Event], phases: Sequence[Phase]) -> list[int | None]:
    """Index of each phase's event, matched in order (None from the first missing one)."""
    found: list[int | None] = []
    start = 0
    for phase in phases:
        index = next((i for i in range(start, len(events)) if phase.match(events[i])), None)
        found.append(index)
        if index is None:
            return found + [None] * (len(phases) - len(found))
        start = index + 1
    return found


# --- waiting ---------------------------------------------------------------------------


def wait_until(probe: Callable[[], T | None], timeout: float, what: str,
               poll: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def wait_poweroff(vms: Sequence[Vm], timeout: float,
                  poll: float = 0.2) -> tuple[dict[str, float], dict[str, str]]:
    """Wait for every VM to power off: (name -> seconds from its start to power-off,
    name -> error text with the serial tail for those that did not)."""
    seconds: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seconds) < len(vms) and time.monotonic() < deadline:
        for vm in vms:
            if vm.name not in seconds and not vm.running:
                seconds[vm.name] = vm.elapsed()
        time.sleep(poll)
    errors = {}
    for vm in vms:
        if vm.name not in seconds:
            try:
                vm.wait_exit(timeout=0)
            except VmError as exc:
                errors[vm.name] = str(exc)
    return seconds, errors


def _render(line: str) -> str:
    """A line as a terminal shows it: iPXE draws download progress with backspaces."""
    cells: list[str] = []
    at = 0
    for ch in line:
        if ch == "\b":
            at = max(0, at - 1)
            continue
        if at < len(cells):
            cells[at] = ch
        else:
            cells.append(ch)
        at += 1
    return "".join(cells).rstrip()


def linux_lease(text: str) -> guest.Lease | None:
    """The lease the guest's own udhcpc reported on the console (FLEETBOOT-LEASE)."""
    marker = next((m for m in guest.parse_markers(text) if m.kind == "LEASE"), None)
    return guest.Lease.from_marker(marker) if marker is not None else None


def console(vm: Vm) -> str:
    """The serial log as a screen would show it: no terminal escapes or carriage returns
    (SeaBIOS and iPXE draw with them), backspaces applied."""
    text = _ANSI.sub("", vm.serial_text()).replace("\r", "")
    return "\n".join(_render(line) for line in text.split("\n"))


# --- one boot run shared by every test of a module --------------------------------------


def shared_run(factory: pytest.TempPathFactory, name: str,
               produce: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run ``produce(workdir)`` once per test session, even across xdist workers.

    The boots behind a module's tests are expensive, and a module-scoped fixture runs
    once per worker that gets one of its tests (``--dist loadgroup`` cannot keep a
    module on one worker while pytest-xdist 3.8 and pytest 9 disagree about node ids).
    The first worker boots and stores the JSON result beside the workers' temporary
    directories; the others wait on the lock and read it. A failure is stored too,
    so it is reported once per test instead of booting again.
    """
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    result = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            try:
                data = {"ok": produce(factory.mktemp(name))}
            except Exception as exc:
                result.write_text(json.dumps({"error": traceback.format_exc()}))
                raise RuntimeError(f"the shared {name} run failed: {exc}") from exc
            result.write_text(json.dumps(data))
    stored = json.loads(result.read_text())
    if "error" in stored:
        pytest.fail(f"the shared {name} run failed (in another worker):\n{stored['error']}",
                    pytrace=False)
    value: dict[str, Any] = stored["ok"]
    return value
