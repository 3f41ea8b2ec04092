"""Fixtures for the power tests: real emulated BMCs (ipmi_sim, sushy-emulator) and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from power_helpers import Run, require
from typer.testing import CliRunner

from fleetboot.cli.main import app
from fleetboot.lab.bmc import IpmiSim, SushyEmulator, WedgedBmc


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """The CLI on a fresh SQLite file; the key file lands in tmp_path (the state dir)."""
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def ipmi_bmc(tmp_path: Path) -> Iterator[IpmiSim]:
    require("ipmi_sim", "ipmitool")
    sim = IpmiSim.start(tmp_path / "bmc1")
    yield sim
    sim.stop()


@pytest.fixture
def wedged() -> Iterator[WedgedBmc]:
    bmc = WedgedBmc()
    yield bmc
    bmc.close()


@pytest.fixture
def redfish(tmp_path: Path) -> Iterator[SushyEmulator]:
    require("htpasswd", "openssl")
    emu = SushyEmulator.start(tmp_path / "redfish", ["node-a", "node-b"], power_state="Off")
    yield emu
    emu.stop()
