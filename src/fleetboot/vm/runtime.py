"""QEMU processes and QMP: start, stop, observe the PCI buses, hotplug, unplug, migrate.

This is the I/O adapter of the VM concern: it runs ``qemu-system-x86_64``
(always from an argv list, ``-daemonize`` so a CLI command can return while
the VM runs on), and talks to it with the ``qemu.qmp`` library. It decides
nothing about slots; the planner did that, and :mod:`fleetboot.vm.service`
keeps the inventory in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, StateError

from fleetboot.vm.drift import PciFunction, PciView, parse_query_pci
from fleetboot.vm.errors import QemuError, QemuGoneError
from fleetboot.vm.planner import Layout

MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; keep a margin
_GONE = (EOFError, ConnectionError, StateError, ExecInterruptedError, BrokenPipeError)


# ---------------------------------------------------------------------------
# QMP
# ---------------------------------------------------------------------------


class Qmp:
    """One QMP connection; errors become QemuError (refused) or QemuGoneError (QEMU went away)."""

    def __init__(self, socket_path: str, name: str = "fleetboot") -> None:
        self.socket_path = socket_path
        self.client = QMPClient(name)

    async def connect(self, timeout: float = 10.0) -> Qmp:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.client.connect(self.socket_path)
                return self
            except (ConnectError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise QemuGoneError(
                        f"cannot reach QEMU's QMP socket {self.socket_path}: {exc}; "
                        "is the VM running?"
                    ) from None
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    async def __aenter__(self) -> Qmp:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def cmd(self, command: str, args: Mapping[str, Any] | None = None) -> Any:
        try:
            return await self.client.execute(command, dict(args) if args else None)
        except ExecuteError as exc:
            raise QemuCommandError(command, exc.error_class, exc.error.error.desc) from None
        except _GONE as exc:
            raise QemuGoneError(f"QEMU went away during {command} ({type(exc).__name__})") from None

    def listener(self, names: Iterable[str]) -> contextlib.AbstractContextManager[Any]:
        return self.client.listener(tuple(names))


class QemuCommandError(QemuError):
    """QEMU answered a QMP command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


