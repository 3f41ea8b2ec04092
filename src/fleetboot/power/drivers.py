"""Power drivers: IPMI over LAN (pyghmi), Redfish (sushy), Fleetboot's own VMs (QMP).

Every driver offers the same four primitives (read the state, press on, press
off soft or hard, set the one-time boot device); ``ops.py`` builds status,
on, off-with-timeout, cycle and reboot from them. pyghmi and sushy block, so
their clients run on a worker thread (``ThreadedDriver``); the QMP driver is
asynchronous and goes through ``VmService``, so starting a stopped VM is the
same as ``fleetboot vm start``.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

from fleetboot.power.core import (
    AuthError,
    BootDevice,
    ConfigError,
    DriverName,
    NoAnswerError,
    PowerError,
    PowerState,
    Target,
    UnsupportedError,
)

if TYPE_CHECKING:
    from fleetboot.vm.service import VmService

T = TypeVar("T")


class Driver(ABC):
    """The primitives every BMC offers."""

    def __init__(self, target: Target) -> None:
        self.target = target

    async def reachable(self, timeout_s: float) -> None:
        """Raise ``NoAnswerError`` if the BMC is silent (checked before anything else)."""
        return None

    @abstractmethod
    async def state(self) -> PowerState: ...

    @abstractmethod
    async def press_on(self) -> None: ...

    @abstractmethod
    async def press_off(self, hard: bool) -> None: ...

    @abstractmethod
    async def set_boot(self, device: BootDevice) -> None: ...

    async def close(self) -> None:
        return None


class BlockingClient(ABC):
    """The same primitives for a blocking library; always called on a worker thread."""

    @abstractmethod
    def state(self) -> PowerState: ...

    @abstractmethod
    def press_on(self) -> None: ...

    @abstractmethod
    def press_off(self, hard: bool) -> None: ...

    @abstractmethod
    def set_boot(self, device: BootDevice) -> None: ...

    def close(self) -> None:
        return None


class ThreadedDriver(Driver):
    """Runs a ``BlockingClient`` on the bulk runner's own thread pool."""

    def __init__(self, target: Target, client: BlockingClient, executor: Executor) -> None:
        super().__init__(target)
        self.client = client
        self.executor = executor

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def state(self) -> PowerState:
        return await self._call(self.client.state)

    async def press_on(self) -> None:
        await self._call(self.client.press_on)

    async def press_off(self, hard: bool) -> None:
        await self._call(self.client.press_off, hard)

    async def set_boot(self, device: BootDevice) -> None:
        await self._call(self.client.set_boot, device)

    async def close(self) -> None:
        # Wait for the logout (the next command may log in with the same credentials), but
        # only briefly: a wedged BMC's thread may still be inside a call.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call(self.client.close), 5.0)


# --- IPMI ------------------------------------------------------------------


def _ipmi_error(exc: Exception, target: Target) -> PowerError:
    text = str(exc) if str(exc) not in ("", "None") else ""
    low = text.lower()
    if "password" in low or "unauthorized" in low or "username" in low or "privilege" in low:
        return AuthError(f"{target.node}: the BMC at {target.where()} refused the credentials "
                         f"({text}); fix them with `fleetboot power set {target.node} ...`")
    if not text or "timeout" in low or "unreachable" in low or "connect" in low:
        return NoAnswerError(f"{target.node}: no answer from the BMC at {target.where()}; "
                             "check its address, port and network")
    return PowerError(f"{target.node}: the BMC at {target.where()} answered: {text}")


def _forget_ipmi_session(session: Any) -> None:
    # pyghmi 1.6 keeps a logged-out session in ``initting_sessions`` and hands it to the
    # next Command with the same credentials, which then fails ("'<' not supported
    # between float and NoneType"); drop it so the next Command logs in afresh.
    from pyghmi.ipmi.private.session import Session

    for key, value in list(Session.initting_sessions.items()):
        if value is session:
            Session.initting_sessions.pop(key, None)


