"""Run a real ``fleetboot serve`` inside a lab namespace, as tests, benches and the demo do.

``FleetbootServer.start`` writes a configuration file and an inventory into a
work directory, stores boot images and imports the inventory with the real CLI
(``fleetboot image add``, ``fleetboot inventory import``, then any further
set-up commands such as ``fleetboot config set``), starts the server in the
lab's server namespace and waits until every service listens. ``close`` stops
it (SIGTERM, then SIGKILL) and always reaps it.

    kernel = image_path(vmlinuz, "vmlinuz")           # where `image add` will store it
    inventory = {"profiles": [{"name": "lab", "kernel": kernel, ...}], ...}
    with FleetbootServer.start(lab, workdir, inventory, images={"vmlinuz": vmlinuz},
                               setup=[["config", "set", "n1", "hostname", "web1"]]) as server:
        ...                                           # boot VMs
    events = server.timeline("n1")                    # `fleetboot timeline n1 --json`
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetboot.boot.images import IMAGES_DIR, PREFIX_LEN
from fleetboot.lab.netns import Lab, stop_process

IPXE_DIR = Path("/usr/lib/ipxe")
BOOT_PROGRAMS = ("undionly.kpxe", "snponly.efi", "ipxe.efi")
# Rich tables (`fleetboot nodes`, `timeline`) wrap at the terminal width; a pipe has
# none, so give the CLI a wide one and its rows stay on one line each.
CLI_COLUMNS = "200"
_STORED = re.compile(rf"{IMAGES_DIR}/[0-9a-f]{{{PREFIX_LEN}}}/\S+")


class FleetError(RuntimeError):
    pass


def fleetboot_argv(*args: str) -> list[str]:
    """The CLI of this very installation (the venv's interpreter)."""
    return [sys.executable, "-m", "fleetboot.cli", *args]


def image_path(source: Path, name: str | None = None) -> str:
    """Where ``fleetboot image add SOURCE --name NAME`` stores a file (content-addressed),
    so an inventory can name an image before the server exists."""
    sha = hashlib.sha256()
    with source.open("rb") as handle:
        while block := handle.read(1 << 20):
            sha.update(block)
    return f"{IMAGES_DIR}/{sha.hexdigest()[:PREFIX_LEN]}/{name or source.name}"


def _cli_env(config_path: Path) -> dict[str, str]:
    env = {**os.environ, "FLEETBOOT_CONFIG": str(config_path), "COLUMNS": CLI_COLUMNS}
    env.pop("FLEETBOOT_DB", None)
    return env


def _spawn(commands: Sequence[Sequence[str]], env: Mapping[str, str],
           cwd: Path) -> list[tuple[Sequence[str], subprocess.Popen[str]]]:
    """Start CLI commands side by side (each one is mostly interpreter start-up)."""
    return [(cmd, subprocess.Popen(fleetboot_argv(*cmd), env=dict(env), cwd=cwd, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for cmd in commands]


def _collect(procs: list[tuple[Sequence[str], subprocess.Popen[str]]]) -> list[str]:
    """The outputs of ``_spawn``ed commands, in order; any failure raises FleetError."""
    outputs, failed = [], []
    for cmd, proc in procs:
        out, err = proc.communicate()
        outputs.append(out)
        if proc.returncode != 0:
            failed.append(f"fleetboot {' '.join(cmd)}: {(err or out).strip()}")
    if failed:
        raise FleetError("set-up failed:\n" + "\n".join(failed))
    return outputs


def parse_timeline(output: str) -> list[dict[str, Any]]:
    """The events printed by ``fleetboot timeline NODE --json`` (none: an empty list)."""
    if not output.lstrip().startswith("["):  # "no recorded events for ..."
        return []
    events: list[dict[str, Any]] = json.loads(output)
    return events


# What `fleetboot serve` needs beyond an ordinary user: ports 67 and 69, DHCP sockets
# bound to an interface (SO_BINDTODEVICE), ARP entries for unicast replies (SIOCSARP)
# and large socket buffers (SO_RCVBUFFORCE).
SERVE_CAPABILITIES = ("net_bind_service", "net_raw", "net_admin")


def unprivileged(user: str, workdir: Path) -> list[str]:
    """A ``setpriv`` prefix: ``user`` and its group, no other groups, and only
    ``SERVE_CAPABILITIES`` (ambient, so they survive the exec of Python)."""
    entry = pwd.getpwnam(user)
    for path in [workdir, *workdir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    caps = ",".join(f"+{c}" for c in SERVE_CAPABILITIES)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
            f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set=-all,{caps}",
            "--no-new-privs", "--"]


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
    # name -> path under the boot root of each image stored by `start(images=...)`
    images: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None

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
        images: Mapping[str, Path] | None = None,
        setup: Sequence[Sequence[str]] = (),
        run_as: str | None = None,
    ) -> FleetbootServer:
        """``images`` (name -> file) are stored with ``fleetboot image add`` before the
        inventory is imported (``image_path`` tells where, for the inventory's profiles);
        ``setup`` commands (CLI arguments) run after the import, before the server starts.
        The admin API gets a random token (``admin_json``) unless ``config`` sets one.
        ``run_as`` (a user name) runs ``serve`` as that user with only the capabilities
        of ``SERVE_CAPABILITIES``, as ``examples/fleetboot.service`` does; the work
        directory is handed to the user."""
        workdir.mkdir(parents=True, exist_ok=True)
        boot_root = workdir / "bootroot"
        install_boot_programs(boot_root)
        settings: dict[str, Any] = {
            "server_address": lab.server_ip,
            "boot_root": str(boot_root),
            "database": {"url": database_url or f"sqlite:///{workdir}/fleetboot.db"},
            "http": {"port": http_port},
            "dhcp": {"interfaces": [lab.server_dev]},
            "security": {"admin_token": secrets.token_hex(16)},
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
        env = _cli_env(config_path)
        # The images first: the import checks that profiles name files in the boot root.
        items = list((images or {}).items())
        adding = _spawn([["image", "add", str(src), "--name", name] for name, src in items],
                        env, workdir)
        stored = _stored_paths(items, _collect(adding))
        imported = subprocess.run(fleetboot_argv("inventory", "import", str(inv_path)),
                                  env=env, capture_output=True, text=True)
        if imported.returncode != 0:
            raise FleetError(f"inventory import failed: {imported.stderr or imported.stdout}")
        if setup:
            _collect(_spawn(setup, env, workdir))
        ready = workdir / "ready"
        ready.unlink(missing_ok=True)
        serve = fleetboot_argv("serve", "--ready-file", str(ready))
        if run_as is not None:
            serve = unprivileged(run_as, workdir) + serve
        log_path = workdir / "fleetboot.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                lab.server.exec_argv(serve),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            )
        security = settings.get("security") or {}
        token = None if security.get("admin_token_file") else security.get("admin_token")
        server = cls(lab, workdir, process, config_path, log_path, http_port, images=stored,
                     admin_token=token)
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

    @property
    def database_url(self) -> str:
        """The inventory the server uses (tests read timelines from it directly)."""
        settings = yaml.safe_load(self.config_path.read_text())
        return str(settings["database"]["url"])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``fleetboot`` command against this server's configuration."""
        result = subprocess.run(fleetboot_argv(*args), env=_cli_env(self.config_path),
                                capture_output=True, text=True, cwd=self.workdir)
        if check and result.returncode != 0:
            raise FleetError(f"fleetboot {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result

    def cli_all(self, *commands: Sequence[str]) -> list[str]:
        """Several ``fleetboot`` commands side by side; their outputs in order."""
        return _collect(_spawn(commands, _cli_env(self.config_path), self.workdir))

    def timeline(self, node: str, boot: int | None = None) -> list[dict[str, Any]]:
        """``fleetboot timeline NODE --json``: one boot's events (default: the latest)."""
        args = ["timeline", node, "--json"] + ([] if boot is None else ["--boot", str(boot)])
        return parse_timeline(self.cli(*args).stdout)

    def admin_json(self, path: str) -> Any:
        """GET an admin API path (``/v1/admin/...``) with the admin token, from inside
        the lab (the server listens in the lab's namespace only)."""
        if not self.admin_token:
            raise FleetError("this server has no admin token (config security.admin_token)")
        argv = ["curl", "-sS", "--fail-with-body", "-m", "20", "-H",
                f"Authorization: Bearer {self.admin_token}", self.url + path]
        done = self.lab.server.run(argv, check=False)
        if done.returncode != 0:
            raise FleetError(f"GET {path} failed: {done.stderr.strip()} {done.stdout.strip()}")
        return json.loads(done.stdout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        stop_process(self.process, timeout_s=10)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def __enter__(self) -> FleetbootServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stored_paths(items: Sequence[tuple[str, Path]], outputs: Sequence[str]) -> dict[str, str]:
    """name -> path under the boot root, from the output of each ``fleetboot image add``."""
    stored = {}
    for (name, src), out in zip(items, outputs, strict=True):
        found = _STORED.search(out)
        if found is None:
            raise FleetError(f"fleetboot image add {src} printed no stored path: {out!r}")
        stored[name] = found.group(0)
    return stored
