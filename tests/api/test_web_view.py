"""The web view in a real headless Chromium (Debian's chromium + chromium-driver through
selenium) while a real client boots: udhcpc gets a lease from `fleetboot serve`, curl
fetches the iPXE script and the kernel from the leased address and reports UP with the
per-boot token. The page, opened once, shows the node's states as they happen (server-
sent events), then its waterfall; screenshots go to $FLEETBOOT_SCREENSHOTS (docs/img
when refreshing the docs) or a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetboot.lab.fleet import FleetbootServer, image_path
from fleetboot.lab.netns import Lab, stop_process

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
LEASED = "10.77.0.50"

pytestmark = [
    pytest.mark.netns, pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                       reason="needs Debian's chromium and chromium-driver"),
]


def _inventory(mac: str, kernel: str) -> dict[str, object]:
    others = [{"name": f"rack-{i:02d}", "interfaces": [{"mac": f"52:54:00:77:00:{i:02x}"}]}
              for i in range(1, 12)]
    return {
        "profiles": [{"name": "live", "kernel": kernel, "cmdline": "console=ttyS0"}],
        "subnets": [{"name": "lab", "cidr": "10.77.0.0/24", "next_server": "10.77.0.1",
                     "pools": [{"start": "10.77.0.100", "end": "10.77.0.149"}],
                     "reservations": [{"mac": mac, "address": LEASED, "hostname": "web1"}]}],
        "nodes": [{"name": "web1", "interfaces": [{"mac": mac, "boot": True}],
                   "boot": {"default": "live"}}, *others],
    }


def _client_boots(lab: Lab, server: FleetbootServer, workdir: Path) -> None:
    """What a booting machine does, with real clients from its own address."""
    hook = workdir / "udhcpc.sh"
    hook.write_text('#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/24" dev "$interface"\n'
                    "exit 0\n")
    hook.chmod(0o755)
    got = lab.client.run(["busybox", "udhcpc", "-q", "-n", "-i", lab.client_if, "-s",
                          str(hook), "-t", "5", "-T", "1"], check=False)
    assert got.returncode == 0, got.stderr
    curl = ["curl", "-sS", "--fail", "-m", "20", "--interface", LEASED]
    lab.client.run(["sleep", "1"])
    script = lab.client.run([*curl, f"{server.url}/boot/script.ipxe"]).stdout
    token = re.search(r"fleetboot\.token=(\S+)", script)
    kernel = re.search(r"^kernel\s+(\S+)", script, re.M)
    assert token and kernel, script
    lab.client.run(["sleep", "1"])
    lab.client.run([*curl, "-o", "/dev/null", kernel.group(1)])
    lab.client.run(["sleep", "1"])
    lab.client.run([*curl, "-H", f"X-Fleetboot-Token: {token.group(1)}", "-d",
                    "state=UP&message=booted", f"{server.url}/v1/self/state"])


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in the metrics"
    return float(match.group(1))


def test_the_fleet_page_follows_a_real_boot_live(lab: Lab, tmp_path: Path) -> None:
    shots = Path(os.environ.get("FLEETBOOT_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    mac = lab.client.run(["cat", f"/sys/class/net/{lab.client_if}/address"]).stdout.strip()
    kernel_file = tmp_path / "vmlinuz"
    kernel_file.write_bytes(os.urandom(256 * 1024))
    workdir = tmp_path / "fb"
    config = {"tftp": {"enabled": False}, "vm": {"run_dir": str(tmp_path / "vmrun")}}
    with FleetbootServer.start(lab, workdir, _inventory(mac, image_path(kernel_file, "vmlinuz")),
                               images={"vmlinuz": kernel_file}, config=config) as server:
        secret = server.cli("token", "create", "wall", "--role", "viewer").stdout.split()[-1]
        server.cli("vm", "create", "db1", "--nic", "model=virtio-net-pci,boot",
                   "--nic", "model=e1000", "--disk-pool", "4")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(SRC), os.environ.get("PYTHONPATH", "")])}
        driver = lab.server.popen([sys.executable, str(HERE / "browser_driver.py"), server.url,
                                   secret, str(shots), "web1", "db1"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            assert driver.stdout is not None
            ready = driver.stdout.readline().decode()
            assert ready.strip() == "READY", ready + driver.stderr.read().decode()  # type: ignore[union-attr]
            _client_boots(lab, server, workdir)
            out, err = driver.communicate(timeout=180)
        finally:
            stop_process(driver)
        assert driver.returncode == 0, err.decode()[-3000:]
        seen = json.loads(out.decode().strip().splitlines()[-1])
        metrics = lab.server.run(["curl", "-sS", "--fail",  # loopback: allowed to scrape
                                  f"http://127.0.0.1:{server.http_port}/metrics"]).stdout
        checked = subprocess.run(["promtool", "check", "metrics"], input=metrics, text=True,
                                 capture_output=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    # The same boot, counted: udhcpc's REQUEST got a durable ACK; web1 is UP.
    assert _sample(metrics, "fleetboot_dhcp_ack_seconds_count") >= 1
    assert _sample(metrics, 'fleetboot_nodes{state="UP"}') == 1
    assert _sample(metrics, 'fleetboot_leases{subnet="lab"}') == 1
    assert _sample(metrics, 'fleetboot_boot_events_total{protocol="dhcp"}') >= 2

    assert seen["marker"] == 42  # the same page all along: no reload
    assert seen["states"][0] == "OFF" and seen["states"][-1] == "UP"
    assert len(seen["states"]) >= 3, seen["states"]  # at least one state between OFF and UP
    assert seen["badge"] == "UP" and seen["bars"] >= 3  # script, kernel, UP
    assert "web1 boots profile live (decided by node default)" in seen["why"]
    assert seen["pool"] == "0 of 50 leased (0%)"  # web1's address is a reservation
    assert any("net0" in s or "nic" in s for s in seen["slots"]), seen["slots"]
    assert seen["phone_overflow"] is False
    for name in ("web-fleet.png", "web-node.png", "web-pools.png", "web-vm-slots.png",
                 "web-fleet-phone.png"):
        assert (shots / name).stat().st_size > 5000, name
