"""QEMU VMs for the lab: BIOS + iPXE PXE, UEFI native PXE and direct kernel boot, under TCG.

Every NIC is a tap on a ``fleetboot.lab.netns.Lab`` bridge and QEMU runs inside
the lab's server namespace, so the VM talks only to servers in that namespace.
The serial console goes to a file; ``Vm.wait_for`` (or ``wait_for_async`` in
asyncio tests, so the server under test keeps running) watches it.

    with netns.Lab.create(with_bridge=True) as lab:
        spec = VmSpec("bios1", nics=(NicSpec(lab_mac(1), bootindex=1),))
        with start_vm(spec, workdir, lab) as vm:          # always killed on exit
            vm.wait_for(r"FLEETBOOT-LEASE", timeout=60)

QEMU always runs with ``accel=tcg``: this machine's paravirtual KVM cannot run
firmware real-mode code.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fleetboot.errors import FleetbootError
from fleetboot.inventory.addr import normalize_mac
from fleetboot.lab.guest import Lease, Marker, parse_marker
from fleetboot.lab.netns import Lab, stop_process
from fleetboot.vm.firmware import OVMF_CODE, OVMF_VARS  # the one place OVMF is found

Firmware = Literal["bios", "uefi"]

QEMU = "qemu-system-x86_64"
POLL_S = 0.05
SERIAL_PORT = 0x3F8  # COM1, the -serial device

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_MODEL = re.compile(r"[a-z0-9][a-z0-9_-]*")


class VmError(FleetbootError):
    """A lab VM could not start, or did not show what a test waited for."""


@dataclass(frozen=True)
class NicSpec:
    """One NIC. ``rom``: None = QEMU's default iPXE ROM (BIOS PXE, or iPXE under
    UEFI); ``""`` = no ROM (UEFI native PXE on virtio; faster direct boots);
    else a ROM file. ``bootindex`` makes it a boot device (lowest first)."""

    mac: str
    model: str = "virtio-net-pci"
    bootindex: int | None = None
    rom: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalize_mac(self.mac))
        if not _MODEL.fullmatch(self.model):
            raise VmError(f"NIC model {self.model!r}: give a QEMU device like virtio-net-pci")
        if self.rom and "," in self.rom:
            raise VmError(f"ROM path {self.rom!r} must not contain a comma")
        if self.bootindex is not None and self.bootindex < 0:
            raise VmError(f"bootindex {self.bootindex} must be >= 0")


@dataclass(frozen=True)
class DirectBoot:
    """``-kernel/-initrd/-append``: the firmware skips PXE and starts Linux at once."""

    kernel: Path
    initrd: Path | None = None
    append: str = ""


@dataclass(frozen=True)
class VmSpec:
    name: str
    nics: tuple[NicSpec, ...] = ()
    firmware: Firmware = "bios"
    direct: DirectBoot | None = None
    memory_mb: int | None = None  # None: 256 (BIOS) or 512 (OVMF needs more)
    cpus: int = 1
    machine: Literal["q35", "pc"] = "q35"
    no_reboot: bool = False  # a guest reboot (or kernel panic with panic=-1) ends QEMU
    qmp: bool = False  # a QMP socket at VmFiles.qmp_socket
    # SeaBIOS copies the BIOS screen (iPXE's progress) to the serial log; OVMF always does.
    bios_serial_console: bool = True
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise VmError(f"VM name {self.name!r}: use up to 40 letters, digits, _ and -")
        macs = [nic.mac for nic in self.nics]
        if len(set(macs)) != len(macs):
            raise VmError(f"VM {self.name}: two NICs share a MAC ({', '.join(macs)})")
        if self.firmware not in ("bios", "uefi"):
            raise VmError(f"VM {self.name}: firmware must be 'bios' or 'uefi'")

    @property
    def memory(self) -> int:
        return self.memory_mb or (512 if self.firmware == "uefi" else 256)


@dataclass(frozen=True)
class VmFiles:
    """Where one VM keeps its files (all inside its work directory)."""

    serial_log: Path
    qemu_log: Path
    ovmf_vars: Path
    qmp_socket: Path
    sercon_port: Path  # SeaBIOS reads its serial console port from this fw_cfg file

    @classmethod
    def inside(cls, workdir: Path, name: str) -> VmFiles:
        return cls(workdir / f"{name}.serial.log", workdir / f"{name}.qemu.log",
                   workdir / f"{name}.vars.fd", workdir / f"{name}.qmp",
                   workdir / f"{name}.sercon")


def lab_mac(index: int, prefix: str = "52:54:00") -> str:
    """A locally administered MAC for VM number ``index`` (0 to 2**24-1)."""
    if not 0 <= index < 1 << 24:
        raise VmError(f"MAC index {index} out of range 0..16777215")
    return f"{prefix}:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"


def _opt(value: str | Path) -> str:
    """A QEMU option value: commas would split it, so refuse them."""
    text = str(value)
    if "," in text:
        raise VmError(f"{text!r}: QEMU option values must not contain commas")
    return text


def _nic_args(index: int, nic: NicSpec, tap: str) -> list[str]:
    device = f"{nic.model},netdev=n{index},mac={nic.mac}"
    if nic.rom is not None:
        device += f",romfile={_opt(nic.rom)}"
    if nic.bootindex is not None:
        device += f",bootindex={nic.bootindex}"
    return ["-netdev", f"tap,id=n{index},ifname={_opt(tap)},script=no,downscript=no",
            "-device", device]


def qemu_argv(spec: VmSpec, taps: Sequence[str], files: VmFiles, qemu: str = QEMU) -> list[str]:
    """The full QEMU command line for ``spec`` with NIC i on ``taps[i]`` (pure)."""
    if len(taps) != len(spec.nics):
        raise VmError(f"VM {spec.name}: {len(spec.nics)} NICs but {len(taps)} taps")
    argv = [qemu, "-name", spec.name, "-machine", f"{spec.machine},accel=tcg",
            "-m", str(spec.memory), "-smp", str(spec.cpus), "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", f"file:{_opt(files.serial_log)}"]
    if spec.firmware == "uefi":
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={_opt(OVMF_CODE)}",
                 "-drive", f"if=pflash,format=raw,file={_opt(files.ovmf_vars)}"]
    elif spec.bios_serial_console:
        argv += ["-fw_cfg", f"name=etc/sercon-port,file={_opt(files.sercon_port)}"]
    if spec.direct is not None:
        argv += ["-kernel", str(spec.direct.kernel)]
        if spec.direct.initrd is not None:
            argv += ["-initrd", _opt(spec.direct.initrd)]
        if spec.direct.append:
            argv += ["-append", spec.direct.append]
    for index, (nic, tap) in enumerate(zip(spec.nics, taps, strict=True)):
        argv += _nic_args(index, nic, tap)
    if any(nic.bootindex is not None for nic in spec.nics):
        # Only the designated NICs boot: no fallback to other NICs' ROMs.
        argv += ["-boot", "strict=on"]
    if spec.no_reboot:
        argv.append("-no-reboot")
    if spec.qmp:
        argv += ["-qmp", f"unix:{_opt(files.qmp_socket)},server=on,wait=off"]
    return [*argv, *spec.extra_args]


@dataclass(frozen=True)
class SerialMatch:
    """A regex found in the serial log, ``elapsed`` seconds after QEMU started."""

    match: re.Match[str]
    elapsed: float
    line: str

    @property
    def end(self) -> int:
        """Offset just past the match: pass as ``after`` to wait for a later one."""
        return self.match.end()


@dataclass(eq=False)  # hashable by identity, for the registry of live VMs
class Vm:
    """A running QEMU. ``close()`` (or the context manager) always kills it."""

    spec: VmSpec
    process: subprocess.Popen[bytes]
    files: VmFiles
    taps: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def serial_text(self) -> str:
        try:
            return self.files.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _check(
        self, pattern: re.Pattern[str], after: int, deadline: float, timeout: float
    ) -> SerialMatch | None:
        """One look at the log: the match, None to keep waiting, or VmError."""
        exited = not self.running  # read the log after seeing the exit: no lost tail
        text = self.serial_text()
        found = pattern.search(text, after)
        if found is not None:
            start = text.rfind("\n", 0, found.start()) + 1
            stop = text.find("\n", found.end())
            line = text[start : stop if stop >= 0 else len(text)].rstrip("\r")
            return SerialMatch(found, self.elapsed(), line)
        if exited:
            raise self._failure(f"exited (status {self.process.returncode}) without "
                                f"{pattern.pattern!r} in its serial log")
        if self.elapsed() > deadline:
            raise self._failure(f"showed no {pattern.pattern!r} within {timeout:.0f} s")
        return None

    def _failure(self, what: str) -> VmError:
        tail = "\n".join(self.serial_text().splitlines()[-15:])
        try:
            qemu_log = self.files.qemu_log.read_text(errors="replace").strip()[-800:]
        except OSError:
            qemu_log = ""
        return VmError(f"VM {self.name} {what} ({self.elapsed():.1f} s after start).\n"
                       f"--- serial tail ({self.files.serial_log}):\n{tail}\n"
                       f"--- qemu stderr:\n{qemu_log}")

    def _deadline(self, timeout: float) -> float:
        return self.elapsed() + timeout

    def wait_for(self, pattern: str, timeout: float = 60.0, after: int = 0) -> SerialMatch:
        """Block until ``pattern`` appears in the serial log past offset ``after``."""
        regex, deadline = re.compile(pattern), self._deadline(timeout)
        while (found := self._check(regex, after, deadline, timeout)) is None:
            time.sleep(POLL_S)
        return found

    async def wait_for_async(
        self, pattern: str, timeout: float = 60.0, after: int = 0
    ) -> SerialMatch:
        """Like wait_for, without blocking the event loop (for in-process servers)."""
        regex, deadline = re.compile(pattern), self._deadline(timeout)
        while (found := self._check(regex, after, deadline, timeout)) is None:
            await asyncio.sleep(POLL_S)
        return found

    def wait_marker(
        self, kind: str, event: str = "", timeout: float = 60.0, after: int = 0
    ) -> tuple[Marker, SerialMatch]:
        """The next ``FLEETBOOT-<kind> [event]`` line from the guest initramfs."""
        found = self.wait_for(_marker_regex(kind, event), timeout, after)
        return _marker_of(found), found

    async def wait_marker_async(
        self, kind: str, event: str = "", timeout: float = 60.0, after: int = 0
    ) -> tuple[Marker, SerialMatch]:
        found = await self.wait_for_async(_marker_regex(kind, event), timeout, after)
        return _marker_of(found), found

    def wait_lease(self, timeout: float = 60.0, after: int = 0) -> tuple[Lease, SerialMatch]:
        """The guest Linux's DHCP lease (``FLEETBOOT-LEASE``)."""
        marker, found = self.wait_marker("LEASE", timeout=timeout, after=after)
        return Lease.from_marker(marker), found

    async def wait_lease_async(
        self, timeout: float = 60.0, after: int = 0
    ) -> tuple[Lease, SerialMatch]:
        marker, found = await self.wait_marker_async("LEASE", timeout=timeout, after=after)
        return Lease.from_marker(marker), found

    def wait_exit(self, timeout: float = 60.0) -> float:
        """Block until QEMU exits (the guest powered off); the seconds since start."""
        try:
            self.process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            raise self._failure(f"still running after {timeout:.0f} s") from None
        return self.elapsed()

    async def wait_exit_async(self, timeout: float = 60.0) -> float:
        deadline = self._deadline(timeout)
        while self.running:
            if self.elapsed() > deadline:
                raise self._failure(f"still running after {timeout:.0f} s")
            await asyncio.sleep(POLL_S)
        return self.elapsed()

    def close(self) -> None:
        """Kill QEMU (SIGTERM, then SIGKILL); safe to call twice."""
        stop_process(self.process, timeout_s=3)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _marker_regex(kind: str, event: str) -> str:
    if not re.fullmatch(r"[A-Z]+", kind):
        raise VmError(f"marker kind {kind!r}: use upper-case letters like LEASE")
    return rf"FLEETBOOT-{kind}\b" + (rf" {re.escape(event)}\b" if event else "") + r"[^\r\n]*\n"


