"""A private libvirtd per test host: its own sockets, state and, seen through a mount
namespace, its own ``/sys`` (a fake sysfs tree of that host's PCI devices).

libvirt checks a hostdev network's device against ``/sys`` (is it a VF?), so each
emulated host's daemon must see that host's devices: ``unshare -m`` gives the
daemon a mount namespace where the fake tree is bound over ``/sys`` and
tmpfs hides the machine's own ``/etc/libvirt`` and ``/run/libvirt``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fleetboot.lab.netns import stop_process

_CONFIG = """unix_sock_dir = "{run}"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{log}"
"""


def available() -> bool:
    return shutil.which("libvirtd") is not None and shutil.which("unshare") is not None


@dataclass
class LibvirtDaemon:
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.directory / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @classmethod
    def start(cls, sysfs_root: str | Path, timeout_s: float = 20.0) -> LibvirtDaemon:
        directory = Path(tempfile.mkdtemp(prefix="fblv"))
        for sub in ("run", "state", "log"):
            (directory / sub).mkdir()
        conf = directory / "libvirtd.conf"
        conf.write_text(_CONFIG.format(run=directory / "run", log=directory / "log/libvirtd.log"))
        script = (
            "set -e; mkdir -p /run/libvirt; mount -t tmpfs none /run/libvirt; "
            "mount -t tmpfs none /etc/libvirt; "
            f"mount --bind {directory / 'state'} /var/lib/libvirt; "
            f"mount --bind {Path(sysfs_root).resolve()} /sys; "
            f"exec libvirtd -f {conf} -p {directory / 'libvirtd.pid'}"
        )
        process = subprocess.Popen(["unshare", "-m", "--propagation", "private",
                                    "sh", "-c", script],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        daemon = cls(directory, process)
        deadline = time.monotonic() + timeout_s
        while not daemon.socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                log = directory / "log/libvirtd.log"
                err += log.read_text()[-800:] if log.exists() else ""
                daemon.stop()
                raise RuntimeError(f"libvirtd did not start: {err.strip()[-800:]}")
            time.sleep(0.05)
        return daemon

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)
