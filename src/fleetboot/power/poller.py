"""Poll every configured BMC's power state at an interval (``fleetboot power poll``).

Each round is one bulk ``status`` run. The answers go to ``power_settings``
(Core statements: no inventory revision bump); only a change of state, or a
BMC that stops answering, goes on the node's timeline, so a quiet fleet does
not fill timelines with "still on". Each round also flags nodes that were
powered on, cycled or rebooted and are not UP ``come_back_s`` later
(``service.flag_not_back``: a ``not-back`` event with the BMC's last answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select

from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Node
from fleetboot.power import service
from fleetboot.power.bulk import BulkRunner, BulkSettings
from fleetboot.power.core import Operation, Outcome, Target
from fleetboot.power.models import PowerSetting
from fleetboot.power.secrets import SecretBox

if TYPE_CHECKING:
    from fleetboot.vm.service import VmService


def changed(previous: dict[int, str | None], outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes worth a timeline event: a new state, or a failure after a success."""
    out = []
    for o in outcomes:
        before = previous.get(o.node_id)
        now = o.state.value if o.ok else "error"
        if now != (before or "unknown"):
            out.append(o)
    return out


class PowerPoller:
    def __init__(self, db: Database, box: Callable[[], SecretBox], interval_s: float = 60.0,
                 settings: BulkSettings | None = None,
                 vms: Callable[[], VmService] | None = None,
                 come_back_s: float = 900.0) -> None:
        self.db = db
        self.box = box
        self.interval_s = interval_s
        self.settings = settings or BulkSettings(timeout_s=min(30.0, interval_s), retries=1)
        self.vms = vms
        self.come_back_s = come_back_s
        self._last: dict[int, str | None] = {}
        self.not_back: list[str] = []
        self.rounds = 0

    def _nodes(self) -> list[tuple[int, str]]:
        with self.db.session() as s:
            rows = s.execute(select(Node.id, Node.name).join(
                PowerSetting, PowerSetting.node_id == Node.id).order_by(Node.name)).all()
            if not self._last:
                self._last = {int(n): st for n, st in s.execute(
                    select(PowerSetting.node_id, PowerSetting.state))}
        return [(int(i), str(n)) for i, n in rows]

    def _targets(self) -> list[Target]:
        nodes = self._nodes()
        with self.db.session() as s:
            return service.targets(s, self.box, nodes)[0]

    async def poll_once(self) -> list[Outcome]:
        # Database work on a worker thread: the poller may share a loop with servers.
        found = await asyncio.to_thread(self._targets)
        outcomes = await BulkRunner(self.settings, self.vms).run(found, Operation.STATUS)
        news = changed(self._last, outcomes)
        await asyncio.to_thread(service.record, self.db, outcomes, None, news)
        self._last.update({o.node_id: o.state.value if o.ok else "error" for o in outcomes})
        self.not_back = await asyncio.to_thread(service.flag_not_back, self.db, time.time(),
                                                self.come_back_s)
        self.rounds += 1
        return outcomes

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await self.poll_once()
            wait = max(0.0, self.interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