def _not_found(exc: QemuCommandError) -> bool:
    return exc.error_class == "DeviceNotFound" or "not found" in exc.desc


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPaths:
    """Per-process files: the QMP socket and the pidfile QEMU writes after daemonizing."""

    directory: Path
    stem: str

    @property
    def qmp_socket(self) -> str:
        return str(self.directory / f"{self.stem}.qmp")

    @property
    def pidfile(self) -> str:
        return str(self.directory / f"{self.stem}.pid")

    @property
    def migration_socket(self) -> str:
        return str(self.directory / f"{self.stem}.mig")

    def remove(self) -> None:
        """Delete what a QEMU process that is gone left behind (a killed one removes nothing)."""
        for path in (self.qmp_socket, self.pidfile, self.migration_socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def check(self) -> None:
        if len(self.qmp_socket) > MAX_SOCKET_PATH:
            raise QemuError(
                f"QMP socket path {self.qmp_socket} is longer than {MAX_SOCKET_PATH} bytes "
                "(unix socket limit); use a shorter run directory (--run-dir)"
            )


@dataclass(frozen=True)
class QemuProcess:
    pid: int
    qmp_socket: str

    def alive(self) -> bool:
        """Running and still the QEMU we started (pids get reused)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
        return not zombie and self.qmp_socket.encode() in cmdline

    def signal(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def wait_gone(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True


async def launch(argv: Sequence[str], paths: RunPaths, netns: str | None = None,
                 timeout: float = 60.0) -> QemuProcess:
    """Run QEMU with ``-daemonize``: returns once the VM exists and its QMP socket listens."""
    paths.check()
    paths.directory.mkdir(parents=True, exist_ok=True)
    paths.remove()  # stale files of a process that died
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *full, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise QemuError(f"{full[0]} not found: run scripts/install-system-deps.sh") from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise QemuError(f"QEMU did not finish starting within {timeout:.0f} s") from None
    message = err.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise QemuError(f"QEMU failed to start: {_last_lines(message)}")
    try:
        pid = int(Path(paths.pidfile).read_text().strip())
    except (OSError, ValueError):
        raise QemuError(f"QEMU started but wrote no pidfile {paths.pidfile}") from None
    return QemuProcess(pid, paths.qmp_socket)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no error message"


async def quit_qemu(process: QemuProcess, timeout: float = 10.0) -> None:
    """``quit`` over QMP, SIGKILL if that fails; returns when the process is gone."""
    if not process.alive():
        return
    with contextlib.suppress(QemuError):
        async with Qmp(process.qmp_socket) as qmp:
            await qmp.cmd("quit")
    if not await process.wait_gone(timeout):
        process.signal(signal.SIGKILL)
        await process.wait_gone(timeout)


async def machine_types(qemu: str = "qemu-system-x86_64") -> dict[str, str]:
    """``-machine help`` as alias -> versioned type (``q35`` -> ``pc-q35-7.2``), plus identities."""
    out = await _capture([qemu, "-machine", "help"])
    return parse_machine_help(out)


def parse_machine_help(text: str) -> dict[str, str]:
    types: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or line.startswith("Supported"):
            continue
        name = parts[0]
        types.setdefault(name, name)
        if "(alias of" in line:
            types[name] = line.split("(alias of", 1)[1].split(")", 1)[0].strip()
    return types


async def device_help(qemu: str = "qemu-system-x86_64") -> str:
    return await _capture([qemu, "-device", "help"])


async def _capture(argv: Sequence[str]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise QemuError(f"{argv[0]} not found: run scripts/install-system-deps.sh") from None
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise QemuError(f"{' '.join(argv)} failed: {_last_lines(err.decode(errors='replace'))}")
    return out.decode(errors="replace")


async def qemu_img_create(path: str, size_bytes: int, qemu_img: str = "qemu-img") -> None:
    await _capture([qemu_img, "create", "-q", "-f", "qcow2", path, str(size_bytes)])


async def qemu_img_info(path: str, qemu_img: str = "qemu-img") -> str:
    return await _capture([qemu_img, "info", "--output=json", "-U", path])


# ---------------------------------------------------------------------------
# Observing the PCI buses
# ---------------------------------------------------------------------------


async def query_pci(qmp: Qmp, root_bus: str) -> PciView:
    return parse_query_pci(await qmp.cmd("query-pci"), root_bus)


async def observe(qmp: Qmp, layout: Layout) -> PciView:
    """``query-pci``, plus QOM for devices behind root ports the firmware has not numbered.

    Before the firmware runs (``-S``) every root port's secondary bus is 0 and
    ``query-pci`` lists nothing behind it; QOM still knows each device's
    parent bus and ``addr``.
    """
    view = await query_pci(qmp, layout.root_bus)
    if not view.unenumerated:
        return view
    extra: list[PciFunction] = []
    for p in layout.placements:
        slot = layout.slot_of(p)
        if slot is None or slot.addr.bus not in view.unenumerated:
            continue
        found = await qom_position(qmp, p.device)
        if found is not None:
            extra.append(found)
    return PciView(view.functions + tuple(extra), view.unenumerated)


async def qom_position(qmp: Qmp, device: str) -> PciFunction | None:
    path = f"/machine/peripheral/{device}"
    try:
        bus_path = str(await qmp.cmd("qom-get", {"path": path, "property": "parent_bus"}))
        devfn = int(await qmp.cmd("qom-get", {"path": path, "property": "addr"}))
    except QemuCommandError as exc:
        if _not_found(exc):
            return None
        raise
    return PciFunction(bus_path.rsplit("/", 1)[-1], devfn >> 3, devfn & 7, device, source="qom")


async def device_exists(qmp: Qmp, device: str) -> bool:
    try:
        await qmp.cmd("qom-get", {"path": f"/machine/peripheral/{device}", "property": "type"})
    except QemuCommandError as exc:
        if _not_found(exc):
            return False
        raise
    return True


async def wait_visible(qmp: Qmp, layout: Layout, device: str, timeout: float = 5.0) -> PciFunction:
    """Poll until ``device`` shows on a PCI bus; raise if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        found = (await observe(qmp, layout)).by_id().get(device)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise QemuError(f"{device} was added but does not show in query-pci after {timeout} s")
        await asyncio.sleep(0.01)


async def wait_enumerated(qmp: Qmp, layout: Layout, timeout: float = 20.0) -> PciView:
    """Wait until the firmware has numbered every root port (needs a running guest).

    SeaBIOS numbers bridges one after the other, and while it works two ports
    can briefly share a number (``query-pci`` then lists one port's devices
    under the other): wait for unique numbers and two equal views in a row.
    """
    deadline = time.monotonic() + timeout
    previous: PciView | None = None
    while True:
        view = await query_pci(qmp, layout.root_bus)
        if view.settled and view == previous:
            return view
        if time.monotonic() > deadline:
            raise QemuError(f"the firmware did not number the root ports within {timeout} s "
                            f"({', '.join(sorted(view.unenumerated))}); is the VM paused?")
        previous = view
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------
# Steps with rollback
# ---------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    run: Callable[[], Awaitable[None]]
    undo: Callable[[], Awaitable[None]] | None = None


@dataclass
class StepFailure(QemuError):
    """A step failed; ``undone`` were rolled back, ``stuck`` could not be."""

    step: str
    cause: Exception
    undone: list[str] = field(default_factory=list)
    stuck: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"{self.step} failed: {self.cause}"
        if self.undone:
            text += f"; rolled back {', '.join(self.undone)}"
        if self.stuck:
            stuck = ", ".join(f"{k} ({v})" for k, v in self.stuck.items())
            text += f"; could not roll back {stuck}"
        return text


StepHook = Callable[[str], Awaitable[None]]


async def run_steps(steps: Sequence[Step], after_step: StepHook | None = None) -> None:
    """Run steps in order; on any failure undo the finished ones in reverse order.

    ``after_step`` is called with each finished step's name (progress reporting;
    tests use it to kill QEMU half-way).
    """
    done: list[Step] = []
    try:
        for step in steps:
            await step.run()
            done.append(step)
            if after_step is not None:
                await after_step(step.name)
    except Exception as exc:
        failure = StepFailure(steps[len(done)].name if len(done) < len(steps) else "hook", exc)
        for step in reversed(done):
            if step.undo is None:
                continue
            try:
                await step.undo()
                failure.undone.append(step.name)
            except Exception as undo_exc:
                failure.stuck[step.name] = str(undo_exc)
        raise failure from exc


# ---------------------------------------------------------------------------
# Hotplug and unplug
# ---------------------------------------------------------------------------


class UnplugOutcome(enum.StrEnum):
    DELETED = "deleted"
    GUEST_ERROR = "guest-error"
    TIMEOUT = "timeout"


async def unplug(qmp: Qmp, device: str, timeout: float) -> UnplugOutcome:
    """``device_del`` and wait for the guest: DEVICE_DELETED, a guest error, or the timeout."""
    events = ("DEVICE_DELETED", "DEVICE_UNPLUG_GUEST_ERROR")
    with qmp.listener(events) as listener:
        try:
            await qmp.cmd("device_del", {"id": device})
        except QemuCommandError as exc:
            if _not_found(exc):
                return UnplugOutcome.DELETED
            raise
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                event = await asyncio.wait_for(listener.get(), remaining)
            except TimeoutError:
                break
            if event.get("data", {}).get("device") != device:
                continue  # e.g. the virtio backend child, or another device
            if event["event"] == "DEVICE_DELETED":
                return UnplugOutcome.DELETED
            return UnplugOutcome.GUEST_ERROR
    # Events can race the listener on a busy QEMU: ask QOM before calling it a timeout.
    return UnplugOutcome.TIMEOUT if await device_exists(qmp, device) else UnplugOutcome.DELETED


async def del_backend(qmp: Qmp, command: str, args: Mapping[str, Any]) -> None:
    """netdev_del / blockdev-del that accepts "already gone"."""
    try:
        await qmp.cmd(command, args)
    except QemuCommandError as exc:
        if not _not_found(exc):
            raise


def device_step(qmp: Qmp, props: Mapping[str, Any], unplug_timeout: float) -> Step:
    """device_add, undone by an unplug that must complete (else the slot stays held)."""
    device = str(props["id"])

    async def run() -> None:
        await qmp.cmd("device_add", props)

    async def undo() -> None:
        outcome = await unplug(qmp, device, unplug_timeout)
        if outcome is not UnplugOutcome.DELETED:
            raise UnplugStuck(device, outcome)

    return Step(f"device_add {device}", run, undo)


class UnplugStuck(QemuError):
    def __init__(self, device: str, outcome: UnplugOutcome) -> None:
        super().__init__(f"the guest did not release {device} ({outcome})")
        self.device = device
        self.outcome = outcome


def _backend_step(qmp: Qmp, add: str, remove: str, props: Mapping[str, Any], key: str,
                  user: str | None) -> Step:
    """Add a backend; undo removes it, unless ``user`` (its device) is still in QEMU."""
    name = str(props[key])

    async def run() -> None:
        await qmp.cmd(add, props)

    async def undo() -> None:
        if user is not None and await device_exists(qmp, user):
            raise QemuError(f"{name} is kept: {user} still uses it")
        await del_backend(qmp, remove, {key: name})

    return Step(f"{add} {name}", run, undo)


def netdev_step(qmp: Qmp, props: Mapping[str, Any], user: str | None = None) -> Step:
    return _backend_step(qmp, "netdev_add", "netdev_del", props, "id", user)


def blockdev_step(qmp: Qmp, props: Mapping[str, Any], user: str | None = None) -> Step:
    return _backend_step(qmp, "blockdev-add", "blockdev-del", props, "node-name", user)


def verify_step(qmp: Qmp, layout: Layout, device: str) -> Step:
    """The device shows in query-pci (or QOM, before enumeration) at its planned address."""

    async def run() -> None:
        found = await wait_visible(qmp, layout, device)
        want = layout.address_of(device)
        if found.addr != want:
            raise QemuError(f"{device} appeared at {found.addr}, not at the planned {want}")

    return Step(f"verify {device}", run)


# ---------------------------------------------------------------------------
# Migration
# ---------------------------------------------------------------------------


async def incoming_uri(dst: Qmp, requested: str) -> str:
    """The URI the source must use: a ``tcp:...:0`` destination reports its real port."""
    if not requested.startswith("tcp:") or not requested.endswith(":0"):
        return requested
    info = await dst.cmd("query-migrate")
    for addr in info.get("socket-address", []):
        if addr.get("type") == "inet":
            return f"tcp:{addr['host']}:{addr['port']}"
    raise QemuError("the destination QEMU did not report its migration port")


async def migrate(src: Qmp, uri: str, timeout: float) -> dict[str, Any]:
    """Run a migration to ``uri`` and wait for it to complete (cancelled on timeout)."""
    await src.cmd("migrate", {"uri": uri})
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = await src.cmd("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise QemuError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            with contextlib.suppress(QemuError):
                await src.cmd("migrate_cancel")
            raise QemuError(f"migration did not complete within {timeout:.0f} s; cancelled")
        await asyncio.sleep(0.02)


async def wait_incoming_done(qmp: Qmp, timeout: float) -> str:
    """Wait until a migration destination has left ``inmigrate``; its new run state.

    It runs if the source ran, and stays paused (or in prelaunch, for a source
    started with -S that never ran) otherwise.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = str((await qmp.cmd("query-status"))["status"])
        if status != "inmigrate":
            return status
        if time.monotonic() > deadline:
            raise QemuError(f"the destination is still receiving after {timeout:.0f} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def connected(process: QemuProcess, timeout: float = 10.0) -> AsyncIterator[Qmp]:
    if not process.alive():
        raise QemuGoneError(f"QEMU (pid {process.pid}) is not running")
    qmp = Qmp(process.qmp_socket)
    await qmp.connect(timeout)
    try:
        yield qmp
    finally:
        await qmp.close()
