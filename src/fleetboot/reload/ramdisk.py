"""The deploy ramdisk: the lab's busybox initramfs plus the deploy agent and zstd.

Built like the lab guest (Debian's kernel and modules, ``busybox-static``), with
``virtio_blk`` for the target disk and Debian's ``zstd`` binary with the
libraries ``ldd`` names. The agent (``deploy_agent.sh``) needs nothing else.
"""

from __future__ import annotations

import importlib.resources
import re
import shutil
import subprocess
from pathlib import Path

from fleetboot.lab import guest

AGENT_PATH = "/bin/fleetboot-deploy"
MODULES = (*guest.NIC_MODULES, "virtio_blk")


def agent_script() -> bytes:
    return importlib.resources.files("fleetboot.reload").joinpath("deploy_agent.sh").read_bytes()


def binary_with_libraries(name: str) -> list[guest.ExtraFile]:
    """A dynamically linked host binary and every library it loads, at their paths."""
    path = shutil.which(name)
    if path is None:
        raise guest.GuestError(f"{name} is not installed: run scripts/install-system-deps.sh")
    out = subprocess.run(["ldd", path], check=True, capture_output=True, text=True).stdout
    files = [guest.ExtraFile.from_file(Path(path).resolve(), f"/usr/bin/{name}", 0o755)]
    for lib in re.findall(r"(/\S+) \(0x", out):
        files.append(guest.ExtraFile.from_file(Path(lib).resolve(), lib, 0o755))
    return files


def build_deploy_ramdisk(kernel: guest.GuestKernel, out: Path | None = None) -> Path:
    extra = [guest.ExtraFile(AGENT_PATH, agent_script()), *binary_with_libraries("zstd")]
    return guest.build_initramfs(kernel, extra_files=extra, hook=AGENT_PATH, end="poweroff",
                                 modules=MODULES, out=out)
