"""Graceful overload: finish the boots in progress before starting new ones.

Two limits, both configured in the ``admission:`` section and both visible in
``fleetboot.server.metrics``:

* :class:`BootAdmission` (pure, time is a parameter) counts **boots in
  progress**: a node enters when its iPXE script starts a profile boot and
  leaves when it reports UP, FAILED or OFF (the node-config state machine, read
  through a probe) or after ``boot_timeout_s``. Beyond ``max_booting`` a node
  is *deferred*: the script service hands it a WAIT script (sleep, ask again),
  which every firmware tolerates, instead of letting it time out somewhere in
  the middle of a boot. Deferred nodes are admitted in the order they were
  first deferred, so nobody starves behind luckier newcomers.
* :class:`TransferGate` bounds **concurrent large-file transfers** (kernels,
  initrds, images). Requests beyond the limit wait in a FIFO queue of bounded
  length for a bounded time, instead of all competing for the same bandwidth
  and event loop; a full queue or a wait past the bound answers 503 with
  ``Retry-After``, which iPXE obeys by asking again after that delay. One
  client (TCP peer address) holds at most ``max_per_client`` slots and places
  in line, and a transfer slower than its :class:`RateFloor` is cut off
  (``server/httpfiles.py`` enforces it; :class:`RateWatch` decides), so slow
  readers cannot keep the slots from everybody else (issue 11).

Boots are tracked (and counted in metrics) even without a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Node states (``fleetboot.nodeconfig.states.State`` values) that end a boot.
END_STATES = {"UP": "up", "FAILED": "failed", "OFF": "off"}

# node id -> (state name, wall-clock time the node entered it), or None if unknown.
StatusProbe = Callable[[int], tuple[str, float] | None]


@dataclass(frozen=True)
class AdmissionLimits:
    max_booting: int = 0  # 0: no limit (boots are still tracked)
    boot_timeout_s: float = 600.0
    wait_s: int = 5
    wait_jitter_s: int = 5

    @classmethod
    def from_config(cls, cfg: Any) -> AdmissionLimits:
        return cls(cfg.max_booting, cfg.boot_timeout_s, cfg.wait_s, cfg.wait_jitter_s)

    @property
    def stale_s(self) -> float:
        """A deferred node not seen for this long has gone away (two missed rounds)."""
        return 2.0 * (self.wait_s + self.wait_jitter_s) + 5.0


class BootAdmission:
    """Boots in progress and the line of deferred nodes. Pure: ``now`` is a parameter.

    ``booting`` and ``waiting`` are dicts in insertion order, so the oldest
    admission and the longest-waiting node are always first; every operation
    is O(1) amortised except :meth:`sweep`, which walks the boots in progress.
    """

    def __init__(self, limits: AdmissionLimits | None = None, *,
                 rng: random.Random | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.rng = rng or random.Random()
        self.booting: dict[int, float] = {}  # node id -> admitted at
        self.waiting: dict[int, list[float]] = {}  # node id -> [first deferred, last seen]
        # Counters and gauges, exposed live as ``admission.*``.
        self.counters: dict[str, int] = {
            "max_booting": self.limits.max_booting, "booting": 0, "waiting": 0,
            "admitted": 0, "readmitted": 0, "deferred": 0,
            "released_up": 0, "released_failed": 0, "released_off": 0, "released_timeout": 0,
            "released_other": 0,
        }

    @property
    def limited(self) -> bool:
        return self.limits.max_booting > 0

    @property
    def full(self) -> bool:
        return self.limited and len(self.booting) >= self.limits.max_booting

    def admit(self, node_id: int, now: float) -> bool:
        """May ``node_id`` start (or go on with) a boot now? False: send it a WAIT."""
        self._expire(now)
        c = self.counters
        if node_id in self.booting:  # the same boot asking again (retry, chain, reboot)
            c["readmitted"] += 1
            return True
        free = self.limits.max_booting - len(self.booting) if self.limited else 1 << 30
        if free > 0 and self._in_line(node_id, free, now):
            self.waiting.pop(node_id, None)
            self.booting[node_id] = now
            c["admitted"] += 1
            self._gauges()
            return True
        seen = self.waiting.get(node_id)
        if seen is None:
            self.waiting[node_id] = [now, now]
        else:
            seen[1] = now
        c["deferred"] += 1
        self._gauges()
        return False

    def _in_line(self, node_id: int, free: int, now: float) -> bool:
        """Whether ``node_id`` is among the first ``free`` live deferred nodes, or a
        newcomer while fewer than ``free`` nodes are waiting."""
        ahead, stale, result = 0, [], True
        for other, (_first, last) in self.waiting.items():
            if other == node_id:
                break
            if now - last > self.limits.stale_s:
                stale.append(other)
                continue
            ahead += 1
            if ahead >= free:
                result = False
                break
        for other in stale:
            del self.waiting[other]
        return result

    def release(self, node_id: int, reason: str = "other") -> bool:
        """End ``node_id``'s boot; returns whether it was in progress."""
        if self.booting.pop(node_id, None) is None:
            return False
        key = f"released_{reason}"
        self.counters[key if key in self.counters else "released_other"] += 1
        self._gauges()
        return True

    def forget(self, node_id: int) -> None:
        """The node is not booting a profile after all (its decision changed)."""
        if self.booting.pop(node_id, None) is not None:
            self.counters["admitted"] -= 1
            self._gauges()

    def sweep(self, now: float, probe: StatusProbe | None) -> list[tuple[int, str]]:
        """Release boots that ended (per ``probe``) or timed out; drop vanished waiters."""
        ended = [(n, "timeout") for n in self._expire(now)]
        if probe is not None:
            for node_id, admitted_at in list(self.booting.items()):
                status = probe(node_id)
                if status is None:
                    continue
                reason = END_STATES.get(status[0])
                # An UP from before the admission is the previous boot's.
                if reason is not None and status[1] >= admitted_at:
                    self.release(node_id, reason)
                    ended.append((node_id, reason))
        stale = [n for n, (_f, last) in self.waiting.items()
                 if now - last > self.limits.stale_s]
        for node_id in stale:
            del self.waiting[node_id]
        self._gauges()
        return ended

    def _expire(self, now: float) -> list[int]:
        limit = self.limits.boot_timeout_s
        gone = []
        while self.booting:
            node_id, admitted_at = next(iter(self.booting.items()))
            if now - admitted_at < limit:
                break
            del self.booting[node_id]
            self.counters["released_timeout"] += 1
            gone.append(node_id)
        if gone:
            self._gauges()
        return gone

    def wait_seconds(self) -> int:
        """How long a deferred node sleeps: jittered, so waiters do not return in step."""
        jitter = self.limits.wait_jitter_s
        return self.limits.wait_s + (self.rng.randint(0, jitter) if jitter else 0)

    def _gauges(self) -> None:
        self.counters["booting"] = len(self.booting)
        self.counters["waiting"] = len(self.waiting)


