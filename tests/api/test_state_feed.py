"""The shared live feed: one look per tick for every view, changes found by identity."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

from fleetboot.api.feed import QUEUE_LIMIT, StateFeed, live_snapshot
from fleetboot.nodeconfig.states import NodeStatus, State


class FakeView:  # what the feed reads of NodeConfigService.view
    def __init__(self, names: dict[int, str]) -> None:
        self.by_id = {i: SimpleNamespace(name=n) for i, n in names.items()}


async def _drain(queue: asyncio.Queue) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_changes_reach_every_subscriber_once() -> None:
    nc = SimpleNamespace(statuses={1: NodeStatus(State.PXEBOOTING, since=1.0)},
                         view=FakeView({1: "a", 2: "b"}))
    looks = 0
    take = live_snapshot(nc)

    def counted():  # type: ignore[no-untyped-def]
        nonlocal looks
        looks += 1
        return take()

    feed = StateFeed(counted, interval_s=0.01, in_thread=False)
    q1, q2 = await feed.subscribe(), await feed.subscribe()
    first = await _drain(q1)
    assert first == [("counts", {**{s.value: 0 for s in State}, "PXEBOOTING": 1, "OFF": 1})]
    await asyncio.sleep(0.05)
    assert await _drain(q1) == []  # nothing changed: nothing sent
    nc.statuses = {1: replace(nc.statuses[1], state=State.UP, since=2.0),
                   2: NodeStatus(State.BOOTING, since=2.0)}
    await asyncio.sleep(0.05)
    for q in (q1, q2):
        got = [m for m in await _drain(q) if m[0] == "state"]
        assert sorted((m[1]["name"], m[1]["state"]) for m in got) == [("a", "UP"),
                                                                      ("b", "BOOTING")]
    before = looks
    await asyncio.sleep(0.05)
    assert looks - before <= 10  # one look per tick, not one per subscriber
    feed.unsubscribe(q1)
    feed.unsubscribe(q2)
    await asyncio.sleep(0.03)
    stopped = looks
    await asyncio.sleep(0.05)
    assert looks == stopped  # nobody listens: nobody looks


async def test_a_slow_reader_is_told_to_reload() -> None:
    nc = SimpleNamespace(statuses={}, view=FakeView({i: f"n{i}" for i in range(3)}))
    feed = StateFeed(live_snapshot(nc), interval_s=0.005, in_thread=False)
    queue = await feed.subscribe()
    for k in range(QUEUE_LIMIT // 3 + 5):  # never read: the queue fills up
        nc.statuses = {i: NodeStatus(State.BOOTING, since=float(k)) for i in range(3)}
        await asyncio.sleep(0.006)
    kinds = [m[0] for m in await _drain(queue)]
    assert "reload" in kinds
    feed.unsubscribe(queue)
