"""Boot lab VMs through a real ``fleetboot serve`` all the way to UP.

``make demo``, ``bench/storm_qemu.py`` and ``tests/storm_qemu`` share this
module. The chain is the real one: firmware PXE (SeaBIOS + iPXE ROM, or OVMF's
native PXE loading ``snponly.efi`` over TFTP), Fleetboot's DHCP, the per-node
iPXE script, kernel and initrd over HTTP, the guest's own DHCP, then the
initramfs runs the node client (its URL and per-boot token come from the
script's kernel command line), which fetches the configuration and reports UP.
"UP" is what the server recorded in its database, not what the guest printed.

    machines = [bios_machine("node1", 1), uefi_machine("node2", 2)]
    with FleetLab.start(workdir, machines) as fleet:      # lab, RA, server; always cleaned
        report = fleet.boot(machines, timeout_s=300)
    print(report.result_line("storm_qemu"))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from sqlalchemy import select

from fleetboot.boot.images import ImageStore
from fleetboot.errors import FleetbootError
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import Node
from fleetboot.lab import guest
from fleetboot.lab.fleet import FleetbootServer
from fleetboot.lab.netns import Lab
from fleetboot.lab.qemu import (
    OVMF_CODE,
    Background,
    Firmware,
    NicSpec,
    Vm,
    VmSpec,
    lab_mac,
    start_router_advertiser,
    start_vm,
)
from fleetboot.nodeconfig.states import NodeStatus, State
from fleetboot.nodeconfig.timeline import EventRecord, read_states, read_timeline

LAB_SUBNET = "10.77.0"  # netns.Lab's default; every lab is its own namespace, so no clash
POOL = (100, 250)
BOOT_ROOT = "bootroot"  # FleetbootServer's boot root inside the work directory
POLL_S = 0.25
# After QEMU exits, the server may still be committing the UP report (batches of 250 ms).
EXIT_GRACE_S = 3.0
# iPXE expands ${mac:hexhyp} to the NIC it booted from; the lab initramfs configures
# the NIC that BOOTIF names (pxelinux's convention), so a multi-NIC VM's Linux uses
# the same NIC its firmware did.
BOOTIF_ARG = "BOOTIF=01-${mac:hexhyp}"


class BootRunError(FleetbootError):
    """The lab could not be set up for a boot run."""


# ----------------------------------------------------------------------------
# What to boot (pure)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """One lab VM to boot through Fleetboot; ``nics`` carry the QEMU boot order."""

    name: str
    kind: str  # short label for tables: bios, uefi, 3-nic
    firmware: Firmware
    nics: tuple[NicSpec, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not any(nic.bootindex is not None for nic in self.nics):
            raise BootRunError(f"machine {self.name}: give one NIC a bootindex")

    @property
    def boot_nic(self) -> NicSpec:
        return min((n for n in self.nics if n.bootindex is not None),
                   key=lambda n: n.bootindex or 0)

    @property
    def flavor(self) -> guest.Flavor:
        """The guest kernel flavour with a driver for the boot NIC (cloud is quicker)."""
        return guest.flavor_for_nics([self.boot_nic.model])

    @property
    def spec(self) -> VmSpec:
        # Linux ends with poweroff after reporting UP: a finished VM frees its CPU.
        return VmSpec(self.name, nics=self.nics, firmware=self.firmware)


NICS_PER_MACHINE = 4  # MAC block per machine index, so mixed fleets never share a MAC


def machine_mac(index: int, nic: int = 0) -> str:
    """The MAC of NIC ``nic`` of machine number ``index``."""
    if not 0 <= nic < NICS_PER_MACHINE:
        raise BootRunError(f"NIC number {nic}: a lab machine has at most {NICS_PER_MACHINE}")
    return lab_mac(index * NICS_PER_MACHINE + nic)


def bios_machine(name: str, index: int) -> Machine:
    """SeaBIOS + the virtio NIC's iPXE ROM."""
    nic = NicSpec(machine_mac(index), "virtio-net-pci", bootindex=1)
    return Machine(name, "bios", "bios", (nic,), "SeaBIOS + iPXE ROM")


def uefi_machine(name: str, index: int) -> Machine:
    """OVMF's own PXE (no iPXE ROM) loads snponly.efi over TFTP, which runs the script."""
    nic = NicSpec(machine_mac(index), "virtio-net-pci", bootindex=1, rom="")
    return Machine(name, "uefi", "uefi", (nic,), "OVMF PXE, snponly.efi")


MULTI_NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")


