"""`fleetboot serve` as a process (issue 11, items 8 and 9): a second server on the
same interface refuses to start and names the first, also after the first was
killed with -9 (nothing stale is left); SIGHUP reloads the configuration file
instead of killing the server, and a broken file keeps the running configuration.
A real DHCP client (busybox udhcpc) shows what the server answers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fleetboot.lab.fleet import FleetbootServer, fleetboot_argv
from fleetboot.lab.netns import Lab, stop_process

pytestmark = pytest.mark.netns

INVENTORY = {"subnets": [{"name": "lab", "cidr": "10.77.0.0/24", "next_server": "10.77.0.1",
                          "pools": [{"start": "10.77.0.100", "end": "10.77.0.150"}]}]}


def _env(server: FleetbootServer) -> dict[str, str]:
    env = {**os.environ, "FLEETBOOT_CONFIG": str(server.config_path)}
    env.pop("FLEETBOOT_DB", None)
    return env


def _lease(lab: Lab, workdir: Path) -> str | None:
    """The address a real DHCP client gets (None: no answer within 3 s)."""
    script = workdir / "udhcpc.sh"
    bound = workdir / "bound"
    bound.unlink(missing_ok=True)
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" > {bound}\n')
    script.chmod(0o755)
    lab.client.run(["busybox", "udhcpc", "-q", "-n", "-i", lab.client_if, "-s", str(script),
                    "-t", "3", "-T", "1"], check=False)
    return bound.read_text().strip() if bound.exists() else None


def _script(lab: Lab, server: FleetbootServer) -> str:
    """The iPXE script an unknown machine gets (WAIT: sleep, then ask again)."""
    return lab.client.run(["curl", "-sf", f"{server.url}/boot/script.ipxe"]).stdout


def _wait_for_log(server: FleetbootServer, text: str, timeout_s: float = 15.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = server.log_path.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged:\n{server.log_tail()}")


def test_a_second_server_on_the_same_interface_refuses_to_start(lab: Lab,
                                                                tmp_path: Path) -> None:
    with FleetbootServer.start(lab, tmp_path / "first", INVENTORY) as first:
        second = subprocess.run(lab.server.exec_argv(fleetboot_argv("serve")), env=_env(first),
                                cwd=first.workdir, capture_output=True, text=True, timeout=120)
        message = " ".join((second.stdout + second.stderr).split())
        assert second.returncode == 2, message
        assert f"already serves DHCP on {lab.server_dev}" in message
        assert f"pid {first.process.pid}: " in message and " serve" in message
        assert "Traceback" not in message
        assert first.running and _lease(lab, tmp_path) is not None

        first.process.kill()  # -9: no clean-up code runs, the kernel releases the claim
        first.process.wait(timeout=10)
        ready = tmp_path / "ready"
        again = subprocess.Popen(
            lab.server.exec_argv(fleetboot_argv("serve", "--ready-file", str(ready))),
            env=_env(first), cwd=first.workdir, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists() and again.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready.exists(), "a server after kill -9 of the first did not start"
            assert _lease(lab, tmp_path) is not None
        finally:
            stop_process(again)


def test_sighup_reloads_the_configuration(lab: Lab, tmp_path: Path) -> None:
    with FleetbootServer.start(lab, tmp_path / "srv", INVENTORY) as server:
        assert _lease(lab, tmp_path) is not None  # unknown clients are served
        settings = yaml.safe_load(server.config_path.read_text())
        assert "sleep 10" in _script(lab, server)
        settings["dhcp"]["unknown_clients"] = "ignore"
        settings["http"]["wait_seconds"] = 42
        settings["tftp"] = {"port": 6969}
        server.config_path.write_text(yaml.safe_dump(settings))
        server.process.send_signal(signal.SIGHUP)
        log = _wait_for_log(server, "SIGHUP: configuration reloaded")
        assert "applied: dhcp.unknown_clients, http.wait_seconds;" in log
        assert "needing a restart: tftp.port" in log
        assert server.running and _lease(lab, tmp_path) is None  # now ignored
        time.sleep(2.5)  # a rendered script is reused for at most 2 s
        assert "sleep 42" in _script(lab, server)

        good = server.config_path.read_text()
        server.config_path.write_text(good.replace("ignore", "ignored-typo"))
        server.process.send_signal(signal.SIGHUP)
        _wait_for_log(server, "does not load, keeping the current one")
        assert server.running and _lease(lab, tmp_path) is None  # still the last good one

        settings["dhcp"]["unknown_clients"] = "serve"
        server.config_path.write_text(yaml.safe_dump(settings))
        server.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert server.running and _lease(lab, tmp_path) is not None


def test_the_unit_reloads_with_sighup() -> None:
    unit = (Path(__file__).resolve().parents[2] / "examples" / "fleetboot.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
