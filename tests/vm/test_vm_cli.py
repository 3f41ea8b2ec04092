"""``fleetboot vm`` end to end through Typer (real QEMU for the running parts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetboot.cli.vm import app


@pytest.fixture
def cli(tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_VM_IMAGE_DIR", str(tmp_path / "images"))
    runner = CliRunner()
    common = ["--db", f"sqlite:///{tmp_path}/fb.db", "--run-dir", str(run_dir)]

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, *common], env={"COLUMNS": "200"})
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_cli_errors_are_one_clean_line(cli) -> None:  # type: ignore[no-untyped-def]
    out = cli("show", "nope", code=2)
    assert out.strip() == "error: no VM named 'nope'; see fleetboot vm list"
    out = cli("create", "x", "--nic", "model=e1000,speed=9", code=2)
    assert "unknown key(s) speed" in out and "Traceback" not in out
    out = cli("create", "x", "--machine", "arm", code=2)
    assert "use 'pc' (i440fx) or 'q35'" in out
    out = cli("create", "x", "--extra", "-device e1000", code=2)
    assert "declare NICs with --nic" in out
    out = cli("create", "x", "--machine", "pc", "--nic-pool", "30", code=2)
    assert "shrink a pool" in out
    out = cli("hotplug", "x", code=2)
    assert "exactly one of --nic or --disk" in out


@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_cli_lifecycle(cli) -> None:  # type: ignore[no-untyped-def]
    out = cli("create", "web1", "--machine", "pc", "--memory", "128",
              "--nic", "model=virtio-net-pci,boot", "--nic", "model=e1000",
              "--disk", "size=16M", "--balloon", "--extra", "-device virtio-rng-pci,addr=0x3",
              "--qemu-pool", "4", "--nic-pool", "4", "--disk-pool", "4", "--passthrough-pool", "2")
    assert "pc-i440fx-" in out and "slots: II .x.b nn__ d___ __" in out
    assert "boot (bootindex 1)" in out and "no ROM" in out
    layout = json.loads(cli("show", "web1", "--json"))
    assert layout["family"] == "pc" and len(layout["placements"]) == 5
    argv = cli("show", "web1", "--argv")
    assert "strict=on" in argv and "accel=tcg" in argv

    out = cli("start", "web1", "--paused")
    assert "running" in out and "query-pci: matches the layout" in out
    out = cli("hotplug", "web1", "--nic", "model=rtl8139")
    assert "net2 at pci.0:08.0: hot-plugged in" in out and "NNn_" in out
    out = cli("hotplug", "web1", "--disk", "size=8M,bus=virtio-scsi")
    assert "disk1 at scsi" in out and "DS__" in out.replace("Ds", "DS")
    out = cli("unplug", "web1", "disk1")
    assert "disk1: deleted; slot freed" in out
    out = cli("unplug", "web1", "net2", "--timeout", "0.5", code=2)
    assert "stays held" in out
    out = cli("list")
    assert "web1" in out and "running" in out and "NN~_" in out
    out = cli("migrate", "web1", "--transport", "tcp")
    assert "migrated over tcp:127.0.0.1:" in out and "matches the layout" in out
    assert "web1: stopped" in cli("stop", "web1")
    out = cli("show", "web1")
    assert "slots: II .X.B NN__ DS__ __" in out
    cli("delete", "web1", "--images")
    assert "web1" not in cli("list")


def test_cli_vm_hosts(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = cli("host", "add", "rack2", "--address", "10.0.0.12", "--host-run-dir",
              str(tmp_path / "r2"), "--image-dir", str(tmp_path / "r2-images"))
    assert "VM host rack2: 10.0.0.12" in out
    assert "exists already" in cli("host", "add", "rack2", "--address", "10.0.0.13",
                                   "--host-run-dir", "/x", "--image-dir", "/y", code=2)
    assert "rack2" in cli("host", "list") and "10.0.0.12" in cli("host", "list")
    cli("create", "h1", "--machine", "pc", "--nic", "boot")
    out = cli("migrate", "h1", "--to", "rack9", code=2)
    assert "no VM host named 'rack9'" in out
    assert "only a running VM migrates" in cli("migrate", "h1", "--to", "rack2", code=2)