def multi_nic_machine(name: str, index: int, boot_model: str = "e1000") -> Machine:
    """Three NICs, each with its iPXE ROM; only ``boot_model`` is in the boot order."""
    if boot_model not in MULTI_NIC_MODELS:
        raise BootRunError(f"boot NIC {boot_model!r}: choose one of {MULTI_NIC_MODELS}")
    nics = tuple(
        NicSpec(machine_mac(index, i), model, bootindex=1 if model == boot_model else None)
        for i, model in enumerate(MULTI_NIC_MODELS))
    return Machine(name, "3-nic", "bios", nics,
                   f"3 NICs, boots {boot_model}")


MACHINE_KINDS: dict[str, Callable[[str, int], Machine]] = {
    "bios": bios_machine, "uefi": uefi_machine, "3-nic": multi_nic_machine,
}


def fleet_of(count: int, kinds: Sequence[str] = ("bios",), prefix: str = "vm") -> list[Machine]:
    """``count`` machines named ``<prefix>01...``, their kinds taken round-robin."""
    if count < 1:
        raise BootRunError(f"boot at least one VM (asked for {count})")
    unknown = [k for k in kinds if k not in MACHINE_KINDS]
    if unknown or not kinds:
        raise BootRunError(f"machine kinds {unknown or '[]'}: choose from {sorted(MACHINE_KINDS)}")
    width = max(2, len(str(count)))
    return [MACHINE_KINDS[kinds[i % len(kinds)]](f"{prefix}{i + 1:0{width}d}", i + 1)
            for i in range(count)]


def profile_name(flavor: str) -> str:
    return f"lab-{flavor}"


def lab_cmdline() -> str:
    return f"{guest.kernel_cmdline(end='poweroff')} {BOOTIF_ARG}"


def lab_inventory(machines: Iterable[Machine], profiles: Sequence[dict[str, str]],
                  subnet: str = LAB_SUBNET) -> dict[str, Any]:
    """The inventory document (``fleetboot inventory import`` format) for a boot run."""
    nodes = [{
        "name": m.name,
        "interfaces": [{"mac": n.mac, "name": f"nic{i}", "boot": n is m.boot_nic}
                       for i, n in enumerate(m.nics)],
        "boot": {"default": profile_name(m.flavor)},
    } for m in machines]
    return {
        "profiles": list(profiles),
        "subnets": [{"name": "lab", "cidr": f"{subnet}.0/24",
                     "pools": [{"start": f"{subnet}.{POOL[0]}", "end": f"{subnet}.{POOL[1]}"}]}],
        "nodes": nodes,
    }


# ----------------------------------------------------------------------------
# Guest images and the lab (I/O)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestFiles:
    """A kernel and initramfs on the host, before they go into a boot root."""

    flavor: str
    kernel: Path
    initrd: Path


def _fetch_kernel(flavor: guest.Flavor) -> guest.GuestKernel:
    try:
        return guest.fetch_guest_kernel(flavor)
    except guest.GuestError as exc:
        # A fresh machine whose packages were all installed may have no apt lists yet.
        if "apt-get update" not in str(exc):
            raise
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        return guest.fetch_guest_kernel(flavor)


def prepare_guests(flavors: Iterable[guest.Flavor]) -> list[GuestFiles]:
    """Kernels from Debian (``apt-get download``, cached) and their initramfs images."""
    out = []
    for flavor in sorted(set(flavors)):
        kernel = _fetch_kernel(flavor)
        out.append(GuestFiles(flavor, kernel.vmlinuz, guest.build_initramfs(kernel)))
    return out


def store_profiles(boot_root: Path, guests: Iterable[GuestFiles]) -> list[dict[str, str]]:
    """Put the guests into the boot root's image store; one profile document each."""
    store = ImageStore(boot_root)
    profiles = []
    for g in guests:
        kernel, _ = store.add(g.kernel, f"vmlinuz-{g.flavor}")
        initrd, _ = store.add(g.initrd, f"initrd-{g.flavor}.img")
        profiles.append({"name": profile_name(g.flavor), "kernel": kernel.path,
                         "initrd": initrd.path, "cmdline": lab_cmdline()})
    return profiles


def check_host(machines: Iterable[Machine]) -> None:
    """Clear errors for what a boot run needs before anything is started."""
    missing = [tool for tool in ("qemu-system-x86_64", "ip", "busybox") if not shutil.which(tool)]
    if any(m.firmware == "uefi" for m in machines) and not OVMF_CODE.exists():
        missing.append(f"OVMF ({OVMF_CODE})")
    if missing:
        raise BootRunError(f"missing {', '.join(missing)}: run `make deps` "
                           "(scripts/install-system-deps.sh)")


