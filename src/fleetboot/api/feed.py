"""One feed of node-state changes for every open web view (``GET /api/v1/events``).

However many views are open, the fleet is looked at once per tick, by one task
that runs only while someone listens: with the server running, the state
machine's dict is compared with the previous tick's by identity (a
``NodeStatus`` is immutable and replaced on every change, so 10,000 nodes cost
a fraction of a millisecond); without it, the stored states are read in a
thread once a second. Each subscriber gets its own bounded queue; one that
cannot keep up is told to reload rather than slowing anyone down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetboot.api import views
from fleetboot.nodeconfig.states import NodeStatus

log = logging.getLogger(__name__)

QUEUE_LIMIT = 2000
Message = tuple[str, dict[str, Any]]  # (event name, data)


@dataclass(frozen=True)
class Snapshot:
    statuses: Mapping[int, NodeStatus]
    names: Mapping[int, str]


class StateFeed:
    def __init__(self, take: Callable[[], Snapshot], *, interval_s: float,
                 in_thread: bool) -> None:
        self._take, self.interval_s, self._in_thread = take, interval_s, in_thread
        self._subscribers: set[asyncio.Queue[Message]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: Snapshot | None = None
        self._counts: dict[str, int] = {}

    async def _snapshot(self) -> Snapshot:
        return await asyncio.to_thread(self._take) if self._in_thread else self._take()

    async def subscribe(self) -> asyncio.Queue[Message]:
        queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_LIMIT)
        if self._last is None:
            self._last = await self._snapshot()
            self._counts = views.state_counts(list(self._last.names), self._last.statuses)
        queue.put_nowait(("counts", self._counts))
        self._subscribers.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="state-feed")
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Message]) -> None:
        self._subscribers.discard(queue)
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            self._task, self._last = None, None

    async def _run(self) -> None:
        while self._subscribers:
            await asyncio.sleep(self.interval_s)
            try:
                await self._tick()
            except Exception:  # a failed look is retried next tick; the views stay open
                log.exception("reading node states for the live view failed")

    async def _tick(self) -> None:
        now = await self._snapshot()
        last = self._last
        self._last = now
        if last is None:
            return
        changed = [i for i, st in now.statuses.items() if last.statuses.get(i) is not st]
        if not changed and now.names.keys() == last.names.keys():
            return
        messages: list[Message] = [
            ("state", {"name": now.names[i], **views.status_doc(now.statuses.get(i))})
            for i in changed if i in now.names]
        counts = views.state_counts(list(now.names), now.statuses)
        if counts != self._counts:
            self._counts = counts
            messages.append(("counts", counts))
        for queue in list(self._subscribers):
            for message in messages:
                try:
                    queue.put_nowait(message)
                except asyncio.QueueFull:  # too slow a reader: it reloads instead
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.get_nowait()
                        queue.put_nowait(("reload", {}))
                    break


def live_snapshot(nodeconfig: Any) -> Callable[[], Snapshot]:
    """The running state machine's view (a shallow copy: the next tick compares to it)."""
    names: dict[int, str] = {}
    seen_view: list[Any] = [None]

    def take() -> Snapshot:
        view = nodeconfig.view
        if view is not seen_view[0]:  # names change only with a new inventory view
            seen_view[0] = view
            names.clear()
            names.update((i, d.name) for i, d in view.by_id.items())
        return Snapshot(dict(nodeconfig.statuses), dict(names))
    return take
