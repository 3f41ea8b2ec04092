"""Emulated BMCs for tests and benchmarks: OpenIPMI's ``ipmi_sim`` and sushy-tools' emulator.

``IpmiSim`` runs one ``ipmi_sim`` on loopback. Its "machine" is either a real
process that the chassis-control script starts and kills (``sleep``, so that
power state is something you can see with ``ps``), or a QEMU VM that
``ipmi_sim`` starts itself and talks to through QEMU's ``ipmi-bmc-extern``
device (``qemu_argv``), as ipmi_lan(5) documents. ``SushyEmulator`` runs
``sushy-emulator`` with its fake driver over HTTPS with basic auth.
``WedgedBmc`` is a BMC that never answers: a bound UDP socket nobody reads
and a TCP listener that accepts and never responds.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetboot.lab.netns import stop_process

_EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""

# ipmi_sim runs `SCRIPT get power boot` / `SCRIPT set power 1` / `SCRIPT set boot pxe`
# and reads `name:value` lines back. The machine is a process with a pidfile: `sleep`,
# or any command (a QEMU VM) put in place of @MACHINE@.
_CHASSIS = """#!/bin/sh
dir=$(dirname "$0")
pidfile="$dir/machine.pid"
alive() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
op=$2; shift 2
if [ "$op" = get ]; then
  for name in "$@"; do
    case $name in
      power) if alive; then echo power:1; else echo power:0; fi ;;
      boot) echo "boot:$(cat "$dir/bootdev" 2>/dev/null || echo default)" ;;
    esac
  done
  exit 0
fi
while [ $# -ge 2 ]; do
  case $1 in
    power)
      if [ "$2" = 1 ]; then
        if ! alive; then
          setsid @MACHINE@ </dev/null >/dev/null 2>&1 &
          echo $! > "$pidfile"
          echo on >> "$dir/power.log"
        fi
      elif alive; then
        kill "$(cat "$pidfile")"; rm -f "$pidfile"; echo off >> "$dir/power.log"
      fi ;;
    boot) echo "$2" > "$dir/bootdev" ;;
  esac
  shift 2
