"""IPMI against OpenIPMI's ipmi_sim: Fleetboot (pyghmi) drives it, ipmitool cross-checks.

The BMC's machine is a real process the chassis-control script starts and kills,
so "on" and "off" are visible with ps, not just in the BMC's answer.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from power_helpers import Run

from fleetboot.lab.bmc import IpmiSim, WedgedBmc
from fleetboot.power import ipmi_probe
from fleetboot.power.bulk import BulkRunner, BulkSettings
from fleetboot.power.core import Credentials, DriverName, Operation, PowerState, Target

pytestmark = pytest.mark.slow


def _target(sim: IpmiSim | WedgedBmc, node: str = "n1", node_id: int = 1,
            password: str = "secret") -> Target:
    return Target(node, node_id, DriverName.IPMI, "127.0.0.1", sim.port,
                  Credentials("admin", password))


def _ipmitool_power(sim: IpmiSim) -> str:
    out = sim.ipmitool("power", "status")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def test_on_off_cycle_and_bootdev_match_ipmitool(ipmi_bmc: IpmiSim) -> None:
    runner = BulkRunner(BulkSettings(timeout_s=20, soft_timeout_s=1, poll_s=0.2))
    [status] = await runner.run([_target(ipmi_bmc)], Operation.STATUS)
    assert status.ok and status.state is PowerState.OFF
    assert _ipmitool_power(ipmi_bmc) == "Chassis Power is off"

    [on] = await runner.run([_target(ipmi_bmc)], Operation.ON)
    assert on.ok and on.state is PowerState.ON
    assert _ipmitool_power(ipmi_bmc) == "Chassis Power is on"
    first = ipmi_bmc.machine_pid()
    assert first is not None

    [cycle] = await runner.run([_target(ipmi_bmc)], Operation.REBOOT_NETWORK)
    assert cycle.ok and cycle.state is PowerState.ON
    second = ipmi_bmc.machine_pid()
    assert second is not None and second != first  # a new machine process: really cycled
    assert ipmi_bmc.bootdev() == "pxe"  # the one-time boot device reached the BMC

    # The sim's machine ignores the ACPI button: off falls back to a hard off after 1 s.
    [off] = await runner.run([_target(ipmi_bmc)], Operation.OFF)
    assert off.ok and off.state is PowerState.OFF
    assert ipmi_bmc.machine_pid() is None
    assert _ipmitool_power(ipmi_bmc) == "Chassis Power is off"
    assert ipmi_bmc.power_log() == ["on", "off", "on", "off"]


async def test_ipmitool_change_is_what_fleetboot_reports(ipmi_bmc: IpmiSim) -> None:
    assert ipmi_bmc.ipmitool("power", "on").returncode == 0
    [status] = await BulkRunner().run([_target(ipmi_bmc)], Operation.STATUS)
    assert status.ok and status.state is PowerState.ON


async def test_wrong_password_is_a_clear_error_and_changes_nothing(ipmi_bmc: IpmiSim) -> None:
    runner = BulkRunner(BulkSettings(timeout_s=20, retries=3))
    [out] = await runner.run([_target(ipmi_bmc, password="wrong")], Operation.ON)
    assert not out.ok and out.reason == "wrong credentials"
    assert "refused the credentials" in (out.error or "") and "fleetboot power set" in out.error
    assert out.attempts == 1  # never retried: BMCs lock accounts after wrong passwords
    assert "wrong" not in (out.error or "").replace("wrong credentials", "")
    assert ipmi_bmc.machine_pid() is None and ipmi_bmc.power_log() == []
    assert _ipmitool_power(ipmi_bmc) == "Chassis Power is off"


async def test_a_wedged_bmc_does_not_delay_the_others(tmp_path: Path, wedged: WedgedBmc) -> None:
    sims = [IpmiSim.start(tmp_path / f"b{i}") for i in range(3)]
    try:
        # The wedged one first: it must not hold up the ones after it.
        targets = [_target(wedged, "stuck", 99)]
        targets += [_target(s, f"n{i}", i) for i, s in enumerate(sims)]
        done: dict[str, float] = {}
        start = time.monotonic()
        runner = BulkRunner(BulkSettings(timeout_s=8, retries=1, poll_s=0.2))
        outcomes = await runner.run(
            targets, Operation.CYCLE,
            on_outcome=lambda o: done.__setitem__(o.node, time.monotonic() - start))
        by_node = {o.node: o for o in outcomes}
        assert all(by_node[f"n{i}"].ok for i in range(3))
        assert all(s.machine_pid() is not None for s in sims)
        stuck = by_node["stuck"]
        assert not stuck.ok and stuck.reason == "no answer (timeout)"
        # The healthy ones never waited for the wedged one, which used no more than its budget.
        assert max(done[f"n{i}"] for i in range(3)) < 8
        assert done["stuck"] < 8 + 3
    finally:
        for s in sims:
            s.stop()


def test_cli_set_status_cycle_and_timeline(run: Run, ipmi_bmc: IpmiSim, tmp_path: Path) -> None:
    assert run("node", "add", "n1", "--nic", "52:54:00:aa:01:01").exit_code == 0
    (tmp_path / "pw").write_text("secret\n")
    res = run("power", "set", "n1", "--driver", "ipmi", "--address", "127.0.0.1",
              "--port", ipmi_bmc.port, "--username", "admin", "--password-file", tmp_path / "pw")
    assert res.exit_code == 0, res.output
    assert "secret" not in res.output
    res = run("power", "cycle", "n1", "--timeout", 20)
    assert res.exit_code == 0, res.output
    assert "1/1 ok" in res.output
    assert ipmi_bmc.machine_pid() is not None
    res = run("power", "status", "--all")
    assert res.exit_code == 0 and "on" in res.output
    res = run("power", "poll", "--once")
    assert res.exit_code == 0 and "1/1 ok, 0 failed (1 on)" in res.output, res.output
    nodes = run("nodes")
    assert nodes.exit_code == 0 and "power" in nodes.output and " on " in nodes.output
    show = run("power", "show")
    assert show.exit_code == 0 and "stored" in show.output and "secret" not in show.output
    timeline = run("timeline", "n1", "--json")
    assert timeline.exit_code == 0
    assert '"source": "power"' in timeline.output and '"kind": "cycle"' in timeline.output
    assert "secret" not in timeline.output

    res = run("node", "boot", "n1", "local", "--level", "next", "--reboot")
    assert res.exit_code == 0, res.output
    assert ipmi_bmc.bootdev() == "pxe" and ipmi_bmc.power_log()[-2:] == ["off", "on"]


def test_cli_unreachable_and_unconfigured_nodes_are_reported(run: Run, wedged: WedgedBmc,
                                                             tmp_path: Path) -> None:
    for name in ("n1", "n2"):
        assert run("node", "add", name, "--nic", f"52:54:00:aa:02:0{name[-1]}").exit_code == 0
    (tmp_path / "pw").write_text("secret\n")
    assert run("power", "set", "n1", "--driver", "ipmi", "--address", "127.0.0.1", "--port",
               wedged.port, "--username", "admin", "--password-file", tmp_path / "pw"
               ).exit_code == 0
    res = run("power", "on", "n1", "n2", "--timeout", 3)
    assert res.exit_code == 1
    assert "no answer" in res.output and "no power settings (skipped): n2" in res.output
    res = run("node", "boot", "n2", "local", "--level", "next", "--reboot")
    assert res.exit_code == 2 and "n2 has no power settings" in res.output
    assert "next=" not in run("node", "show", "n2").output  # refused before anything changed


async def test_the_probe_tells_a_live_bmc_from_a_silent_one(ipmi_bmc: IpmiSim,
                                                            wedged: WedgedBmc) -> None:
    assert await ipmi_probe.answers("127.0.0.1", ipmi_bmc.port, 3.0)
    start = time.monotonic()
    assert not await ipmi_probe.answers("127.0.0.1", wedged.port, 1.0)
    assert time.monotonic() - start < 3.0


def test_probe_request_is_what_ipmitool_sends() -> None:
    # Captured from `ipmitool -I lanplus ... -C 3 power status` (its first datagram).
    assert ipmi_probe.REQUEST.hex() == "0600ff07000000000000000000092018c88100388e04b5"
    assert ipmi_probe.checksum(ipmi_probe.REQUEST[14:16]) == ipmi_probe.REQUEST[16]
    assert ipmi_probe.checksum(ipmi_probe.REQUEST[17:22]) == ipmi_probe.REQUEST[22]
    assert not ipmi_probe.is_auth_caps_answer(ipmi_probe.REQUEST)  # a request, not an answer
    assert not ipmi_probe.is_auth_caps_answer(b"\x06\x00")
