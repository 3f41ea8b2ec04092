"""`fleetboot serve` runs as an ordinary user with three capabilities, as the
shipped systemd unit (examples/fleetboot.service) runs it: DHCP, TFTP and HTTP
all answer, and the process holds nothing more."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetboot.lab.fleet import SERVE_CAPABILITIES, FleetbootServer
from fleetboot.lab.netns import Lab

ROOT = Path(__file__).resolve().parents[2]
CAP_BITS = {"net_bind_service": 10, "net_admin": 12, "net_raw": 13}


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and the server runs as nobody.
    path = Path(tempfile.mkdtemp(prefix="fleetboot-unpriv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_serve_as_nobody_answers_dhcp_tftp_and_http(lab: Lab, workdir: Path) -> None:
    mac = lab.client.run(["cat", f"/sys/class/net/{lab.client_if}/address"]).stdout.strip()
    inventory = {"subnets": [{"name": "lab", "cidr": "10.77.0.0/24",
                              "next_server": lab.server_ip,
                              "reservations": [{"mac": mac, "address": "10.77.0.50",
                                                "hostname": "n1"}]}]}
    with FleetbootServer.start(lab, workdir, inventory, run_as="nobody") as server:
        status = _status(server.process.pid)
        nobody = pwd.getpwnam("nobody").pw_uid
        assert status["Uid"].split() == [str(nobody)] * 4
        assert int(status["CapEff"], 16) == sum(1 << CAP_BITS[c] for c in SERVE_CAPABILITIES)

        script = workdir / "udhcpc.sh"
        script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" > {workdir}/bound\n')
        script.chmod(0o755)
        got = lab.client.run(["busybox", "udhcpc", "-q", "-n", "-i", lab.client_if, "-s",
                              str(script), "-t", "5", "-T", "1"], check=False)
        assert got.returncode == 0, got.stderr
        assert (workdir / "bound").read_text().strip() == "10.77.0.50"

        fetched = workdir / "fetched.kpxe"
        lab.client.run(["curl", "-sf", "-o", str(fetched),
                        f"tftp://{lab.server_ip}/undionly.kpxe"])
        assert fetched.read_bytes() == (workdir / "bootroot" / "undionly.kpxe").read_bytes()

        health = lab.client.run(["curl", "-sf", f"{server.url}/healthz"])
        assert '"status":"ok"' in health.stdout.replace(" ", "")


def test_the_shipped_unit_file_is_valid() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "examples" / "fleetboot.service").read_text()
    assert "AmbientCapabilities=" + " ".join(f"CAP_{c.upper()}" for c in SERVE_CAPABILITIES) \
        in unit  # the unit grants exactly what the test above proves is enough
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "fleetboot.service"
        # verify checks that ExecStart exists: point it at this checkout's fleetboot.
        copy.write_text(unit.replace("/opt/fleetboot/.venv/bin/fleetboot",
                                     str(Path(sys.executable).with_name("fleetboot"))))
        result = subprocess.run(["systemd-analyze", "verify", str(copy)],
                                capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