@dataclass
class FleetLab:
    """A namespace lab with an IPv6 router advertiser and a real Fleetboot server."""

    workdir: Path
    lab: Lab
    advertiser: Background
    server: FleetbootServer
    vms: list[Vm] = field(default_factory=list)
    _db: Database | None = None

    @classmethod
    def start(
        cls,
        workdir: Path,
        machines: Sequence[Machine] = (),
        *,
        register: bool = True,
        config: dict[str, Any] | None = None,
        guests: Sequence[GuestFiles] | None = None,
        inventory: dict[str, Any] | None = None,
    ) -> FleetLab:
        """Set everything up. With ``register`` the machines, a subnet and the guest
        profiles are imported before the server starts; else the inventory is empty
        (the demo registers them with the CLI). ``inventory`` (a document the caller
        built, its images already in the boot root) replaces both."""
        check_host(machines)
        if inventory is not None:
            register = False
        else:
            inventory = {}
        if register:
            if guests is None:
                guests = prepare_guests(m.flavor for m in machines)
            inventory = lab_inventory(machines, store_profiles(workdir / BOOT_ROOT, guests))
        lab: Lab | None = None
        advertiser: Background | None = None
        try:
            with deferred_interrupts():  # a Ctrl-C here must not leave half a lab behind
                lab = Lab.create(subnet=LAB_SUBNET, with_bridge=True)
            # Without router advertisements iPXE waits ~16 s for IPv6 before booting.
            advertiser = start_router_advertiser(lab)
            server = FleetbootServer.start(lab, workdir, inventory, config=config)
        except BaseException:
            if advertiser is not None:
                advertiser.close()
            if lab is not None:
                lab.close()
            raise
        return cls(workdir, lab, advertiser, server)

    @property
    def db(self) -> Database:
        """The server's database, read beside it (the CLI does the same)."""
        if self._db is None:
            settings = yaml.safe_load(self.server.config_path.read_text())
            self._db = Database(settings["database"]["url"])
        return self._db

    def states(self) -> dict[str, NodeStatus]:
        """Every node's state as the server last committed it, by node name."""
        with self.db.session() as s:
            names = {i: n for i, n in s.execute(select(Node.id, Node.name))}
            return {names[i]: st for i, st in read_states(s).items() if i in names}

    def server_cpu_s(self) -> float | None:
        """CPU seconds (user + system) the server process has used so far."""
        try:
            fields = Path(f"/proc/{self.server.process.pid}/stat").read_text().rsplit(")", 1)[1]
        except OSError:
            return None
        utime, stime = (int(v) for v in fields.split()[11:13])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def retransmissions(self) -> dict[str, list[str]]:
        """Per node: what its latest boot sent again (``dhcp DISCOVER from iPXE``, ...)."""
        with self.db.session() as s:
            names = {i: n for i, n in s.execute(select(Node.id, Node.name))}
            return {name: [_retry_label(e) for e in read_timeline(s, i)
                           if e.detail.get("retransmit")]
                    for i, name in names.items()}

    def boot(
        self,
        machines: Sequence[Machine],
        *,
        timeout_s: float = 300.0,
        on_update: Callable[[BootRun], None] | None = None,
    ) -> BootReport:
        """Start every machine at once and follow them until all are UP or failed."""
        run = BootRun.begin(machines)
        for m in machines:
            vm = start_vm(m.spec, self.workdir / "vms", self.lab)
            self.vms.append(vm)
            run.started(m.name, vm)
        run.follow(self, timeout_s, on_update)
        return run.report()

    def close(self) -> None:
        """Stop QEMU, the server and the advertiser, delete the namespaces; never raises."""
        for vm in self.vms:
            with contextlib.suppress(Exception):
                vm.close()
        for stop in (self.server.close, self.advertiser.close, self.lab.close):
            with contextlib.suppress(Exception):
                stop()
        if self._db is not None:
            self._db.dispose()

    def __enter__(self) -> FleetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------
# Following a boot run
# ----------------------------------------------------------------------------


@dataclass
class VmProgress:
    """What is known about one VM of a run; times are seconds since its QEMU started."""

    machine: Machine
    vm: Vm | None = None
    started_wall: float = 0.0
    state: str = "starting"
    seen: dict[str, float] = field(default_factory=dict)  # state -> first seen (s)
    up_s: float | None = None
    server_boot_s: float | None = None  # the server's own measure: first event -> UP
    address: str | None = None
    error: str | None = None
    exited_at: float | None = None

    @property
    def done(self) -> bool:
        return self.up_s is not None or self.error is not None

    def elapsed(self, now_wall: float) -> float:
        return max(0.0, now_wall - self.started_wall) if self.started_wall else 0.0


