"""The chunked disk-image format: records verify, reassemble in any order, skip zeros."""

from __future__ import annotations

import contextlib
import hashlib
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.reload.image import (
    ImageFormatError,
    Manifest,
    ManifestBuilder,
    assemble,
    decode_record,
    make_record,
    open_record,
    pieces,
)
from fleetboot.reload.store import DiskImageStore

CS = 4096  # small chunks keep the generated disks small


def _build(disk: bytes, chunk_size: int = CS) -> tuple[Manifest, list[bytes]]:
    builder = ManifestBuilder("d", len(disk), chunk_size)
    payloads = []
    for off, length in pieces(len(disk), chunk_size):
        p = builder.add(off, disk[off:off + length])
        if p is not None:
            payloads.append(p)
    records = [rec for _, rec in builder.records(payloads)]
    return builder.manifest(hashlib.sha256(disk).hexdigest(), []), records


disks = st.lists(st.sampled_from([b"\0" * CS, b"A" * CS, b"B" * 100 + b"\0" * (CS - 100),
                                  b"\0" * (CS - 1) + b"z"]), max_size=12).flatmap(
    lambda blocks: st.binary(max_size=CS - 1).map(lambda tail: b"".join(blocks) + tail))


@given(disks, st.randoms())
@settings(max_examples=80, deadline=None)
def test_records_in_any_order_rebuild_the_disk(disk: bytes, rnd: random.Random) -> None:
    _, records = _build(disk)
    rnd.shuffle(records)
    assert assemble(len(disk), records) == disk


@given(disks)
@settings(max_examples=50, deadline=None)
def test_zero_pieces_are_not_stored_and_duplicates_once(disk: bytes) -> None:
    _, records = _build(disk)
    raws = [open_record(r)[1] for r in records]
    assert all(r.count(0) != len(r) for r in raws)
    assert len({hashlib.sha256(r).digest() for r in raws}) == len(raws)


@given(st.binary(min_size=1, max_size=3000), st.integers(0, 10**12))
def test_record_roundtrip(raw: bytes, offset: int) -> None:
    header, record = make_record(7, [offset], raw)
    got, data = open_record(record)
    assert got == header and data == raw


@given(st.binary(max_size=200))
def test_garbage_never_crashes_the_decoder(data: bytes) -> None:
    with contextlib.suppress(ImageFormatError):
        open_record(data)


@given(st.integers(0, 10**6), st.data())
def test_a_flipped_byte_is_detected(seed: int, data: st.DataObject) -> None:
    raw = random.Random(seed).randbytes(500)
    _, record = make_record(0, [0], raw)
    pos = data.draw(st.integers(0, len(record) - 1))
    bad = bytearray(record)
    bad[pos] ^= 0xFF
    with pytest.raises(ImageFormatError):
        open_record(bytes(bad))


@given(st.integers(1, 50_000), st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 9000))))
def test_pieces_cover_every_extent_once(size: int, extents: list[tuple[int, int]]) -> None:
    got = list(pieces(size, 1000, extents))
    starts = [o for o, _ in got]
    assert starts == sorted(set(starts))
    for start, length in extents:
        for b in range(start, min(start + length, size)):
            assert any(o <= b < o + n for o, n in got)


def test_manifest_json_roundtrip_and_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match="add-disk"):
        Manifest.from_json('{"format": "other"}')
    disk = tmp_path / "d.raw"
    _write_disk(disk)
    stored, created = DiskImageStore(tmp_path / "root").add(disk)
    assert created
    assert Manifest.from_json(stored.manifest.to_json()) == stored.manifest


def _write_disk(path: Path) -> bytes:
    """8 MiB: 1 MiB random, 1 MiB text, a duplicate of the text, zeros and a hole."""
    rnd = random.Random(1)
    text = b"".join(b"line %d of a config file\n" % i for i in range(50_000))[: 1 << 20]
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        f.write(rnd.randbytes(1 << 20))
        f.write(text)
        f.seek(5 << 20)
        f.write(text)
        f.write(bytes(1 << 20))  # written zeros: data to the file system, skipped by us
    return path.read_bytes()


def test_store_imports_raw_and_qcow2_to_the_same_image(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    content = _write_disk(disk)
    store = DiskImageStore(tmp_path / "root")
    raw, _ = store.add(disk, name="d")
    m = raw.manifest
    assert m.virtual_size == 8 << 20
    assert m.disk_sha256 == hashlib.sha256(content).hexdigest()
    assert len(m.chunks) == 2  # random + text; the second text copy is deduplicated
    assert sorted(o for c in m.chunks for o in c.header.offsets) == [0, 1 << 20, 5 << 20]
    assert assemble(m.virtual_size, raw.all_records()) == content
    qcow = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(qcow)], check=True)
    again, created = store.add(qcow, name="d")
    assert not created and again.manifest.image_id == m.image_id
    assert store.get(m.image_id[:6]).manifest == m


def test_decode_rejects_truncated_record() -> None:
    _, record = make_record(0, [0], b"x" * 100)
    with pytest.raises(ImageFormatError):
        decode_record(record[:-1])


def test_cli_add_disk_list_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from fleetboot.cli import images as images_cli

    monkeypatch.setenv("FLEETBOOT_DB", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleetboot.yaml").write_text("boot_root: bootroot\n")
    root = typer.Typer()
    root.add_typer(images_cli.app, name="image")
    root.callback()(lambda: None)
    runner = CliRunner()
    _write_disk(tmp_path / "d.raw")
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", "d.raw", "d.qcow2"], check=True,
                   cwd=tmp_path)
    out = runner.invoke(root, ["image", "add-disk", "d.qcow2", "--name", "web"])
    assert out.exit_code == 0, out.output
    assert "8.0 MiB virtual" in out.output and "2 chunks" in out.output
    listing = runner.invoke(root, ["image", "list"]).output
    assert "web" in listing and "8.0 MiB" in listing
    show = runner.invoke(root, ["image", "show", "web"])
    assert show.exit_code == 0 and "qcow2" in show.output and "disk sha256" in show.output
    bad = runner.invoke(root, ["image", "add-disk", "missing.raw"])
    assert bad.exit_code == 2 and "not a readable" in bad.output
    bad = runner.invoke(root, ["image", "show", "nope"])
    assert bad.exit_code == 2 and "no disk image" in bad.output


def test_text_index_points_at_each_zstd_frame(tmp_path: Path) -> None:
    import zstandard

    disk = tmp_path / "d.raw"
    content = _write_disk(disk)
    stored, _ = DiskImageStore(tmp_path / "root").add(disk)
    lines = (stored.directory / "index.txt").read_text().splitlines()
    fmt, size, sha, n, cs = lines[0].split()
    assert (fmt, int(size), sha, int(n), int(cs)) == (
        "fleetboot-disk/1", len(content), hashlib.sha256(content).hexdigest(), 2, 1 << 20)
    blob = stored.records_path.read_bytes()
    for line in lines[1:]:
        poff, plen, csha, length, offsets = line.split()
        raw = zstandard.ZstdDecompressor().decompress(blob[int(poff):int(poff) + int(plen)])
        assert hashlib.sha256(raw).hexdigest() == csha and len(raw) == int(length)
        for off in offsets.split(","):
            assert content[int(off):int(off) + len(raw)] == raw
