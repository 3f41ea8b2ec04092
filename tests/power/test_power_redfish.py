"""Redfish against sushy-tools' emulator (fake driver) over HTTPS with a self-signed
certificate and basic auth; curl reads the same resources as a cross-check."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fleetboot.lab.bmc import SushyEmulator, WedgedBmc
from fleetboot.power.bulk import BulkRunner, BulkSettings
from fleetboot.power.core import Credentials, DriverName, Operation, PowerState, Target

pytestmark = pytest.mark.slow

# The fake driver applies a power change after a random 1-11 s.
SETTINGS = BulkSettings(timeout_s=45, poll_s=0.5, soft_timeout_s=20)


def _target(emu: SushyEmulator, index: int = 0, *, ca: bool = True,
            password: str = "secret") -> Target:
    return Target(emu.systems[index]["name"], index + 1, DriverName.REDFISH, emu.url, None,
                  Credentials("admin", password), str(emu.cert) if ca else None,
                  emu.systems[index]["uuid"])


def _curl(emu: SushyEmulator, path: str) -> dict[str, Any]:
    out = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(emu.cert), "-u",
                          f"{emu.username}:{emu.password}", emu.url + path],
                         capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))


async def test_untrusted_certificate_is_refused_with_the_fix(redfish: SushyEmulator) -> None:
    [out] = await BulkRunner(SETTINGS).run([_target(redfish, ca=False)], Operation.STATUS)
    assert not out.ok and "not trusted" in (out.error or "") and "--ca-file" in out.error


async def test_wrong_credentials_change_nothing(redfish: SushyEmulator) -> None:
    [out] = await BulkRunner(SETTINGS).run([_target(redfish, password="nope")], Operation.ON)
    assert not out.ok and out.reason == "wrong credentials" and out.attempts == 1
    assert "HTTP 401" in (out.error or "")
    assert _curl(redfish, redfish.system_path(0))["PowerState"] == "Off"


async def test_reboot_sets_one_time_pxe_and_powers_on(redfish: SushyEmulator) -> None:
    runner = BulkRunner(SETTINGS)
    [out] = await runner.run([_target(redfish, 0)], Operation.REBOOT_NETWORK)
    assert out.ok and out.state is PowerState.ON
    system = _curl(redfish, redfish.system_path(0))
    assert system["PowerState"] == "On"
    assert system["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    # The other system behind the same service was not touched.
    assert _curl(redfish, redfish.system_path(1))["PowerState"] == "Off"
    [off] = await runner.run([_target(redfish, 0)], Operation.OFF)
    assert off.ok and off.state is PowerState.OFF
    assert _curl(redfish, redfish.system_path(0))["PowerState"] == "Off"


def test_cli_with_ca_file(redfish: SushyEmulator, run: Any, tmp_path: Path) -> None:
    assert run("node", "add", "a", "--nic", "52:54:00:aa:03:01").exit_code == 0
    res = run("power", "set", "a", "--driver", "redfish", "--address", redfish.url,
              "--username", "admin", "--password-env", "FB_TEST_BMC_PW",
              "--ca-file", redfish.cert, "--system", redfish.systems[0]["uuid"])
    assert res.exit_code == 2 and "FB_TEST_BMC_PW is not set" in res.output
    res = run("power", "set", "a", "--driver", "redfish", "--address", redfish.url,
              "--username", "admin", "--password-file", _pw(tmp_path),
              "--ca-file", redfish.cert, "--system", redfish.systems[0]["uuid"])
    assert res.exit_code == 0, res.output
    res = run("power", "status", "a")
    assert res.exit_code == 0 and "1/1 ok, 0 failed (1 off)" in res.output


def _pw(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text("secret\n")
    return path


async def test_a_wedged_redfish_service_fails_alone(redfish: SushyEmulator,
                                                   wedged: WedgedBmc) -> None:
    silent = Target("silent", 9, DriverName.REDFISH, f"https://127.0.0.1:{wedged.tcp_port}",
                    None, Credentials("admin", "secret"), str(redfish.cert))
    runner = BulkRunner(BulkSettings(timeout_s=4, retries=1))
    start = time.monotonic()
    outcomes = {o.node: o for o in await runner.run([silent, _target(redfish, 1)],
                                                     Operation.STATUS)}
    assert time.monotonic() - start < 4 + 3
    assert outcomes["node-b"].ok and outcomes["node-b"].state is PowerState.OFF
    assert not outcomes["silent"].ok and outcomes["silent"].reason == "no answer (timeout)"