def _marker_of(found: SerialMatch) -> Marker:
    marker = parse_marker(found.line)
    if marker is None:  # the regex matched a marker, so this cannot happen
        raise VmError(f"unparsable marker line {found.line!r}")
    return marker


def start_vm(
    spec: VmSpec, workdir: Path, lab: Lab | None = None, taps: Sequence[str] | None = None
) -> Vm:
    """Start ``spec`` in ``lab``'s server namespace, each NIC on a new tap of its bridge.

    ``taps`` gives existing taps instead. Without a lab the VM runs in the
    host namespace and must have no NICs. The caller closes the Vm.
    """
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} is missing: run scripts/install-system-deps.sh")
    if lab is None and spec.nics:
        raise VmError(f"VM {spec.name} has NICs: start it in a lab (netns.Lab with_bridge=True)")
    workdir.mkdir(parents=True, exist_ok=True)
    files = VmFiles.inside(workdir, spec.name)
    files.serial_log.unlink(missing_ok=True)
    if spec.firmware == "uefi":
        shutil.copyfile(OVMF_VARS, files.ovmf_vars)  # OVMF writes its boot variables here
    else:
        files.sercon_port.write_bytes(struct.pack("<H", SERIAL_PORT))
    if spec.qmp and len(str(files.qmp_socket)) > 100:
        raise VmError(f"QMP socket path {files.qmp_socket} is too long for a unix socket; "
                      "use a shorter work directory")
    if taps is None:
        taps = [lab.add_tap() for _ in spec.nics] if lab is not None else []
    argv = qemu_argv(spec, taps, files)
    (workdir / f"{spec.name}.argv").write_text(" ".join(argv) + "\n")
    with open(files.qemu_log, "wb") as log:
        command = lab.server.exec_argv(argv) if lab is not None else argv
        # ip netns exec execs QEMU, so the pid is QEMU's and close() kills it.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=log)
    vm = Vm(spec, process, files, tuple(taps))
    _live.add(vm)
    return vm


