"""The content-addressed image store and `fleetboot image ...`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleetboot.boot.images import (
    ImageError,
    ImageStore,
    check_image_name,
    referenced_by,
    remove_image,
)
from fleetboot.cli import images as images_cli
from fleetboot.inventory import service
from fleetboot.inventory.db import Database


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_add_copies_to_a_content_path(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    data = os.urandom(100_000)
    image, created = store.add(_file(tmp_path / "vmlinuz", data))
    digest = hashlib.sha256(data).hexdigest()[:16]
    assert created and image.path == f"images/{digest}/vmlinuz" and image.size == len(data)
    stored = tmp_path / "root" / image.path
    assert stored.read_bytes() == data
    assert stored.stat().st_mode & 0o777 == 0o444
    again, created = store.add(tmp_path / "vmlinuz")
    assert again == image and not created
    assert not [p for p in (tmp_path / "root" / "images").iterdir() if p.name.startswith(".")]


def test_a_new_version_is_a_new_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    v1, _ = store.add(_file(tmp_path / "k", b"version 1"), "vmlinuz")
    old = (tmp_path / "root" / v1.path).open("rb")  # a node mid-download
    v2, _ = store.add(_file(tmp_path / "k", b"version 2"), "vmlinuz")
    assert v1.path != v2.path and v1.name == v2.name == "vmlinuz"
    assert old.read() == b"version 1"
    assert (tmp_path / "root" / v1.path).read_bytes() == b"version 1"
    assert [i.path for i in store.list()] == sorted([v1.path, v2.path])


def test_find_by_path_prefix_or_name(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    a, _ = store.add(_file(tmp_path / "a", b"a"), "kernel")
    b, _ = store.add(_file(tmp_path / "b", b"b"), "initrd")
    assert store.find(a.path) == a and store.find("/" + a.path) == a
    assert store.find(f"{b.digest}/initrd") == b and store.find(b.digest[:6]) == b
    assert store.find("kernel") == a
    store.add(_file(tmp_path / "c", b"c"), "kernel")
    with pytest.raises(ImageError, match="several"):
        store.find("kernel")
    with pytest.raises(ImageError, match="no image"):
        store.find("nothing")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "..\\x", "x\x00", "x\ny", ".hidden",
                                 "n" * 256])
def test_bad_names(bad: str) -> None:
    with pytest.raises(ImageError):
        check_image_name(bad)


@given(st.text(min_size=1, max_size=60))
def test_accepted_names_stay_in_their_directory(name: str) -> None:
    try:
        check_image_name(name)
    except ImageError:
        return
    assert "/" not in name and name not in (".", "..") and "\x00" not in name


def test_remove_refuses_images_in_use(db: Database, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    kernel, _ = store.add(_file(tmp_path / "k", b"kernel"), "vmlinuz")
    initrd, _ = store.add(_file(tmp_path / "i", b"initrd"), "initrd.img")
    script, _ = store.add(_file(tmp_path / "s", b"efi"), "grub.efi")
    with db.session() as s:
        service.add_profile(s, "deb", kernel=kernel.path, initrd="/" + initrd.path)
        service.add_profile(s, "custom", script=f"#!ipxe\nchain /boot/files/{script.path}\n")
    with db.session() as s:
        assert referenced_by(s, kernel) == ["deb"] and referenced_by(s, script) == ["custom"]
        for image in (kernel, initrd, script):
            with pytest.raises(ImageError, match="used by profile"):
                remove_image(store, s, image.path)
    with db.session() as s:
        service.remove_profile(s, "deb")
    with db.session() as s:
        remove_image(store, s, kernel.path)
    assert not (tmp_path / "root" / kernel.path).exists()
    assert not (tmp_path / "root" / "images" / kernel.digest).exists()
    assert {i.path for i in store.list()} == {initrd.path, script.path}


def test_verify_detects_a_changed_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    image, _ = store.add(_file(tmp_path / "k", b"kernel"))
    assert store.verify(image)
    path = tmp_path / "root" / image.path
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    assert not store.verify(image)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleetboot.yaml").write_text("boot_root: bootroot\n")
    root = typer.Typer()  # the integrator registers images_cli.app as `fleetboot image`
    root.add_typer(images_cli.app, name="image")
    root.callback()(lambda: None)
    runner = CliRunner()
    return lambda *args: runner.invoke(root, list(args))


def test_cli(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _file(tmp_path / "vmlinuz-6.1", b"a kernel")
    result = run("image", "add", "vmlinuz-6.1", "--name", "vmlinuz")
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(b"a kernel").hexdigest()[:16]
    path = f"images/{digest}/vmlinuz"
    assert path in result.output
    assert (tmp_path / "bootroot" / path).read_bytes() == b"a kernel"
    assert "already stored" in run("image", "add", "vmlinuz-6.1", "--name", "vmlinuz").output
    assert path in run("image", "list").output
    assert run("image", "verify").exit_code == 0
    bad = run("image", "add", "missing-file")
    assert bad.exit_code == 2 and "not a readable regular file" in bad.output
    bad = run("image", "add", "vmlinuz-6.1", "--name", "../evil")
    assert bad.exit_code == 2 and "slash" in bad.output and "Traceback" not in bad.output
    assert run("image", "remove", digest[:8]).exit_code == 0
    assert run("image", "remove", path).exit_code == 2
