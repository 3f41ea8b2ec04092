"""Admission control: boots in progress, WAIT scripts, transfer slots, metrics."""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from httpboot_helpers import A_IP, A_MAC, B_IP, Boot, build_boot
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.config import AdmissionConfig, HttpConfig, SecurityConfig, Settings
from fleetboot.inventory import service
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.server import httpfiles
from fleetboot.server.admission import (
    AdmissionLimits,
    BootAdmission,
    GateBusy,
    TransferGate,
    TransferLimits,
)
from fleetboot.server.assemble import node_status_probe
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.events import BootEvent
from fleetboot.server.http import HttpService, create_app
from fleetboot.server.metrics import registry

C_MAC, C_IP = "52:54:00:00:0d:01", "10.9.0.31"

# --- the pure core ------------------------------------------------------------------------

_ops = st.lists(st.tuples(st.sampled_from(["ask", "up", "tick"]), st.integers(0, 7),
                          st.floats(0, 30)), max_size=80)


@given(limit=st.integers(1, 4), ops=_ops)
def test_never_more_boots_than_the_limit(limit: int, ops: list[tuple[str, int, float]]) -> None:
    adm = BootAdmission(AdmissionLimits(max_booting=limit, boot_timeout_s=100, wait_s=5,
                                        wait_jitter_s=0))
    now = 0.0
    for op, node, dt in ops:
        now += dt
        if op == "ask":
            was_booting = node in adm.booting
            admitted = adm.admit(node, now)
            assert admitted or not was_booting  # a boot in progress is never turned away
            assert admitted == (node in adm.booting)
        elif op == "up":
            adm.release(node, "up")
        else:
            adm.sweep(now, None)
        assert len(adm.booting) <= limit
        assert adm.counters["booting"] == len(adm.booting)
        assert not set(adm.booting) & set(adm.waiting)


@given(order=st.permutations(list(range(1, 6))))
def test_deferred_nodes_go_first_in_the_order_they_came(order: list[int]) -> None:
    adm = BootAdmission(AdmissionLimits(max_booting=1, wait_s=5, wait_jitter_s=0))
    assert adm.admit(0, 0.0)
    for i, node in enumerate([1, 2, 3, 4, 5]):
        assert not adm.admit(node, 1.0 + i)  # deferred in this order
    for step, finished in enumerate([0, 1, 2, 3, 4]):
        adm.release(finished, "up")
        now = 10.0 + step
        # Everybody asks again, in any order: only the one deferred first gets in.
        admitted = [n for n in order if n not in adm.booting and adm.admit(n, now)]
        assert admitted == [step + 1]


def test_timeout_and_vanished_waiters() -> None:
    adm = BootAdmission(AdmissionLimits(max_booting=1, boot_timeout_s=60, wait_s=5,
                                        wait_jitter_s=5))
    assert adm.admit(1, 0.0) and not adm.admit(2, 1.0)
    assert adm.sweep(59.0, None) == []
    assert adm.sweep(61.0, None) == [(1, "timeout")]
    assert adm.counters["released_timeout"] == 1
    assert adm.admit(2, 62.0)
    assert not adm.admit(3, 63.0)
    adm.release(2, "up")
    adm.sweep(63.0 + adm.limits.stale_s + 1, None)  # node 3 stopped asking
    assert adm.waiting == {} and adm.admit(4, 200.0)


def test_probe_ends_boots_only_after_admission() -> None:
    adm = BootAdmission(AdmissionLimits(max_booting=2))
    adm.admit(1, 100.0)
    adm.admit(2, 100.0)
    states = {1: ("UP", 50.0), 2: ("FAILED", 120.0)}  # 1: the previous boot's UP
    assert adm.sweep(130.0, states.get) == [(2, "failed")]
    assert list(adm.booting) == [1]


def test_wait_is_jittered_within_bounds() -> None:
    adm = BootAdmission(AdmissionLimits(wait_s=3, wait_jitter_s=4), rng=random.Random(7))
    waits = {adm.wait_seconds() for _ in range(200)}
    assert min(waits) >= 3 and max(waits) <= 7 and len(waits) > 1


# --- the transfer gate ----------------------------------------------------------------------