@dataclass
class BootRun:
    progress: dict[str, VmProgress]
    began_wall: float
    finished_wall: float | None = None

    @classmethod
    def begin(cls, machines: Sequence[Machine]) -> BootRun:
        return cls({m.name: VmProgress(m) for m in machines}, time.time())

    def started(self, name: str, vm: Vm) -> None:
        p = self.progress[name]
        p.vm, p.started_wall, p.state = vm, time.time(), "firmware"

    def observe(self, states: Mapping[str, NodeStatus], now_wall: float) -> None:
        """One poll: the server's states and the VMs' liveness."""
        for name, p in self.progress.items():
            if p.vm is None or p.done:
                continue
            fold(p, states.get(name), p.vm.running, now_wall)
            if p.error is not None and p.exited_at is not None:
                p.error += " " + _serial_tail(p.vm)

    def time_out(self, timeout_s: float) -> None:
        for p in self.progress.values():
            if not p.done:
                tail = _serial_tail(p.vm) if p.vm is not None else ""
                p.error = f"not UP after {timeout_s:.0f} s (state {p.state}): {tail}"

    def follow(self, fleet: FleetLab, timeout_s: float,
               on_update: Callable[[BootRun], None] | None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.observe(fleet.states(), time.time())
            if on_update is not None:
                on_update(self)
            if all(p.done for p in self.progress.values()):
                break
            if time.monotonic() > deadline:
                self.time_out(timeout_s)
                break
            time.sleep(POLL_S)
        self.finished_wall = time.time()
        if on_update is not None:
            on_update(self)

    def report(self) -> BootReport:
        ups = [p for p in self.progress.values() if p.up_s is not None]
        failed = [p for p in self.progress.values() if p.up_s is None]
        all_up = (max(p.started_wall + (p.up_s or 0) for p in ups) - self.began_wall
                  if ups and not failed else None)
        return BootReport(list(self.progress.values()), all_up, len(failed))


def fold(p: VmProgress, st: NodeStatus | None, running: bool, now_wall: float) -> None:
    """Advance one VM's progress by what the server says and whether QEMU still runs.

    No I/O: the caller reads the states and the process; tests feed values."""
    if p.done:
        return
    # A state older than this QEMU belongs to an earlier boot of the node.
    if st is not None and st.since >= p.started_wall - 1.0:
        _step(p, st)
        if p.done:
            return
    if not running and p.exited_at is None:
        p.exited_at = now_wall
    if p.exited_at is not None and now_wall - p.exited_at > EXIT_GRACE_S:
        p.error = f"QEMU exited in state {p.state} before UP."


def _step(p: VmProgress, st: NodeStatus) -> None:
    state = st.state.value
    p.state, p.address = state, st.address or p.address
    p.seen.setdefault(state, max(0.0, st.since - p.started_wall))
    if st.state is State.UP:
        p.up_s = p.seen[state]
        p.server_boot_s = st.last_boot_s
    elif st.state is State.FAILED:
        p.error = f"the node reported FAILED: {st.message or '(no message)'}"


@dataclass(frozen=True)
class BootReport:
    vms: list[VmProgress]
    all_up_s: float | None  # first QEMU start -> last UP; None when any VM failed
    failed: int

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def up_times(self) -> list[float]:
        return sorted(p.up_s for p in self.vms if p.up_s is not None)

    def result_line(self, name: str) -> str:
        all_up = f"{self.all_up_s:.1f}" if self.all_up_s is not None else "nan"
        return f"RESULT {name} n={len(self.vms)} all_up_s={all_up} failed={self.failed}"

    def errors(self) -> str:
        return "\n".join(f"{p.machine.name}: {p.error}" for p in self.vms if p.error)


def _retry_label(e: EventRecord) -> str:
    d = e.detail
    sender = "iPXE" if d.get("ipxe") else str(d.get("vendor_class") or "").split(":")[0]
    return f"{e.source} {e.kind}" + (f" from {sender}" if sender else "")


def _serial_tail(vm: Vm | None, lines: int = 6) -> str:
    if vm is None:
        return ""
    text = vm.serial_text().replace("\x1b", "")
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return f"serial log {vm.files.serial_log}: " + " | ".join(tail)


# ----------------------------------------------------------------------------
# Clean exits on Ctrl-C and SIGTERM
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM/SIGHUP raise KeyboardInterrupt like Ctrl-C does, so ``with`` blocks clean up."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block is done; they are delivered at its end."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while cleaning up: a second Ctrl-C must not leak a namespace."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

