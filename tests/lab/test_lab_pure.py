"""The pure parts of the lab: cpio writer, module order, markers, kernel and QEMU command lines."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.lab import guest, qemu
from fleetboot.lab.guest import CpioEntry, GuestError

# --- cpio -----------------------------------------------------------------

_part = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12).filter(
    lambda p: p not in (".", ".."))
_paths = st.lists(_part, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
_entry = st.one_of(
    st.builds(CpioEntry, _paths, st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFREG | 0o755]),
              st.binary(max_size=300)),
    st.builds(CpioEntry, _paths, st.just(stat.S_IFDIR | 0o755)),
    st.builds(CpioEntry, _paths, st.just(stat.S_IFLNK | 0o777), _paths.map(str.encode)),
    st.builds(CpioEntry, _paths, st.just(stat.S_IFCHR | 0o600), st.just(b""),
              st.tuples(st.integers(0, 255), st.integers(0, 255))),
)


@given(st.lists(_entry, max_size=12))
def test_cpio_round_trip_and_alignment(entries: list[CpioEntry]) -> None:
    raw = guest.cpio_newc(entries)
    assert len(raw) % 4 == 0
    assert guest.parse_cpio_newc(raw) == entries
    assert guest.cpio_newc(entries) == raw  # deterministic: images are cached by hash


@given(st.lists(_entry, max_size=12))
def test_parent_dirs_come_first_and_once(entries: list[CpioEntry]) -> None:
    out = guest.with_parent_dirs(entries)
    paths = [e.path for e in out]
    assert len(paths) == len(set(paths))
    for i, path in enumerate(paths):
        parent = path.rsplit("/", 1)[0]
        assert parent == "" or parent in paths[:i]


def test_the_real_cpio_tool_reads_the_image(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    entries = guest.initramfs_entries(
        busybox=b"\x7fELF fake", applets=["bin/sh", "sbin/udhcpc"],
        modules=[("virtio", b"mod-a"), ("virtio_net", b"mod-b")],
        extra_files=[guest.ExtraFile("/usr/bin/client", b"#!/bin/sh\necho hi\n")],
        hook="/usr/bin/client")
    archive = tmp_path / "image.cpio"
    archive.write_bytes(guest.cpio_newc(entries))
    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=archive.open("rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    for name in ("init", "bin/busybox", "bin/sh", "dev/console", "lib/modules/virtio_net.ko",
                 "etc/fleetboot/udhcpc.sh", "usr/bin/client", "etc/fleetboot/hook"):
        assert name in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=out,
                   stdin=archive.open("rb"), check=True, capture_output=True)
    assert (out / "etc/fleetboot/modules").read_text() == "virtio\nvirtio_net\n"
    assert (out / "etc/fleetboot/hook").read_text() == "/usr/bin/client\n"
    assert os.readlink(out / "bin/sh") == "/bin/busybox"
    assert (out / "usr/bin/client").stat().st_mode & 0o111
    assert (out / "init").read_bytes().startswith(b"#!/bin/sh")


def _entries(*extra: guest.ExtraFile) -> list[CpioEntry]:
    return guest.initramfs_entries(busybox=b"", applets=["bin/sh"], modules=[],
                                   extra_files=extra)


def test_extra_files_are_checked() -> None:
    with pytest.raises(GuestError, match="clashes"):
        _entries(guest.ExtraFile("/init", b""))
    for bad in ("relative/path", "/a/../b", "/a//b", "/", "/nul\0"):
        with pytest.raises(GuestError):
            _entries(guest.ExtraFile(bad, b""))
    # An extra file wins over a busybox applet of the same name.
    out = _entries(guest.ExtraFile("/bin/sh", b"mine"))
    assert [e.data for e in out if e.path == "/bin/sh"] == [b"mine"]


def test_cpio_parser_rejects_garbage() -> None:
    with pytest.raises(GuestError, match="not a newc"):
        guest.parse_cpio_newc(b"hello world")


# --- modules --------------------------------------------------------------


@st.composite
def _module_graphs(draw: st.DrawFn) -> tuple[dict[str, tuple[str, ...]], list[str], set[str]]:
    names = [f"m{i}" for i in range(draw(st.integers(1, 12)))]
    depends = {n: tuple(draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)))
               if i else () for i, n in enumerate(names)}
    builtin = set(draw(st.lists(st.sampled_from(names), unique=True, max_size=3)))
    wanted = draw(st.lists(st.sampled_from([*names, "absent"]), unique=True, max_size=6))
    return depends, wanted, builtin


@given(_module_graphs())
def test_module_order_loads_dependencies_first(
    graph: tuple[dict[str, tuple[str, ...]], list[str], set[str]]
) -> None:
    depends, wanted, builtin = graph
    order = guest.module_load_order(wanted, depends, builtin)
    assert len(order) == len(set(order))
    assert not set(order) & builtin and "absent" not in order
    for i, name in enumerate(order):
        assert all(d in order[:i] or d in builtin for d in depends[name])
    assert {w for w in wanted if w in depends and w not in builtin} <= set(order)


def test_module_order_errors() -> None:
    with pytest.raises(GuestError, match="circular"):
        guest.module_load_order(["a"], {"a": ("b",), "b": ("a",)})
    with pytest.raises(GuestError, match="lacks"):
        guest.module_load_order(["a"], {"a": ("ghost",)})


def test_module_names_and_flavours() -> None:
    assert guest.module_name("virtio-rng.ko.xz") == "virtio_rng"
    assert guest.module_name("8139cp.ko") == "8139cp"
    with pytest.raises(GuestError):
        guest.module_name("README")
    assert guest.flavor_for_nics(["virtio-net-pci"]) == "cloud"
    assert guest.flavor_for_nics(["virtio-net-pci", "e1000"]) == "generic"


def test_static_busybox_check() -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    assert guest._elf_interpreter(Path(busybox).read_bytes()) is False
    assert guest._elf_interpreter(Path(sys.executable).resolve().read_bytes()) is True
    with pytest.raises(GuestError):
        guest._elf_interpreter(b"#!/bin/sh\n")


# --- markers and the kernel command line ----------------------------------

_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789.:_-/", min_size=1, max_size=20)


@given(st.sampled_from(["INIT", "LEASE", "HOOK", "ERROR"]), _word.filter(lambda w: "=" not in w),
       st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                       st.text("abc0123456789.:", max_size=12), max_size=5),
       st.sampled_from(["", "[    2.403] ", "\x1b[0m"]))
def test_markers_parse_back(kind: str, event: str, fields: dict[str, str], noise: str) -> None:
    line = f"{noise}FLEETBOOT-{kind} {event} " + " ".join(f"{k}={v}" for k, v in fields.items())
    marker = guest.parse_marker(line + "\r")
    assert marker == guest.Marker(kind, event, fields)


def test_lease_from_a_real_console_line() -> None:
    text = ("udhcpc: lease of 10.77.0.91 obtained\r\n"
            "FLEETBOOT-LEASE bound ip=10.77.0.91 mask=24 mac=52:54:00:00:00:07 iface=eth0 "
            "router=10.77.0.1 server=10.77.0.1 hostname= uptime=2.24\r\n")
    [marker] = guest.parse_markers(text)
    lease = guest.Lease.from_marker(marker)
    assert (lease.ip, lease.mac, lease.iface, lease.hostname, lease.uptime) == (
        "10.77.0.91", "52:54:00:00:00:07", "eth0", "", 2.24)
    assert guest.parse_marker("no marker here") is None


def test_kernel_cmdline() -> None:
    line = guest.kernel_cmdline(mac="52-54-00-AA-BB-CC", hook="http://10.0.0.1/h.sh",
                                end="reboot", extra={"token": "abc"})
    assert line.split() == ["console=ttyS0", "panic=-1", "quiet", "fleetboot.token=abc",
                            "fleetboot.mac=52:54:00:aa:bb:cc", "fleetboot.hook=http://10.0.0.1/h.sh",
                            "fleetboot.end=reboot"]
    for bad in ({"token": "a b"}, {"token": ""}, {"bad key": "x"}, {"q": "it's"}):
        with pytest.raises(GuestError):
            guest.kernel_cmdline(extra=bad)
    with pytest.raises(ValueError):
        guest.kernel_cmdline(mac="not-a-mac")


# --- QEMU command lines ---------------------------------------------------


def _files(tmp: Path = Path("/w")) -> qemu.VmFiles:
    return qemu.VmFiles.inside(tmp, "vm")


def test_bios_ipxe_argv() -> None:
    spec = qemu.VmSpec("vm", nics=(qemu.NicSpec("52:54:00:00:00:01", bootindex=1),
                                   qemu.NicSpec("52:54:00:00:00:02", model="e1000")))
    argv = qemu.qemu_argv(spec, ["tap0", "tap1"], _files())
    text = " ".join(argv)
    assert "q35,accel=tcg" in text and "kvm" not in text
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,bootindex=1" in text
    assert "e1000,netdev=n1,mac=52:54:00:00:00:02 " in text + " "
    assert "tap,id=n1,ifname=tap1,script=no,downscript=no" in text
    assert argv[argv.index("-boot"):argv.index("-boot") + 2] == ["-boot", "strict=on"]
    assert "name=etc/sercon-port,file=/w/vm.sercon" in text and "pflash" not in text
    assert argv[argv.index("-m") + 1] == "256"


def test_uefi_native_pxe_and_direct_argv() -> None:
    spec = qemu.VmSpec("vm", firmware="uefi", qmp=True, no_reboot=True,
                       nics=(qemu.NicSpec("52:54:00:00:00:01", bootindex=1, rom=""),),
                       direct=qemu.DirectBoot(Path("/k"), Path("/i"), "console=ttyS0 x=1"))
    argv = qemu.qemu_argv(spec, ["tap0"], _files())
    text = " ".join(argv)
    assert f"readonly=on,file={qemu.OVMF_CODE}" in text and "file=/w/vm.vars.fd" in text
    assert "mac=52:54:00:00:00:01,romfile=,bootindex=1" in text
    assert argv[argv.index("-append") + 1] == "console=ttyS0 x=1"
    assert "-no-reboot" in argv and "unix:/w/vm.qmp,server=on,wait=off" in text
    assert argv[argv.index("-m") + 1] == "512" and "sercon" not in text


def test_vm_spec_validation() -> None:
    with pytest.raises(qemu.VmError, match="share a MAC"):
        qemu.VmSpec("vm", nics=(qemu.NicSpec("52:54:00:00:00:01"),
                                qemu.NicSpec("52-54-00-00-00-01")))
    for bad_name in ("", "a b", "x" * 41, "../x"):
        with pytest.raises(qemu.VmError):
            qemu.VmSpec(bad_name)
    with pytest.raises(qemu.VmError):
        qemu.NicSpec("52:54:00:00:00:01", model="virtio,foo=1")
    with pytest.raises(qemu.VmError, match="taps"):
        qemu.qemu_argv(qemu.VmSpec("vm", nics=(qemu.NicSpec("52:54:00:00:00:01"),)), [],
                       _files())
    with pytest.raises(qemu.VmError, match="comma"):
        qemu.qemu_argv(qemu.VmSpec("vm"), [], _files(Path("/a,b")))


@given(st.lists(st.integers(0, (1 << 24) - 1), unique=True, max_size=50))
def test_lab_macs_are_unique_and_valid(indexes: list[int]) -> None:
    macs = [qemu.lab_mac(i) for i in indexes]
    assert len(set(macs)) == len(macs)
    assert all(qemu.NicSpec(m).mac == m for m in macs)


def test_router_advertisement_announces_nothing() -> None:
    ra = qemu.router_advertisement()
    assert ra[0] == 134 and len(ra) == 16
    assert ra[5] == 0 and ra[6:8] == b"\0\0"  # no DHCPv6 flags, not a default router


# --- waiting on the serial log (a stand-in process instead of QEMU) -------


def _fake_vm(tmp_path: Path, seconds: str) -> qemu.Vm:
    files = qemu.VmFiles.inside(tmp_path, "fake")
    return qemu.Vm(qemu.VmSpec("fake"), subprocess.Popen(["sleep", seconds]), files, ())


def test_wait_for_finds_timeouts_and_sees_exit(tmp_path: Path) -> None:
    with _fake_vm(tmp_path, "30") as vm:
        vm.files.serial_log.write_text("boot\nFLEETBOOT-LEASE bound ip=10.0.0.5 mac=m\n")
        lease, found = vm.wait_lease(timeout=5)
        assert lease.ip == "10.0.0.5" and found.line.startswith("FLEETBOOT-LEASE")
        with pytest.raises(qemu.VmError, match="within 0 s"):
            vm.wait_for("never", timeout=0.2, after=found.end)
        marker, _m = asyncio.run(vm.wait_marker_async("LEASE", "bound", timeout=5))
        assert marker.get("mac") == "m"
    assert not vm.running
    with _fake_vm(tmp_path, "0") as vm:
        vm.process.wait()
        with pytest.raises(qemu.VmError, match="exited"):
            vm.wait_for("never", timeout=5)


def test_a_cache_missing_a_dependency_file_is_not_used(tmp_path: Path) -> None:
    """modinfo names dependencies with dashes (libcurve25519-generic): they are mapped to
    module names, and a cache that lacks one of their files is fetched again."""
    import json

    root = tmp_path / "linux-image-x"
    (root / "modules").mkdir(parents=True)
    manifest = {"release": "6.1", "requested": ["wireguard", "virtio_net"], "builtin": [],
                "depends": {"wireguard": ["libcurve25519-generic"],
                            "libcurve25519-generic": [], "virtio_net": []}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "cloud.json").write_text(json.dumps({"package": "linux-image-x"}))
    for name in ("wireguard", "virtio_net"):
        (root / "modules" / f"{name}.ko").write_bytes(b"\0")
    assert guest._cached(tmp_path, "cloud", ["virtio_net"]) is not None
    assert guest._cached(tmp_path, "cloud", ["wireguard"]) is None  # the library is missing
    (root / "modules" / "libcurve25519_generic.ko").write_bytes(b"\0")
    kernel = guest._cached(tmp_path, "cloud", ["wireguard"])
    assert kernel is not None
    assert kernel.load_order(["wireguard"]) == ["libcurve25519_generic", "wireguard"]
