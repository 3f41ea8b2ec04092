"""Run a real ``fleetboot serve`` inside a lab namespace, as tests, benches and the demo do.

``FleetbootServer.start`` writes a configuration file and an inventory into a
work directory, imports the inventory with the real CLI, starts the server in
the lab's server namespace and waits until every service listens. ``close``
stops it (SIGTERM, then SIGKILL) and always reaps it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetboot.lab.netns import Lab

IPXE_DIR = Path("/usr/lib/ipxe")
BOOT_PROGRAMS = ("undionly.kpxe", "snponly.efi", "ipxe.efi")


class FleetError(RuntimeError):
    pass


def fleetboot_argv(*args: str) -> list[str]:
    """The CLI of this very installation (the venv's interpreter)."""
    return [sys.executable, "-m", "fleetboot.cli", *args]


def install_boot_programs(boot_root: Path) -> None:
    """Copy Debian's iPXE builds (package ``ipxe``) into the boot root."""
    boot_root.mkdir(parents=True, exist_ok=True)
    for name in BOOT_PROGRAMS:
        src = IPXE_DIR / name
        if src.exists() and not (boot_root / name).exists():
            shutil.copyfile(src, boot_root / name)


@dataclass
class FleetbootServer:
    lab: Lab
    workdir: Path
    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    http_port: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        lab: Lab,
        workdir: Path,
        inventory: dict[str, Any] | str,
        *,
        config: dict[str, Any] | None = None,
        http_port: int = 8080,
        database_url: str | None = None,
        timeout_s: float = 30.0,
    ) -> FleetbootServer:
        workdir.mkdir(parents=True, exist_ok=True)
        boot_root = workdir / "bootroot"
        install_boot_programs(boot_root)
        settings: dict[str, Any] = {
            "server_address": lab.server_ip,
            "boot_root": str(boot_root),
            "database": {"url": database_url or f"sqlite:///{workdir}/fleetboot.db"},
            "http": {"port": http_port},
            "dhcp": {"interfaces": [lab.server_dev]},
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        config_path = workdir / "fleetboot.yaml"
        config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        inv_path = workdir / "inventory.yaml"
        inv_path.write_text(inventory if isinstance(inventory, str)
                            else yaml.safe_dump(inventory, sort_keys=False))
        env = {**os.environ, "FLEETBOOT_CONFIG": str(config_path)}
        env.pop("FLEETBOOT_DB", None)
        imported = subprocess.run(fleetboot_argv("inventory", "import", str(inv_path)),
                                  env=env, capture_output=True, text=True)
        if imported.returncode != 0:
            raise FleetError(f"inventory import failed: {imported.stderr or imported.stdout}")
        ready = workdir / "ready"
        ready.unlink(missing_ok=True)
        log_path = workdir / "fleetboot.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                lab.server.exec_argv(fleetboot_argv("serve", "--ready-file", str(ready))),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            )
        server = cls(lab, workdir, process, config_path, log_path, http_port)
        server._wait_ready(ready, timeout_s)
        return server

    def _wait_ready(self, ready: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise FleetError(f"fleetboot serve did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://{self.lab.server_ip}:{self.http_port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``fleetboot`` command against this server's configuration."""
        env = {**os.environ, "FLEETBOOT_CONFIG": str(self.config_path)}
        env.pop("FLEETBOOT_DB", None)
        result = subprocess.run(fleetboot_argv(*args), env=env, capture_output=True, text=True,
                                cwd=self.workdir)
        if check and result.returncode != 0:
            raise FleetError(f"fleetboot {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> FleetbootServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