done
exit 0
"""


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port nobody holds right now (the kernel's pick; a short race is acceptable in labs)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port_udp_bound(port: int, timeout_s: float) -> None:
    # ipmi_sim is ready once its LAN socket exists; binding the same port then fails.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise TimeoutError(f"ipmi_sim did not open UDP port {port} within {timeout_s} s")


def _answers(port: int, timeout_s: float = 5.0) -> bool:
    """Whether an IPMI BMC answers on 127.0.0.1:port (the probe Fleetboot itself uses)."""
    from fleetboot.power.ipmi_probe import REQUEST, is_auth_caps_answer

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s.sendto(REQUEST, ("127.0.0.1", port))
            try:
                if is_auth_caps_answer(s.recvfrom(512)[0]):
                    return True
            except TimeoutError:
                continue
    return False


@dataclass
class IpmiSim:
    """One ``ipmi_sim`` BMC on 127.0.0.1:``port`` with user ``admin`` (priv admin)."""

    workdir: Path
    port: int
    username: str = "admin"
    password: str = "secret"
    qemu_argv: Sequence[str] | None = None  # ipmi_sim runs this VM itself (ipmi-bmc-extern)
    serial_port: int | None = None
    machine_argv: Sequence[str] = ("sleep", "1000000")  # the chassis script's machine
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, workdir: Path, *, port: int | None = None, password: str = "secret",
              qemu_argv: Sequence[str] | None = None,
              machine_argv: Sequence[str] | None = None) -> IpmiSim:
        """A process-backed BMC (``machine_argv``, default ``sleep``: power and boot
        device through the chassis script, QEMU killed on off) or, with ``qemu_argv``,
        ipmi_sim's own VM mode (no boot device: ipmi_sim refuses it there).

        A port picked here may be taken by another process before ipmi_sim binds it
        (parallel test workers): then it starts again on another port."""
        tries = 1 if port else 3
        for _ in range(tries):
            sim = cls(Path(workdir), port or free_port(), password=password,
                      qemu_argv=qemu_argv,
                      serial_port=free_port(socket.SOCK_STREAM) if qemu_argv else None,
                      machine_argv=tuple(machine_argv or ("sleep", "1000000")))
            if sim._launch():
                return sim
        raise RuntimeError(f"ipmi_sim exited at start {tries} time(s) (port taken?); see "
                           f"{Path(workdir) / 'sim.log'}")

    def _launch(self) -> bool:
        """Start ipmi_sim; True once it answers on its port, False if it died."""
        self._write_files()
        self.proc = subprocess.Popen(
            ["ipmi_sim", "-c", str(self.workdir / "lan.conf"), "-f",
             str(self.workdir / "bmc.emu"), "-s", str(self.workdir / "state"), "-n"],
            stdin=subprocess.DEVNULL, stdout=open(self.workdir / "sim.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_port_udp_bound(self.port, 10.0)
            if _answers(self.port) and self.proc.poll() is None:
                return True
        except Exception:
            self.stop()
            raise
        self.stop()
        log = (self.workdir / "sim.log").read_text(errors="replace")[-500:]
        if self.proc.returncode not in (None, 0, -15):
            return False  # died: most likely the port was taken meanwhile
        raise RuntimeError(f"ipmi_sim on port {self.port} does not answer: {log}")

    def qemu_chardev_args(self) -> list[str]:
        """What QEMU needs to be this BMC's machine (ipmi-bmc-extern over a socket)."""
        return ["-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={self.serial_port},"
                "reconnect=10",
                "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0",
                "-device", "isa-ipmi-kcs,bmc=bmc0"]

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state").mkdir(exist_ok=True)
        (self.workdir / "bmc.emu").write_text(_EMU)
        lines = [
            'name "fbbmc"', "set_working_mc 0x20", "  startlan 1",
            f"    addr 127.0.0.1 {self.port}", "    priv_limit admin",
            *(f"    allowed_auths_{p} none md2 md5 straight"
              for p in ("callback", "user", "operator", "admin")),
            "    guid a123456789abcdefa123456789abcdef", "  endlan",
        ]
        if self.qemu_argv is None:
            script = self.workdir / "chassis.sh"
            script.write_text(_CHASSIS.replace("@MACHINE@", shlex.join(self.machine_argv)))
            script.chmod(0o755)
            lines.append(f'  chassis_control "{script} 0x20"')
        else:
            cmd = shlex.join([*self.qemu_argv, *self.qemu_chardev_args()])
            lines += [f"  serial 15 127.0.0.1 {self.serial_port} codec VM",
                      f'  startcmd "{cmd}"', "  startnow false",
                      "  poweroff_wait 5", "  kill_wait 5"]
        lines.append(f'  user 2 true "{self.username}" "{self.password}" admin 10 '
                     "none md2 md5 straight")
        (self.workdir / "lan.conf").write_text("\n".join(lines) + "\n")

    # --- the machine behind a process-backed BMC ---

    def machine_pid(self) -> int | None:
        """The pid of the running machine process, or None when it is powered off."""
        try:
            pid = int((self.workdir / "machine.pid").read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def power_log(self) -> list[str]:
        path = self.workdir / "power.log"
        return path.read_text().split() if path.exists() else []

    def bootdev(self) -> str | None:
        path = self.workdir / "bootdev"
        return path.read_text().strip() if path.exists() else None

    def ipmitool(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        """A real ``ipmitool`` call against this BMC (the cross-check)."""
        argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port),
                "-U", self.username, "-P", password or self.password, "-C", "3",
                "-N", "1", "-R", "2", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        pid = self.machine_pid()
        if pid is not None:
            os.kill(pid, 15)
        stop_process(self.proc)


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (IP SAN) and its key: (cert, key)."""
    cert, key = directory / "bmc.crt", directory / "bmc.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=IP:{host}"],
        check=True, capture_output=True)
    return cert, key


@dataclass
class SushyEmulator:
    """``sushy-emulator`` with the fake driver, HTTPS and basic auth, on 127.0.0.1."""

    workdir: Path
    port: int
    cert: Path
    systems: list[dict[str, Any]] = field(default_factory=list)
    username: str = "admin"
    password: str = "secret"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, names: Sequence[str], *, password: str = "secret",
              power_state: str = "On") -> SushyEmulator:
        workdir.mkdir(parents=True, exist_ok=True)
        cert, key = self_signed_cert(workdir)
        systems = [{"uuid": f"27946b59-9e44-4fa7-8e91-{i:012x}", "name": name,
                    "power_state": power_state,
                    "nics": [{"mac": f"52:54:00:fb:{i // 256:02x}:{i % 256:02x}",
                              "ip": "127.0.0.1"}]}
                   for i, name in enumerate(names)]
        emu = cls(workdir, free_port(socket.SOCK_STREAM), cert, systems, password=password)
        users = workdir / "htpasswd"
        subprocess.run(["htpasswd", "-B", "-b", "-c", str(users), emu.username, password],
                       check=True, capture_output=True)
        config = workdir / "emulator.conf"
        config.write_text(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(workdir / 'state')!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(users)!r}\n")
        exe = Path(sys.executable).with_name("sushy-emulator")
        emu.proc = subprocess.Popen(
            [str(exe), "--config", str(config), "-i", "127.0.0.1", "-p", str(emu.port),
             "--ssl-certificate", str(cert), "--ssl-key", str(key)],
            stdin=subprocess.DEVNULL, stdout=open(workdir / "emulator.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            emu._wait_listening(30.0)
        except Exception:
            emu.stop()
            raise
        return emu

    def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.workdir / "emulator.log").read_text()[-2000:]
                raise RuntimeError(f"sushy-emulator exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"sushy-emulator did not listen on {self.port} in {timeout_s} s")

    def system_path(self, index: int) -> str:
        return f"/redfish/v1/Systems/{self.systems[index]['uuid']}"

    def stop(self) -> None:
        stop_process(self.proc)


class WedgedBmc:
    """A BMC that never answers: UDP datagrams are never read, TCP connections never served."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(64)
        self.port = int(self.udp.getsockname()[1])
        self.tcp_port = int(self.tcp.getsockname()[1])

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()