class IpmiClient(BlockingClient):
    """IPMI 2.0 over LAN (RMCP+) with pyghmi, the library Ironic's tools use."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._cmd: Any = None

    def _command(self) -> Any:
        if self._cmd is None:
            from pyghmi.ipmi import command

            creds = self.target.credentials
            try:
                self._cmd = command.Command(
                    bmc=self.target.address, userid=creds.username or "",
                    password=creds.password or "", port=self.target.port or 623,
                    keepalive=False)
            except Exception as exc:  # pyghmi raises IpmiException and plain errors alike
                raise _ipmi_error(exc, self.target) from None
        return self._cmd

    def _run(self, fn: Callable[[Any], T]) -> T:
        cmd = self._command()
        try:
            return fn(cmd)
        except PowerError:
            raise
        except Exception as exc:
            raise _ipmi_error(exc, self.target) from None

    def state(self) -> PowerState:
        answer = self._run(lambda c: c.get_power())
        return PowerState(answer.get("powerstate", "unknown"))

    def press_on(self) -> None:
        self._run(lambda c: c.set_power("on"))

    def press_off(self, hard: bool) -> None:
        self._run(lambda c: c.set_power("off" if hard else "shutdown"))

    def set_boot(self, device: BootDevice) -> None:
        name = "network" if device is BootDevice.NETWORK else "hd"
        self._run(lambda c: c.set_bootdev(name, persist=False))

    def close(self) -> None:
        cmd, self._cmd = self._cmd, None
        session = getattr(cmd, "ipmi_session", None)
        if session is not None:
            # Free the BMC's session slot (BMCs have few). The session may already be gone.
            with contextlib.suppress(Exception):
                session.logout()
            _forget_ipmi_session(session)


class IpmiDriver(ThreadedDriver):
    """pyghmi on a worker thread, after an asyncio probe (``ipmi_probe``): silent BMCs
    never get a pyghmi session, where they would slow down everyone else's."""

    async def reachable(self, timeout_s: float) -> None:
        from fleetboot.power import ipmi_probe

        if not await ipmi_probe.answers(self.target.address, self.target.port or 623,
                                        timeout_s):
            raise NoAnswerError(f"{self.target.node}: no answer from the BMC at "
                                f"{self.target.where()} within {timeout_s:g} s; check its "
                                "address, port and network")


# --- Redfish ---------------------------------------------------------------


def redfish_url(target: Target) -> str:
    if target.address.startswith(("https://", "http://")):
        return target.address.rstrip("/")
    port = f":{target.port}" if target.port else ""
    return f"https://{target.address}{port}"


def _redfish_error(exc: Exception, target: Target) -> PowerError:
    import sushy

    text = str(exc)
    if isinstance(exc, sushy.exceptions.AccessError):
        return AuthError(f"{target.node}: the Redfish service at {redfish_url(target)} refused "
                         f"the credentials (HTTP {getattr(exc, 'status_code', '401')}); fix them "
                         f"with `fleetboot power set {target.node} ...`")
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text:
        return ConfigError(f"{target.node}: the TLS certificate of {redfish_url(target)} is not "
                           "trusted; name the BMC's CA file with `fleetboot power set "
                           f"{target.node} --ca-file PATH`")
    if isinstance(exc, sushy.exceptions.ConnectionError):
        return NoAnswerError(f"{target.node}: no answer from the Redfish service at "
                             f"{redfish_url(target)}; check its address and port")
    if isinstance(exc, sushy.exceptions.ResourceNotFoundError):
        return ConfigError(f"{target.node}: {redfish_url(target)} has no system "
                           f"{target.system!r}; check `--system`")
    return PowerError(f"{target.node}: the Redfish service at {redfish_url(target)} "
                      f"answered: {text[:300]}")


