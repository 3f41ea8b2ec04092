"""``fleetboot image ...``: the content-addressed image store under the boot root."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fleetboot.boot.images import (
    ImageError,
    ImageStore,
    image_role,
    referenced_by,
    remove_image,
)
from fleetboot.cli.common import console, friendly_errors, state, table
from fleetboot.reload.store import DiskImageStore

app = typer.Typer(help="Kernels, initrds and images: stored by content, never replaced.",
                  no_args_is_help=True)


def _store(ctx: typer.Context) -> ImageStore:
    return ImageStore(state(ctx).settings.boot_root)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command("add")
@friendly_errors
def image_add(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="the kernel, initrd or image to store"),
    name: str | None = typer.Option(None, "--name", help="file name in the store "
                                    "(default: FILE's name)"),
) -> None:
    """Copy FILE into the store; prints the path to give `fleetboot profile add`."""
    image, created = _store(ctx).add(file, name)
    verb = "stored" if created else "already stored"
    console.print(f"{verb} [bold]{image.path}[/] ({_size(image.size)})")
    console.print(_usage(file, image.name, image.path), style="dim", soft_wrap=True)


def _usage(file: Path, name: str, path: str) -> str:
    """How to use the stored file, from what it is (kernel, initrd or something else)."""
    with file.open("rb") as f:
        role = image_role(f.read(4096), name)
    if role == "kernel":
        return f"use it with: fleetboot profile add NAME --kernel {path} [--initrd ...]"
    if role == "initrd":
        return f"use it with: fleetboot profile add NAME --kernel ... --initrd {path}"
    return (f"use it as --kernel or --initrd of `fleetboot profile add`, or fetch it from "
            f"/boot/files/{path}")


@app.command("list")
@friendly_errors
def image_list(ctx: typer.Context) -> None:
    """List stored images and the profiles using them."""
    store = _store(ctx)
    tab = table("path", "size", "added", "used by")
    with state(ctx).db.session() as s:
        for image in store.list():
            added = time.strftime("%Y-%m-%d %H:%M", time.localtime(image.mtime))
            tab.add_row(image.path, _size(image.size), added,
                        ", ".join(referenced_by(s, image)) or "-")
    console.print(tab)
    disks = DiskImageStore(state(ctx).settings.boot_root).list()
    if disks:
        dtab = table("disk image", "name", "virtual", "stored", "ratio", "chunks")
        for d in disks:
            m = d.manifest
            dtab.add_row(m.image_id, m.name, _size(m.virtual_size), _size(m.stored_size),
                         f"{m.ratio:.1f}x", str(len(m.chunks)))
        console.print(dtab)


@app.command("add-disk")
@friendly_errors
def image_add_disk(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="a raw or qcow2 disk image (any format "
                                "qemu-img reads)"),
    name: str | None = typer.Option(None, "--name", help="a name for the image "
                                    "(default: FILE's name)"),
) -> None:
    """Import a disk image as compressed, self-describing chunks for `fleetboot deploy`."""
    disk, created = DiskImageStore(state(ctx).settings.boot_root).add(file, name)
    m = disk.manifest
    verb = "stored" if created else "already stored"
    console.print(f"{verb} disk image [bold]{m.image_id}[/] ({m.name}): "
                  f"{_size(m.virtual_size)} virtual, {_size(m.stored_size)} stored "
                  f"({m.ratio:.1f}x), {len(m.chunks)} chunks")


@app.command("show")
@friendly_errors
def image_show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="a disk image id, id prefix or name"),
) -> None:
    """Sizes, checksum and chunks of one disk image."""
    disk = DiskImageStore(state(ctx).settings.boot_root).get(ref)
    m = disk.manifest
    tab = table("field", "value")
    for key, value in (("id", m.image_id), ("name", m.name), ("source format", m.source_format),
                       ("virtual size", f"{_size(m.virtual_size)} ({m.virtual_size} B)"),
                       ("data written", _size(m.data_size)),
                       ("stored", f"{_size(m.stored_size)} ({m.stored_size} B)"),
                       ("ratio", f"{m.ratio:.2f}x"), ("chunks", str(len(m.chunks))),
                       ("chunk size", _size(m.chunk_size)), ("disk sha256", m.disk_sha256),
                       ("path", str(disk.directory))):
        tab.add_row(key, value)
    console.print(tab)


@app.command("remove")
@friendly_errors
def image_remove(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="images/<digest>/<name>, a digest prefix or a name"),
) -> None:
    """Remove an image no profile refers to."""
    with state(ctx).db.session() as s:
        image = remove_image(_store(ctx), s, ref)
    console.print(f"removed [bold]{image.path}[/]")


@app.command("verify")
@friendly_errors
def image_verify(ctx: typer.Context) -> None:
    """Re-hash every image and report any whose content no longer matches its path."""
    store = _store(ctx)
    bad = [i.path for i in store.list() if not store.verify(i)]
    if bad:
        raise ImageError("content does not match the digest of: " + ", ".join(bad))
    console.print("all images match their digests")
