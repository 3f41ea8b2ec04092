"""The ``vm:`` section of fleetboot.yaml, its environment overrides, and how the CLI uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetboot.cli.main import app
from fleetboot.config import ConfigError, Settings, load_settings
from fleetboot.vm.firmware import OVMF_CODE, OVMF_VARS, Firmware
from fleetboot.vm.service import IMAGE_DIR_ENV, RUN_DIR_ENV, default_settings, vm_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "fleetboot.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (RUN_DIR_ENV, IMAGE_DIR_ENV, "FLEETBOOT_STATE_DIR", "FLEETBOOT_DB",
                 "FLEETBOOT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_every_field_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
vm:
  run_dir: run            # relative: next to the configuration file
  image_dir: /srv/images
  qemu: bin/qemu-system-x86_64
  qemu_img: qemu-img
  unplug_timeout_s: 3
  migrate_timeout_s: 30.5
  start_timeout_s: 20
  enumerate_timeout_s: 5
  firmware: uefi
  ovmf_code: /opt/ovmf/CODE.fd
  ovmf_vars: ovmf/VARS.fd
""")
    vm = vm_settings(load_settings(cfg), environ={})
    assert vm.run_dir == tmp_path / "etc" / "run"
    assert vm.image_dir == Path("/srv/images")
    assert vm.qemu == str(tmp_path / "etc" / "bin" / "qemu-system-x86_64")
    assert vm.qemu_img == "qemu-img"  # a bare name is looked up in PATH
    assert (vm.unplug_timeout, vm.migrate_timeout) == (3.0, 30.5)
    assert (vm.start_timeout, vm.enumerate_timeout) == (20.0, 5.0)
    assert vm.firmware is Firmware.UEFI
    assert vm.ovmf_code == Path("/opt/ovmf/CODE.fd")
    assert vm.ovmf_vars == tmp_path / "etc" / "ovmf" / "VARS.fd"


def test_defaults(tmp_path: Path) -> None:
    vm = vm_settings(load_settings(write(tmp_path, "state_dir: state\n")), environ={})
    assert vm.run_dir == Path("/run/fleetboot/vm")
    assert vm.image_dir == tmp_path / "etc" / "state" / "vm-images"
    assert (vm.qemu, vm.qemu_img) == ("qemu-system-x86_64", "qemu-img")
    assert (vm.unplug_timeout, vm.migrate_timeout, vm.start_timeout,
            vm.enumerate_timeout) == (10.0, 120.0, 60.0, 20.0)
    assert vm.firmware is Firmware.BIOS
    assert (vm.ovmf_code, vm.ovmf_vars) == (OVMF_CODE, OVMF_VARS)  # Debian's ovmf package


@pytest.mark.parametrize(("text", "message"), [
    ("vm:\n  firmware: efi\n", "vm.firmware: Input should be 'bios' or 'uefi'"),
    ("vm:\n  run_dri: /run/x\n", "vm.run_dri: Extra inputs are not permitted"),
    ("vm:\n  unplug_timeout_s: 0\n", "vm.unplug_timeout_s: Input should be greater than 0"),
    ("vm: [1, 2]\n", "vm: Input should be a valid dictionary"),
])
def test_bad_values_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert message in str(caught.value) and str(cfg) in str(caught.value)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "vm:\n  run_dir: /run/a\n  image_dir: /srv/a\n"))
    assert vm_settings(settings, environ={}).run_dir == Path("/run/a")
    both = vm_settings(settings, environ={RUN_DIR_ENV: "/tmp/r", IMAGE_DIR_ENV: "/tmp/i"})
    assert (both.run_dir, both.image_dir) == (Path("/tmp/r"), Path("/tmp/i"))
    empty = vm_settings(settings, environ={RUN_DIR_ENV: "", IMAGE_DIR_ENV: ""})
    assert (empty.run_dir, empty.image_dir) == (Path("/run/a"), Path("/srv/a"))