# Every VM not closed by its owner dies with the interpreter (a test run that
# ends on an exception must not leave TCG guests burning the CI's two cores).
_live: weakref.WeakSet[Vm] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for vm in list(_live):
        vm.close()


# ----------------------------------------------------------------------------
# IPv6 router advertisements: iPXE waits ~16 s for an IPv6 router
# ----------------------------------------------------------------------------
# iPXE configures IPv6 next to DHCPv4 and prints "Configuring ... ok" only
# after its router solicitations got an answer or timed out (~16 s under TCG).
# Real LANs have a router; the lab namespace has none. An RA with no prefix,
# router lifetime 0 and M/O flags clear ("no DHCPv6, not a default router")
# ends that wait at once: a BIOS iPXE chain boot drops from ~22 s to ~8 s.


def router_advertisement() -> bytes:
    """An ICMPv6 Router Advertisement that announces nothing (the kernel sets the checksum)."""
    # type, code, checksum, cur hop limit, flags (M=O=0), router lifetime,
    # reachable time, retrans timer
    return struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)


def serve_router_advertisements(dev: str, interval: float = 1.0) -> None:
    """Answer every router solicitation on ``dev`` and advertise every ``interval`` s.

    Runs forever; start it inside the namespace (``start_router_advertiser``).
    Replies go to the soliciting address as well as to all nodes, because
    iPXE on UEFI (SNP) may not receive multicast.
    """
    index = socket.if_nametoindex(dev)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    for option in (socket.IPV6_MULTICAST_HOPS, socket.IPV6_UNICAST_HOPS):
        sock.setsockopt(socket.IPPROTO_IPV6, option, 255)  # NDP requires hop limit 255
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    all_routers = socket.inet_pton(socket.AF_INET6, "ff02::2") + struct.pack("@I", index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, all_routers)
    sock.settimeout(interval)
    advert = router_advertisement()

    def send(address: str) -> None:
        # Fails until the interface has its link-local address (DAD): try again later.
        with contextlib.suppress(OSError):
            sock.sendto(advert, (address, 0, 0, index))

    while True:
        try:
            data, source = sock.recvfrom(1500)
        except TimeoutError:
            send("ff02::1")
            continue
        if data[:1] == bytes([133]):  # router solicitation
            send(source[0])
            send("ff02::1")


@dataclass
class Background:
    """A helper process in a lab namespace; ``close()`` ends it."""

    process: subprocess.Popen[bytes]

    def close(self) -> None:
        stop_process(self.process, timeout_s=3)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_router_advertiser(lab: Lab, dev: str | None = None) -> Background:
    """Run ``serve_router_advertisements`` on the lab bridge (start it before PXE VMs)."""
    argv = [sys.executable, "-m", "fleetboot.lab.qemu", "ra", dev or lab.server_dev]
    return Background(lab.server.popen(argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fleetboot.lab.qemu ra DEV``: the router advertiser, run inside a namespace."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ra = sub.add_parser("ra", help="answer IPv6 router solicitations on DEV")
    ra.add_argument("dev")
    ra.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    serve_router_advertisements(args.dev, args.interval)


if __name__ == "__main__":
    main()
