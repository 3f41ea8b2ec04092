"""Fleetboot as a storm target: ``fleetboot serve`` in the server namespace.

The stack writes a configuration file and an inventory (one subnet with a
reservation per node, one boot profile, the nodes with their boot NIC), loads
the inventory with ``fleetboot inventory import`` and starts ``fleetboot
serve``, exactly as an operator would. After the storm it asks the admin API
which state every node reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetboot.lab.netns import stop_process
from fleetboot.storm.plan import StormPlan
from fleetboot.storm.stacks import (
    BOOTFILE,
    INITRD,
    KERNEL,
    StackError,
    StormFiles,
    link_file,
    namespace_counters,
    wait_listening,
)
from fleetboot.storm.topology import StormNet

ADMIN_TOKEN = "storm-admin-token"
PROFILE = "storm"


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["admission.max_booting=300"]`` -> ``{"admission.max_booting": 300}`` (YAML values)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise StackError(f"setting {pair!r}: write KEY=VALUE, e.g. admission.max_booting=300")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def fleetboot_argv() -> list[str]:
    """The ``fleetboot`` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("fleetboot")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from fleetboot.cli.main import app; app()"]


@dataclass
class FleetbootStack:
    plan: StormPlan
    files: StormFiles
    workdir: Path
    kind: str = "fleetboot"
    http_port: int = 8080
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys: admission.max_booting
    _proc: subprocess.Popen[bytes] | None = None
    _net: StormNet | None = None
    _env: dict[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.workdir / "fleetboot.yaml"

    def start(self, net: StormNet) -> None:
        self._net = net
        self.workdir.mkdir(parents=True, exist_ok=True)
        db = self.workdir / "fleetboot.db"
        db.unlink(missing_ok=True)
        self._write_boot_root()
        self.config_path.write_text(yaml.safe_dump(self.settings(net)))
        (self.workdir / "inventory.yaml").write_text(yaml.safe_dump(self.inventory()))
        self._cli("inventory", "import", str(self.workdir / "inventory.yaml"))
        log = self.workdir / "fleetboot.log"
        with log.open("wb") as out:
            self._proc = net.server.popen(
                [*fleetboot_argv(), "--config", str(self.config_path), "serve"],
                stdout=out, stderr=subprocess.STDOUT, env=self._environ())
        wait_listening(net, self._proc, log, udp=(67, 69), tcp=(self.http_port,))

    def stop(self) -> None:
        stop_process(self._proc, timeout_s=20.0)
        self._proc = None

    def _environ(self) -> dict[str, str]:
        return {**os.environ, **self._env}

    def _cli(self, *args: str) -> str:
        argv = [*fleetboot_argv(), "--config", str(self.config_path), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self._environ(),
                              check=False)
        if proc.returncode != 0:
            raise StackError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout}")
        return proc.stdout

    def _write_boot_root(self) -> None:
        root = self.workdir / "bootroot"
        link_file(self.files.bootfile, root / BOOTFILE)
        link_file(self.files.kernel, root / KERNEL)
        link_file(self.files.initrd, root / INITRD)

    def settings(self, net: StormNet) -> dict[str, Any]:
        settings = self._base_settings(net)
        for dotted, value in self.overrides.items():
            *parents, leaf = dotted.split(".")
            section = settings
            for key in parents:
                section = section.setdefault(key, {})
            section[leaf] = value
        return settings

    def _base_settings(self, net: StormNet) -> dict[str, Any]:
        nw = self.plan.network
        return {
            "server_address": nw.server_ip,
            "boot_root": str(self.workdir / "bootroot"),
            "state_dir": str(self.workdir / "state"),
            "database": {"url": f"sqlite:///{self.workdir / 'fleetboot.db'}"},
            "dhcp": {"interfaces": [net.bridge]},
            "http": {"port": self.http_port},
            "security": {"admin_token": ADMIN_TOKEN},
        }

    def inventory(self) -> dict[str, Any]:
        nw = self.plan.network
        nodes = sorted(self.plan.nodes, key=lambda n: n.index)
        return {
            "profiles": [{"name": PROFILE, "kernel": KERNEL, "initrd": INITRD,
                          "cmdline": "console=ttyS0"}],
            "subnets": [{
                "name": "storm", "cidr": nw.cidr, "next_server": nw.server_ip,
                "lease_seconds": 3600,
                "reservations": [{"mac": n.mac, "address": n.address, "hostname": n.name}
                                 for n in nodes],
            }],
            "nodes": [{"name": n.name, "arch": "x86_64",
                       "interfaces": [{"mac": n.mac, "name": "eth0", "boot": True}],
                       "boot": {"default": PROFILE}} for n in nodes],
        }

    def counters(self) -> dict[str, object]:
        result: dict[str, object] = {}
        if self._net is None:
            return result
        result.update({f"server.{k}": v for k, v in namespace_counters(self._net).items()})
        states = self._admin("/v1/admin/nodes")
        if isinstance(states, list):
            counts = Counter(f"nodes.{doc.get('state', '?')}" for doc in states
                             if isinstance(doc, dict))
            result.update(counts)
        stats = self._admin("/v1/admin/nodeconfig/stats")
        if isinstance(stats, dict):
            result.update({f"nodeconfig.{k}": v for k, v in stats.items()
                           if isinstance(v, int | float)})
        return result

    def _admin(self, path: str) -> Any:
        assert self._net is not None
        url = f"http://{self.plan.network.server_ip}:{self.http_port}{path}"
        proc = self._net.server.run(["curl", "-s", "-m", "10", "-H",
                                     f"Authorization: Bearer {ADMIN_TOKEN}", url], check=False)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return None