def test_process_environment_is_the_default(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, "/tmp/from-env")
    assert vm_settings(Settings()).run_dir == Path("/tmp/from-env")


def test_default_settings_without_a_file(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The old entry point (no configuration at hand) keeps its environment variables."""
    monkeypatch.setenv("FLEETBOOT_STATE_DIR", str(tmp_path / "st"))
    assert default_settings().image_dir == tmp_path / "st" / "vm-images"
    assert default_settings(str(tmp_path)).image_dir == tmp_path / "vm-images"
    monkeypatch.setenv(IMAGE_DIR_ENV, str(tmp_path / "img"))
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    vm = default_settings()
    assert (vm.image_dir, vm.run_dir) == (tmp_path / "img", tmp_path / "run")


# ---------------------------------------------------------------------------
# The CLI: --run-dir, then FLEETBOOT_VM_RUN_DIR, then vm.run_dir
# ---------------------------------------------------------------------------


def run_cli(cfg: Path, *args: str, env: dict[str, str] | None = None, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["--config", str(cfg), "vm", *args],
                                env={"COLUMNS": "200", **(env or {})})
    assert result.exit_code == code, result.output
    return result.output


def test_cli_run_dir_precedence(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database:\n  url: sqlite:///fb.db\nvm:\n  run_dir: run-cfg\n")
    # `show` takes the VM's lock (a file in run_dir) before it looks the VM up.
    run_cli(cfg, "show", "x", code=2)
    assert (tmp_path / "etc" / "run-cfg" / ".lock-x").exists()
    run_cli(cfg, "show", "y", env={RUN_DIR_ENV: str(tmp_path / "run-env")}, code=2)
    assert (tmp_path / "run-env" / ".lock-y").exists()
    run_cli(cfg, "show", "z", "--run-dir", str(tmp_path / "run-opt"),
            env={RUN_DIR_ENV: str(tmp_path / "run-env")}, code=2)
    assert (tmp_path / "run-opt" / ".lock-z").exists()
    assert not (tmp_path / "run-env" / ".lock-z").exists()


def test_cli_firmware_errors(tmp_path: Path) -> None:
    cfg = write(tmp_path, "database:\n  url: sqlite:///fb.db\nvm:\n  run_dir: run\n")
    out = run_cli(cfg, "create", "x", "--firmware", "efi", code=2)
    assert "firmware 'efi': use bios (SeaBIOS) or uefi (OVMF)" in out
    out = run_cli(cfg, "create", "x", "--firmware", "uefi", "--memory", "32", code=2)
    assert "OVMF (UEFI) needs at least 64 MiB; give --memory 64 or more" in out
    bad = write(tmp_path, "vm:\n  firmware: efi\n")
    out = run_cli(bad, "list", code=2)
    assert "vm.firmware: Input should be 'bios' or 'uefi'" in out


def test_cli_uses_the_configured_firmware_and_image_dir(tmp_path: Path,
                                                        need_qemu: None) -> None:
    cfg = write(tmp_path, "database:\n  url: sqlite:///fb.db\n"
                          "vm:\n  run_dir: run\n  image_dir: img\n  firmware: uefi\n")
    out = run_cli(cfg, "create", "u1", "--machine", "pc")
    stores = list((tmp_path / "etc" / "img").glob("u1-*.OVMF_VARS.fd"))
    assert len(stores) == 1 and "firmware: uefi (OVMF; variable store" in out
    run_cli(cfg, "create", "b1", "--firmware", "bios", "--disk", "size=1M")
    assert (tmp_path / "etc" / "img" / "b1-disk0.qcow2").exists()
    assert "firmware: bios (SeaBIOS)" in run_cli(cfg, "show", "b1")
    listing = run_cli(cfg, "list")
    assert " uefi " in listing and " bios " in listing
    argv = run_cli(cfg, "show", "u1", "--argv")
    assert "pflash1=fw-vars" in argv and stores[0].name in argv
    run_cli(cfg, "delete", "u1")
    assert not stores[0].exists()
