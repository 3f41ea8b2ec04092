"""`image add` tells an initrd from a kernel (issue 11, item 13): the printed hint
names --initrd for an initrd, --kernel for a kernel. Real files: iPXE's .lkrn (a
Linux boot-protocol image) and an initrd made by cpio and gzip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleetboot.boot.images import image_role
from fleetboot.cli.main import app

LKRN = Path("/usr/lib/ipxe/ipxe.lkrn")


def _initrd(tmp_path: Path, name: str) -> Path:
    if shutil.which("cpio") is None or shutil.which("gzip") is None:
        pytest.skip("needs cpio and gzip")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "init").write_text("#!/bin/sh\n")
    out = tmp_path / name
    archive = subprocess.run("find . | cpio -o -H newc --quiet | gzip -9", shell=True,
                             cwd=tmp_path / "tree", capture_output=True, check=True).stdout
    out.write_bytes(archive)
    return out


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: " ".join(runner.invoke(app, list(args)).output.split())


def test_an_initrd_is_suggested_as_initrd(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    initrd = _initrd(tmp_path, "rootfs.cpio.gz")  # nothing in the name says initrd
    out = run("image", "add", str(initrd))
    assert "--initrd images/" in out and "--kernel images/" not in out


def test_a_kernel_is_suggested_as_kernel(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not LKRN.is_file():
        pytest.skip("needs ipxe (ipxe.lkrn)")
    shutil.copy(LKRN, tmp_path / "boot.img")  # nothing in the name says kernel
    out = run("image", "add", str(tmp_path / "boot.img"))
    assert "--kernel images/" in out and "--initrd images/" not in out


def test_roles_from_content_and_name() -> None:
    assert image_role(b"070701" + bytes(100), "x") == "initrd"
    assert image_role(bytes(0x202) + b"HdrS", "initrd.img") == "kernel"  # content wins
    assert image_role(bytes(0x38) + b"ARM\x64", "Image") == "kernel"
    assert image_role(b"\x1f\x8b" + bytes(10), "vmlinuz") == "kernel"  # a gzipped kernel
    assert image_role(b"\x1f\x8b" + bytes(10), "root.gz") == "initrd"
    assert image_role(b"MZ" + bytes(100), "ipxe.efi") is None


@given(st.binary(max_size=4096), st.text(max_size=40))
def test_any_content_gets_an_answer(head: bytes, name: str) -> None:
    assert image_role(head, name) in ("kernel", "initrd", None)
