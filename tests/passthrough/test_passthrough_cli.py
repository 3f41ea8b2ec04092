"""The command line: host scan/devices/tag, flavor add/list/show/remove, vm claim...migrate."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import typer
from pt_helpers import INSTANCE
from typer.testing import CliRunner

from fleetboot.cli import common
from fleetboot.cli.passthrough import flavor_app, host_app, vm_passthrough_app
from fleetboot.inventory.db import Database
from fleetboot.passthrough.sysfs_builder import build_example_host
from fleetboot.vm.service import VmService, default_settings
from fleetboot.vm.specs import CreateSpec

app = typer.Typer()
app.add_typer(host_app, name="host")
app.add_typer(flavor_app, name="flavor")
app.add_typer(vm_passthrough_app, name="vm")


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    # Wide consoles: assertions look for whole table cells and error lines.
    for console in (common.console, common.err_console):
        monkeypatch.setattr(console, "_width", 250)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.output

    for which in ("a", "b"):
        build_example_host(tmp_path / which, which)
    return run


def test_end_to_end(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = cli("host", "scan", "compute-a", "--sysfs", str(tmp_path / "a"))
    assert "13 devices; 13 added" in out
    cli("host", "scan", "compute-b", "--sysfs", str(tmp_path / "b"))
    assert "0 added" in cli("host", "scan", "compute-b", "--sysfs", str(tmp_path / "b"))
    for host, pf in (("compute-a", "0000:3b:00.0"), ("compute-b", "0000:18:00.0")):
        assert "physical_network=physnet1" in cli("host", "tag", host, pf,
                                                  "physical_network=physnet1")
    cli("host", "tag", "compute-b", "0000:d8:00.0", "physical_network=physnet1")
    cli("flavor", "add", "gpu-a100", "--vendor", "10de", "--product", "20b0")
    out = cli("flavor", "add", "sriov-physnet1", "--class", "02", "--type", "vf",
              "--tag", "physical_network=physnet1")
    assert "compute-a 0/4, compute-b 0/2" in out  # matching, none allowed yet
    cli("flavor", "add", "mlx-netdev", "--vendor", "15b3", "--driver", "mlx5_core")
    out = cli("host", "devices", "compute-a")
    assert "not allowed for passthrough" in out and "nothing yet (fleetboot host allow" in out
    for host in ("compute-a", "compute-b"):
        out = cli("host", "allow", host, "gpu-a100", "sriov-physnet1", "mlx-netdev")
        assert f"{host}: allowed class=02* type=vf physical_network=physnet1" in out
    out = cli("host", "devices", "compute-a")
    assert "1) vendor=10de product=20b0" in out and "3) vendor=15b3" in out
    out = cli("flavor", "add", "slot3b", "--address-glob", "0000:3b:*")
    assert "rarely equivalent" in out
    out = cli("flavor", "list")
    assert "gpu-a100" in out and "type=vf physical_network=physnet1" in out
    out = cli("host", "devices", "compute-a", "--flavor", "sriov-physnet1")
    assert "VF of 0000:3b:00.0" in out and "0000:86:00.0" not in out
    assert "slot3b" in cli("flavor", "show", "sriov-physnet1")  # "also in"

    out = cli("vm", "claim", INSTANCE, "1 x sriov-physnet1, 1 x mlx-netdev", "--dry-run")
    assert "fits compute-a" in out and "fits compute-b" in out
    out = cli("vm", "claim", INSTANCE, "1 x sriov-physnet1", "1 x mlx-netdev", "--host",
              "compute-a")
    assert "0000:3b:02.0" in out and "0000:5e:00.0" in out
    out = cli("vm", "pci-attach", INSTANCE, "--xml")
    assert f"network fb-{INSTANCE}-p0" in out and '<forward mode="hostdev"' in out
    before = cli("vm", "pci-show", INSTANCE, "--xml")
    assert "-device vfio-pci,host=0000:3b:02.0,id=ptdev0" in before
    out = cli("vm", "pci-migrate", INSTANCE, "--to", "compute-b")
    assert "port 0: compute-a 0000:3b:02.0 -> compute-b" in out and "XML unchanged" in out
    after = cli("vm", "pci-show", INSTANCE, "--xml")
    assert after.split("<domain")[1] == before.split("<domain")[1]
    out = cli("flavor", "remove", "sriov-physnet1", code=2)
    assert "in use by instance" in out
    assert "released 2 device(s)" in cli("vm", "release", INSTANCE)
    cli("flavor", "remove", "sriov-physnet1")
    assert "compute-a" in cli("host", "list")


def test_errors_are_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = cli("host", "scan", "h", "--sysfs", str(tmp_path / "nothing"), code=2)
    assert "not a sysfs root" in out and "Traceback" not in out
    assert "unknown host" in cli("host", "devices", "nope", code=2)
    assert "no criteria" in cli("flavor", "add", "empty", code=2)
    assert "not a hex id" in cli("flavor", "add", "x", "--vendor", "zz", code=2)
    assert "unknown flavor(s) gpu" in cli("vm", "claim", INSTANCE, "1 x gpu", code=2)
    assert "neither an instance UUID nor the name of a VM" in cli("vm", "claim", "vm-1",
                                                                   "1 x gpu", code=2)
    assert "is not like '2 x gpu-a100'" in cli("vm", "claim", INSTANCE, "2 x a b", code=2)
    assert "--to HOST" in cli("vm", "pci-migrate", INSTANCE, code=2)
    cli("host", "scan", "compute-a", "--sysfs", str(tmp_path / "a"))
    assert "has 0 allow rule(s)" in cli("host", "disallow", "compute-a", "1", code=2)


@pytest.mark.qemu
def test_vm_by_name(cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`vm claim NAME` and `vm pci-attach NAME` reach a VM of `fleetboot vm`."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86 not installed")
    run_dir = Path(tempfile.mkdtemp(prefix="fbpt", dir="/tmp"))
    monkeypatch.setenv("FLEETBOOT_VM_RUN_DIR", str(run_dir))
    monkeypatch.setenv("FLEETBOOT_VM_IMAGE_DIR", str(tmp_path / "images"))
    try:
        cli("host", "scan", "compute-a", "--sysfs", str(tmp_path / "a"))
        cli("flavor", "add", "gpu-a100", "--vendor", "10de", "--product", "20b0")
        cli("host", "allow", "compute-a", "gpu-a100")
        db = Database(os.environ["FLEETBOOT_DB"])
        service = VmService(db, default_settings())
        view = asyncio.run(service.create(CreateSpec(name="gpu-vm")))
        assert "0000:86:00.0" in cli("vm", "claim", "gpu-vm", "2 x gpu-a100")
        assert "ptdev0, ptdev1 vfio device(s) placed" in cli("vm", "pci-attach", "gpu-vm")
        layout = service.read("gpu-vm").layout
        assert layout.find("ptdev1") is not None
        assert view.uuid in cli("vm", "pci-show", "gpu-vm")
        db.dispose()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