class RedfishClient(BlockingClient):
    """Redfish over HTTPS with sushy, Ironic's Redfish library; TLS verified by default."""

    def __init__(self, target: Target, timeout_s: float = 10.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._system: Any = None

    def _get_system(self) -> Any:
        if self._system is not None:
            return self._system
        import sushy
        from sushy import auth

        creds = self.target.credentials
        verify: str | bool = self.target.ca_file or True
        conn = sushy.Sushy(
            redfish_url(self.target), verify=verify,
            auth=auth.BasicAuth(username=creds.username or "", password=creds.password or ""),
            server_side_retries=0, connect_timeout=self.timeout_s, read_timeout=self.timeout_s)
        path = self.target.system
        if path is None:
            members = sorted(conn.get_system_collection().members_identities)
            if len(members) != 1:
                raise ConfigError(
                    f"{self.target.node}: {redfish_url(self.target)} has {len(members)} "
                    f"systems ({', '.join(members[:5])}); name one with `--system`")
            path = members[0]
        elif not path.startswith("/"):
            path = f"/redfish/v1/Systems/{path}"
        self._system = conn.get_system(path)
        return self._system

    def _run(self, fn: Callable[[Any], T]) -> T:
        try:
            return fn(self._get_system())
        except PowerError:
            raise
        except Exception as exc:
            raise _redfish_error(exc, self.target) from None

    def state(self) -> PowerState:
        import sushy

        def read(system: Any) -> Any:
            system.refresh()
            return system.power_state

        value = self._run(read)
        if value == sushy.PowerState.ON:
            return PowerState.ON
        if value == sushy.PowerState.OFF:
            return PowerState.OFF
        return PowerState.UNKNOWN  # powering on/off: not there yet

    def press_on(self) -> None:
        import sushy

        self._run(lambda s: s.reset_system(sushy.ResetType.ON))

    def press_off(self, hard: bool) -> None:
        import sushy

        kind = sushy.ResetType.FORCE_OFF if hard else sushy.ResetType.GRACEFUL_SHUTDOWN
        self._run(lambda s: s.reset_system(kind))

    def set_boot(self, device: BootDevice) -> None:
        import sushy

        source = sushy.BootSource.PXE if device is BootDevice.NETWORK else sushy.BootSource.HDD
        self._run(lambda s: s.set_system_boot_options(
            target=source, enabled=sushy.BootSourceOverrideEnabled.ONCE))


# --- Fleetboot's own VMs ---------------------------------------------------


class QmpDriver(Driver):
    """A Fleetboot VM (``address`` = the VM's name): on = ``vm start``, off = ACPI then quit."""

    def __init__(self, target: Target, vms: VmService) -> None:
        super().__init__(target)
        self.vms = vms

    async def _view(self) -> Any:
        from fleetboot.vm.service import NotFoundError

        try:
            return await self.vms.show(self.target.address, drift=False)
        except NotFoundError:
            raise ConfigError(f"{self.target.node}: there is no Fleetboot VM named "
                              f"{self.target.address!r}; `fleetboot vm list` lists them") from None

    async def state(self) -> PowerState:
        from fleetboot.vm.models import VmStatus

        view = await self._view()
        return PowerState.ON if view.status is VmStatus.RUNNING else PowerState.OFF

    async def press_on(self) -> None:
        from fleetboot.vm.models import VmStatus

        if (await self._view()).status is not VmStatus.RUNNING:
            await self.vms.start(self.target.address)

    async def press_off(self, hard: bool) -> None:
        from fleetboot.vm import runtime
        from fleetboot.vm.models import VmStatus

        view = await self._view()
        if view.status is not VmStatus.RUNNING:
            return
        if hard:
            await self.vms.stop(self.target.address)
            return
        process = view.process
        if process is None:
            return
        try:
            async with runtime.connected(process) as qmp:
                await qmp.cmd("system_powerdown")  # the ACPI power button
        except runtime.QemuGoneError:
            return

    async def set_boot(self, device: BootDevice) -> None:
        view = await self._view()
        if device is BootDevice.DISK:
            raise UnsupportedError(
                f"{self.target.node}: a Fleetboot VM always tries its boot NIC first; to boot "
                f"its disk use `fleetboot node boot {self.target.node} local`")
        if not any(n.is_boot for n in view.nics):
            raise UnsupportedError(f"{self.target.node}: VM {view.name} has no boot NIC; add "
                                   "one with `fleetboot vm` before booting it from the network")
        # The boot NIC has bootindex=1 and its ROM (vm/qemu_argv.py): network comes first.


def make_driver(target: Target, executor: Executor, vms: Callable[[], VmService] | None,
                timeout_s: float) -> Driver:
    if target.driver is DriverName.IPMI:
        return IpmiDriver(target, IpmiClient(target), executor)
    if target.driver is DriverName.REDFISH:
        return ThreadedDriver(target, RedfishClient(target, timeout_s), executor)
    if vms is None:
        raise ConfigError(f"{target.node}: the qmp driver needs the VM settings")
    return QmpDriver(target, vms())
