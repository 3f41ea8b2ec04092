"""Power operations on many BMCs at once.

Each BMC gets one budget (``timeout_s``) for the whole operation, retries
included; at most ``concurrency`` BMCs are worked on at a time. Blocking
clients run on a pool of threads owned by this run and large enough that a
wedged BMC's abandoned call never holds up another BMC: the asyncio side stops
waiting when the budget is spent and the thread finishes on its own (pyghmi
and sushy both give up by themselves).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleetboot.power.core import (
    BootDevice,
    ConfigError,
    NoAnswerError,
    Operation,
    Outcome,
    PowerError,
    PowerState,
    Target,
    attempts_left,
    backoff_s,
    order_targets,
    reason_of,
)
from fleetboot.power.drivers import Driver, make_driver

if TYPE_CHECKING:
    from fleetboot.vm.service import VmService


@dataclass(frozen=True)
class BulkSettings:
    concurrency: int = 64
    timeout_s: float = 30.0  # per BMC, for the whole operation, retries included
    retries: int = 2
    soft_timeout_s: float = 10.0  # off: how long the OS gets before the hard power-off
    poll_s: float = 0.5

    @property
    def probe_timeout_s(self) -> float:
        # Room for a retry inside the budget when the first probe meets a lost packet.
        return max(0.5, min(3.0, self.timeout_s / 3))

    def check(self, operation: Operation) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.timeout_s <= 0:
            raise ConfigError("--timeout must be positive")
        if operation is Operation.OFF and self.soft_timeout_s >= self.timeout_s:
            raise ConfigError(f"--soft-timeout ({self.soft_timeout_s:g} s) must be shorter than "
                              f"--timeout ({self.timeout_s:g} s), or the hard power-off never "
                              "gets its turn")


async def wait_state(driver: Driver, want: PowerState, poll_s: float) -> PowerState:
    """Poll until the BMC reports ``want`` (the caller bounds the time)."""
    while True:
        state = await driver.state()
        if state is want:
            return state
        await asyncio.sleep(poll_s)


async def power_off(driver: Driver, soft_timeout_s: float, poll_s: float) -> PowerState:
    if await driver.state() is PowerState.OFF:
        return PowerState.OFF
    if soft_timeout_s > 0:
        await driver.press_off(hard=False)
        try:
            return await asyncio.wait_for(wait_state(driver, PowerState.OFF, poll_s),
                                          soft_timeout_s)
        except TimeoutError:
            pass  # the OS ignored the button: pull the plug
    await driver.press_off(hard=True)
    return await wait_state(driver, PowerState.OFF, poll_s)


async def power_on(driver: Driver, poll_s: float) -> PowerState:
    if await driver.state() is not PowerState.ON:
        await driver.press_on()
    return await wait_state(driver, PowerState.ON, poll_s)


async def perform(driver: Driver, operation: Operation, settings: BulkSettings) -> PowerState:
    """One operation on one BMC. Resumable: a retry after a partial cycle only finishes it."""
    poll = settings.poll_s
    await driver.reachable(settings.probe_timeout_s)
    if operation is Operation.STATUS:
        return await driver.state()
    if operation is Operation.ON:
        return await power_on(driver, poll)
    if operation is Operation.OFF:
        return await power_off(driver, settings.soft_timeout_s, poll)
    if operation is Operation.REBOOT_NETWORK:
        await driver.set_boot(BootDevice.NETWORK)
    if await driver.state() is not PowerState.OFF:
        await driver.press_off(hard=True)
        await wait_state(driver, PowerState.OFF, poll)
    return await power_on(driver, poll)


class BulkRunner:
    """Runs one operation on many targets; ``run`` returns one ``Outcome`` per node."""

    def __init__(self, settings: BulkSettings | None = None,
                 vms: Callable[[], VmService] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or BulkSettings()
        self.vms = vms
        self.clock = clock

    async def run(self, targets: Sequence[Target], operation: Operation,
                  on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        self.settings.check(operation)
        targets = order_targets(targets)
        if not targets:
            return []
        sem = asyncio.Semaphore(self.settings.concurrency)
        # Room for every BMC's call plus one abandoned call per attempt: never starved.
        workers = min(1024, len(targets) * (self.settings.retries + 2))
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleetboot-bmc")
        try:
            async def one(target: Target) -> Outcome:
                async with sem:
                    outcome = await self._one(target, operation, executor)
                if on_outcome is not None:
                    on_outcome(outcome)
                return outcome

            return list(await asyncio.gather(*(one(t) for t in targets)))
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _one(self, target: Target, operation: Operation, executor: Executor) -> Outcome:
        budget = self.settings.timeout_s
        start = self.clock()
        deadline = start + budget
        attempt = 0
        while True:
            attempt += 1
            error: PowerError
            try:
                driver = make_driver(target, executor, self.vms, budget)
                try:
                    state = await asyncio.wait_for(perform(driver, operation, self.settings),
                                                   max(0.0, deadline - self.clock()))
                finally:
                    await driver.close()
                return Outcome(target.node, target.node_id, operation, True, state,
                               attempts=attempt, seconds=self.clock() - start)
            except TimeoutError:
                error = NoAnswerError(f"{target.node}: no answer from {target.where()} within "
                                      f"{budget:g} s ({operation.value})")
            except PowerError as exc:
                error = exc
            except Exception as exc:  # a driver bug or an odd BMC must not sink the others
                error = PowerError(f"{target.node}: {type(exc).__name__}: {exc}")
            pause = backoff_s(attempt)
            if attempts_left(error, attempt, self.settings.retries) and \
                    self.clock() + pause < deadline:
                await asyncio.sleep(pause)
                continue
            return Outcome(target.node, target.node_id, operation, False, error=str(error),
                           reason=reason_of(error), attempts=attempt,
                           seconds=self.clock() - start)