# --- large-file transfers ----------------------------------------------------------------


class GateBusy(Exception):
    """No transfer slot: the queue is full or the wait took too long (answer 503)."""

    def __init__(self, reason: str, retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s  # None: the gate's usual retry_after_s


@dataclass(frozen=True)
class RateFloor:
    """The slowest a transfer holding a slot may go: ``bytes_per_s`` over each window."""

    bytes_per_s: float = 32 << 10  # 0: no floor
    window_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.bytes_per_s > 0

    @property
    def window_bytes(self) -> int:
        """What one window must move (at least 64 KiB, so slices stay worth a syscall)."""
        return max(64 << 10, int(self.bytes_per_s * self.window_s))

    def describe(self) -> str:
        return f"{self.bytes_per_s / 1024:g} KiB/s over {self.window_s:g} s"


class RateWatch:
    """Is a transfer keeping above its floor? Pure: time and bytes are parameters.

    Windows follow each other: at the end of each, the bytes sent during it
    must reach ``floor.bytes_per_s * elapsed``. A burst into empty socket
    buffers counts for its own window only, so a reader that stalls after
    it is found out at the end of the next window.
    """

    def __init__(self, floor: RateFloor, now: float, sent: int = 0) -> None:
        self.floor = floor
        self.window_start = now
        self.window_sent = sent

    def too_slow(self, now: float, sent: int) -> bool:
        elapsed = now - self.window_start
        if not self.floor.enabled or elapsed < self.floor.window_s:
            return False
        if sent - self.window_sent < self.floor.bytes_per_s * elapsed:
            return True
        self.window_start, self.window_sent = now, sent
        return False


@dataclass(frozen=True)
class TransferLimits:
    max_transfers: int = 32  # 0: no limit (transfers are still counted)
    large_file_bytes: int = 1 << 20
    max_queued: int = 4096
    queue_timeout_s: float = 25.0
    retry_after_s: int = 5
    max_per_client: int = 8  # slots and places in line of one peer address; 0: no limit
    floor: RateFloor = RateFloor()
    # A peer cut off for reading too slowly gets no slot for this long (503 + Retry-After).
    slow_penalty_s: float = 60.0

    @classmethod
    def from_config(cls, cfg: Any) -> TransferLimits:
        return cls(cfg.max_transfers, cfg.large_file_bytes, cfg.max_queued_transfers,
                   cfg.queue_timeout_s, cfg.retry_after_s, cfg.max_transfers_per_client,
                   RateFloor(cfg.min_transfer_rate_kib_s * 1024, cfg.transfer_rate_window_s),
                   cfg.slow_client_penalty_s)


class TransferGate:
    """A FIFO semaphore with a bounded queue and a bounded wait, on the event loop.

    A released slot goes straight to the first waiter, so a newcomer can never
    overtake the queue. ``client`` (the peer address) is counted from the
    request until :meth:`release`; one client has at most ``max_per_client``
    transfers running or waiting, the next is refused at once. A client whose
    transfer was cut off for reading too slowly (:meth:`penalize`) is refused
    for ``slow_penalty_s``: each slot a slow reader gets is held for a whole
    rate window, while a boot's transfer takes a fraction of a second, so slow
    readers that came straight back would pile up on the slots again.
    """

    def __init__(self, limits: TransferLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or TransferLimits()
        self.clock = clock
        self.active = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._clients: dict[str, int] = {}  # peer address -> transfers running or waiting
        # peer address -> end of its penalty; in order of expiry (the penalty is constant)
        self._penalized: OrderedDict[str, float] = OrderedDict()
        self.counters: dict[str, int] = {
            "max": self.limits.max_transfers, "queue_max": self.limits.max_queued,
            "max_per_client": self.limits.max_per_client,
            "active": 0, "queued": 0, "clients": 0, "started": 0, "waited": 0,
            "rejected_full": 0, "rejected_timeout": 0, "rejected_client": 0,
            "rejected_penalized": 0, "aborted_too_slow": 0, "penalized": 0,
        }

    def applies(self, size: int) -> bool:
        return size >= self.limits.large_file_bytes

    async def acquire(self, client: str = "") -> None:
        """Take a slot (maybe after waiting in line) for ``client``; raises
        :class:`GateBusy`. Pair with ``release(client)``."""
        self._join(client)
        try:
            await self._acquire_slot()
        except BaseException:
            self._leave(client)
            raise

    def penalize(self, client: str) -> None:
        """``client``'s transfer was cut off for reading too slowly."""
        self.counters["aborted_too_slow"] += 1
        if not client or self.limits.slow_penalty_s <= 0:
            return
        self._penalized.pop(client, None)
        self._penalized[client] = self.clock() + self.limits.slow_penalty_s
        self.counters["penalized"] = len(self._penalized)

    def penalty_left(self, client: str) -> float:
        """Seconds until ``client`` may have a slot again (0: now)."""
        now = self.clock()
        while self._penalized:  # drop the expired ones, oldest first
            first, until = next(iter(self._penalized.items()))
            if until > now:
                break
            del self._penalized[first]
        self.counters["penalized"] = len(self._penalized)
        return max(0.0, self._penalized.get(client, now) - now)

    def _join(self, client: str) -> None:
        if client and (left := self.penalty_left(client)) > 0:
            self.counters["rejected_penalized"] += 1
            raise GateBusy(f"{client} read too slowly; no large transfers for {left:.0f} s",
                           math.ceil(left))
        cap = self.limits.max_per_client
        held = self._clients.get(client, 0)
        if client and cap > 0 and held >= cap:
            self.counters["rejected_client"] += 1
            raise GateBusy(f"{cap} transfers from {client} already")
        if client:
            self._clients[client] = held + 1
            self.counters["clients"] = len(self._clients)

    def _leave(self, client: str) -> None:
        held = self._clients.get(client, 0)
        if held > 1:
            self._clients[client] = held - 1
        elif held:
            del self._clients[client]
            self.counters["clients"] = len(self._clients)

    def held_by(self, client: str) -> int:
        return self._clients.get(client, 0)

    async def _acquire_slot(self) -> None:
        limit = self.limits.max_transfers
        if limit <= 0 or (self.active < limit and not self._queue):
            self._take()
            return
        if len(self._queue) >= self.limits.max_queued:
            self.counters["rejected_full"] += 1
            raise GateBusy("too many transfers waiting")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._queue.append(waiter)
        self.counters["waited"] += 1
        self._gauges()
        timer = loop.call_later(self.limits.queue_timeout_s, self._time_out, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # The request went away while in line; if the slot was handed over
            # at that very moment, pass it on.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()
            else:
                self._drop(waiter)
            raise
        finally:
            timer.cancel()
        self.counters["started"] += 1

    def _take(self) -> None:
        self.active += 1
        self.counters["started"] += 1
        self._gauges()

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._drop(waiter)
            self.counters["rejected_timeout"] += 1
            waiter.set_exception(GateBusy("waited too long for a transfer slot"))

    def _drop(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # already handed a slot or dropped
            self._queue.remove(waiter)
        self._gauges()

    def release(self, client: str = "") -> None:
        self._leave(client)
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves on; ``active`` stays
                self._gauges()
                return
        self.active = max(0, self.active - 1)
        self._gauges()

    def _gauges(self) -> None:
        self.counters["active"] = self.active
        self.counters["queued"] = len(self._queue)