async def test_gate_queues_in_order_and_bounds_the_queue() -> None:
    gate = TransferGate(TransferLimits(max_transfers=1, max_queued=2, queue_timeout_s=30))
    await gate.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await gate.acquire()
        order.append(i)

    waiters = [asyncio.create_task(take(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    assert gate.counters["queued"] == 2 and gate.counters["active"] == 1
    with pytest.raises(GateBusy):
        await gate.acquire()  # the queue is full
    gate.release()
    await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*waiters)
    assert order == [1, 2] and gate.counters["rejected_full"] == 1
    gate.release()
    assert gate.counters["active"] == 0 and gate.counters["queued"] == 0


async def test_gate_wait_is_bounded_and_cancellation_is_clean() -> None:
    gate = TransferGate(TransferLimits(max_transfers=1, max_queued=5, queue_timeout_s=0.05))
    await gate.acquire()
    with pytest.raises(GateBusy):
        await gate.acquire()
    assert gate.counters["rejected_timeout"] == 1
    gate.limits = TransferLimits(max_transfers=1, max_queued=5, queue_timeout_s=30)
    task = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.counters["queued"] == 0
    gate.release()
    await gate.acquire()  # the slot is free again
    assert gate.counters["active"] == 1


# --- through the app, with the real node-config state machine -----------------------------


class Rig:
    def __init__(self, boot: Boot, nodeconfig: NodeConfigService) -> None:
        self.boot, self.nodeconfig = boot, nodeconfig
        self.scripts = boot.app.state.fleetboot.scripts

    async def script(self, address: str) -> str:
        self.scripts.invalidate()  # as if the reuse window had passed
        async with self.boot.client(address) as client:
            resp = await client.get("/boot/script.ipxe")
        assert resp.status_code == 200, resp.text
        return resp.text

    def node_id(self, name: str) -> int:
        with self.boot.db.session() as s:
            return service.get_node(s, name).id

    async def report(self, name: str, state: str) -> None:
        self.nodeconfig.report(self.node_id(name), "", state, "")
        await self.nodeconfig.settle()

    async def metrics(self, address: str = "127.0.0.1", **headers: str) -> tuple[int, str]:
        async with self.boot.client(address) as client:
            resp = await client.get("/metrics", headers=headers)
        return resp.status_code, resp.text


def _metric(text: str, name: str) -> int:
    match = re.search(rf"^fleetboot_{name}(?:_total)? (\d+)(?:\.0)?$", text, re.M)
    assert match, f"{name} not in metrics"
    return int(match.group(1))


@pytest.fixture
async def rig(db: Database, tmp_path: Path) -> AsyncIterator[Rig]:
    boot = build_boot(db, tmp_path)
    with db.session() as s:
        service.add_node(s, "c", [service.NicSpec(C_MAC, boot=True)])
        service.set_boot(s, "c", "default", BootAction.PROFILE, "deb")
        service.set_boot(s, "b", "default", BootAction.PROFILE, "rescue")
    directory = StaticDirectory({A_IP: A_MAC, B_IP: "52:54:00:00:0b:01", C_IP: C_MAC})
    nodeconfig = NodeConfigService(db, directory, NodeConfigSettings(base_url="http://10.9.0.1"))
    settings = Settings(server_address="10.9.0.1", boot_root=str(boot.root),
                        http=HttpConfig(),
                        admission=AdmissionConfig(max_booting=2, wait_s=3, wait_jitter_s=2,
                                                  max_transfers=1, large_file_bytes=100_000,
                                                  max_queued_transfers=1),
                        security=SecurityConfig(admin_token="sesame"))
    def sink(event: BootEvent) -> None:  # the test sees what the state machine sees
        boot.events.append(event)
        nodeconfig.sink(event)

    boot.app = create_app(settings, db, directory, sink,
                          cmdline_hook=nodeconfig.cmdline_hook,
                          node_status=node_status_probe(nodeconfig))
    await nodeconfig.start()
    try:
        yield Rig(boot, nodeconfig)
    finally:
        await nodeconfig.stop()


async def test_limit_reached_gives_a_wait_script_and_up_frees_a_slot(rig: Rig) -> None:
    assert "vmlinuz" in await rig.script(A_IP)
    assert "vmlinuz rescue" in await rig.script(B_IP)
    busy = await rig.script(C_IP)  # two boots in progress: c waits
    assert "vmlinuz" not in busy and "the boot server is busy" in busy
    seconds = int(re.search(r"^sleep (\d+)$", busy, re.M).group(1))  # type: ignore[union-attr]
    assert 3 <= seconds <= 5
    assert "chain --replace --autofree http://10.9.0.1:8080/boot/script.ipxe" in busy
    await rig.nodeconfig.settle()
    c = rig.node_id("c")
    assert rig.nodeconfig.statuses[c].state.value == "WAITING"  # the state machine agrees
    _, text = await rig.metrics()
    assert _metric(text, "admission_booting") == 2 and _metric(text, "admission_deferred") == 1
    assert _metric(text, "admission_max_booting") == 2
    # a retrying node already admitted is never turned away
    assert "vmlinuz" in await rig.script(A_IP)
    await rig.report("a", "UP")
    assert "vmlinuz" in await rig.script(C_IP)  # a's slot went to c
    assert "vmlinuz" not in await rig.script(A_IP)  # a's next boot waits its turn
    _, text = await rig.metrics()
    assert _metric(text, "admission_released_up") == 1
    assert _metric(text, "admission_booting") == 2 and _metric(text, "admission_waiting") == 1
    deferred = [e for e in rig.boot.kinds("script") if e.detail.get("admission") == "deferred"]
    assert [e.mac for e in deferred] == [C_MAC, A_MAC]


async def test_timeout_frees_a_slot(rig: Rig) -> None:
    now = [1000.0]
    rig.scripts.clock = lambda: now[0]
    await rig.script(A_IP)
    await rig.script(B_IP)
    assert "busy" in await rig.script(C_IP)
    now[0] += 601.0  # past admission.boot_timeout_s, no UP from anybody
    assert "vmlinuz" in await rig.script(C_IP)
    _, text = await rig.metrics()
    assert _metric(text, "admission_released_timeout") == 2


async def test_local_and_wait_boots_take_no_slot(rig: Rig) -> None:
    with rig.boot.db.session() as s:
        service.set_boot(s, "a", "temp", BootAction.LOCAL)
        service.set_boot(s, "b", "temp", BootAction.WAIT)
    assert "sanboot" in await rig.script(A_IP)
    assert "nothing to boot yet" in await rig.script(B_IP)
    assert rig.scripts.admission.counters["booting"] == 0


async def test_metrics_are_for_loopback_or_the_admin_token(rig: Rig) -> None:
    assert (await rig.metrics(A_IP))[0] == 403  # a node
    assert (await rig.metrics(A_IP, authorization="Bearer wrong"))[0] == 403
    status, text = await rig.metrics(A_IP, authorization="Bearer sesame")
    assert status == 200 and "fleetboot_scripts_served" in text
    assert (await rig.metrics("127.0.0.1", **{"x-forwarded-for": "1.2.3.4"}))[0] == 403
    status, text = await rig.metrics("127.0.0.1")
    assert status == 200 and "fleetboot_transfers_max 1" in text
    assert registry.get("admission.max_booting") == 2


async def test_large_files_wait_for_a_transfer_slot(rig: Rig) -> None:
    gate = rig.boot.app.state.fleetboot.gate
    await gate.acquire()  # another node's kernel is on its way
    url = "/boot/files/images/k1/vmlinuz"  # 300 kB: a large file here

    async def fetch(address: str) -> tuple[int, dict[str, str], int]:
        async with rig.boot.client(address) as client:
            resp = await client.get(url)
        return resp.status_code, dict(resp.headers), len(resp.content)

    queued = asyncio.create_task(fetch(A_IP))
    for _ in range(100):
        if gate.counters["queued"]:
            break
        await asyncio.sleep(0.01)
    assert gate.counters["queued"] == 1
    status, headers, _ = await fetch(B_IP)  # the queue (1) is full: come back later
    assert status == 503 and headers["retry-after"] == "5"
    async with rig.boot.client(A_IP) as client:  # small files never wait
        assert (await client.get("/boot/files/images/k1/initrd.img")).status_code == 200
    gate.release()
    status, _, size = await queued
    assert status == 200 and size == 300_000
    assert gate.counters["active"] == 0
    event = next(e for e in rig.boot.kinds("file") if url.endswith(e.detail["path"]) and
             e.detail["status"] == 200)
    assert event.detail["queued_s"] > 0


def test_defaults_are_valid(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    ctx = boot.app.state.fleetboot
    assert not ctx.scripts.admission.limited and ctx.gate.limits.max_transfers == 32


async def test_stalled_stream_frees_its_slot(sqlite_db: Database, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sendfile too: a client that stops reading is given up, slot freed."""
    monkeypatch.setattr(httpfiles, "STALL_TIMEOUT_S", 0.5)
    boot = build_boot(sqlite_db, tmp_path)
    (boot.root / "big.bin").write_bytes(os.urandom(24 << 20))
    gate = boot.app.state.fleetboot.gate
    service = HttpService(boot.app, "127.0.0.1", 0, zero_copy=False)
    await service.start()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", service.port))
        await loop.sock_sendall(sock, b"GET /boot/files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(40):
            await asyncio.sleep(0.05)
            if gate.counters["active"]:
                break
        assert gate.counters["active"] == 1
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not gate.counters["active"]:
                break
        assert gate.counters["active"] == 0
        event = boot.kinds("file")[-1]
        assert not event.detail["complete"] and event.detail["bytes"] < 24 << 20
    finally:
        sock.close()
        await service.stop()
