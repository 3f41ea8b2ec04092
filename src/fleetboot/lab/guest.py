"""Guest Linux for lab VMs: a Debian kernel and a busybox initramfs that gets a DHCP lease.

The kernel comes from Debian's own package (``apt-get download`` + ``dpkg -x``,
no other network access) into a cache shared by all test workers; the
initramfs is written by a pure-Python cpio (newc) writer. Its ``/init``
(``guest_init.sh``) reports every step on the serial console as
``FLEETBOOT-<KIND> <event> key=value ...`` lines, which ``parse_markers`` reads.

Typical use::

    kernel = fetch_guest_kernel()                       # cached after the first call
    initrd = build_initramfs(kernel, extra_files=[ExtraFile("/bin/client", script)],
                             hook="/bin/client")
    append = kernel_cmdline(mac="52:54:00:00:00:01")

Two kernel flavours: ``cloud`` (small; virtio NICs only) and ``generic``
(Debian's ``amd64`` kernel, which also has e1000, e1000e and rtl8139 drivers).
``flavor_for_nics`` picks the one a set of QEMU NIC models needs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import gzip
import hashlib
import importlib.resources
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fleetboot.errors import FleetbootError
from fleetboot.inventory.addr import normalize_mac

Flavor = Literal["cloud", "generic"]

DEFAULT_CACHE = "/var/cache/fleetboot/guest"
META_PACKAGES: dict[str, str] = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}

# Drivers for every NIC model the lab uses, plus af_packet (udhcpc needs raw
# sockets; it is built in on Debian, and skipped then). virtio_net does not
# depend on its PCI transport, so virtio_pci is named too. 8139cp must claim
# QEMU's RTL8139C+ before 8139too (which declines C+ chips anyway).
NIC_MODULES: tuple[str, ...] = (
    "af_packet", "virtio_pci", "virtio_net", "e1000", "e1000e", "8139cp", "8139too",
)

# QEMU -device model -> Linux driver module.
NIC_DRIVERS: dict[str, str] = {
    "virtio-net-pci": "virtio_net",
    "virtio-net": "virtio_net",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "8139cp",
}

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class GuestError(FleetbootError):
    """The guest kernel or initramfs could not be prepared."""


# ----------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------


def module_name(filename: str) -> str:
    """``virtio-rng.ko.xz`` -> ``virtio_rng`` (the kernel treats - and _ alike)."""
    for suffix in _MODULE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].replace("-", "_")
    raise GuestError(f"{filename!r} is not a kernel module file")


def module_load_order(
    wanted: Sequence[str], depends: Mapping[str, Sequence[str]], builtin: Iterable[str] = ()
) -> list[str]:
    """The modules to insmod for ``wanted``: dependencies first, each once.

    ``depends`` maps every available module to what it needs (``modinfo -F
    depends``); built-in modules need no loading. Wanted modules that are
    neither available nor built in are skipped (a flavour may lack a driver);
    a missing or circular *dependency* is an error.
    """
    inside = frozenset(builtin)
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done or name in inside:
            return
        if name in path:
            raise GuestError(f"circular module dependency: {' -> '.join((*path, name))}")
        if name not in depends:
            raise GuestError(f"module {path[-1]} needs {name}, which the kernel package lacks")
        for dep in depends[name]:
            visit(dep, (*path, name))
        done.add(name)
        order.append(name)

    for name in wanted:
        if name in depends:
            visit(name, ())
    return order


def flavor_for_nics(models: Iterable[str]) -> Flavor:
    """The smallest kernel flavour with drivers for all these QEMU NIC models."""
    return "cloud" if all(m.startswith("virtio") for m in models) else "generic"


def kernel_cmdline(
    *,
    mac: str | None = None,
    hook: str | None = None,
    end: Literal["poweroff", "reboot", "shell"] | None = None,
    extra: Mapping[str, str] | None = None,
    quiet: bool = True,
) -> str:
    """A kernel command line for the lab initramfs.

    ``mac`` selects the NIC to configure (else the first one); ``hook`` is a
    URL or an absolute path of a script run after the lease; ``extra`` adds
    ``fleetboot.KEY=VALUE`` arguments, which the hook sees as ``FLEETBOOT_KEY``.
    ``panic=-1`` makes a broken init end the VM at once instead of hanging.
    """
    args = ["console=ttyS0", "panic=-1"]
    if quiet:
        args.append("quiet")
    options: dict[str, str] = dict(extra or {})
    if mac is not None:
        options["mac"] = normalize_mac(mac)
    if hook is not None:
        options["hook"] = hook
    if end is not None:
        options["end"] = end
    for key, value in options.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise GuestError(f"kernel argument name fleetboot.{key!r}: use letters, digits, _ . -")
        if not value or re.search(r"[\s\"']", value):
            raise GuestError(f"kernel argument fleetboot.{key}={value!r}: must be non-empty "
                             "without spaces or quotes")
        args.append(f"fleetboot.{key}={value}")
    return " ".join(args)


# --- console markers ------------------------------------------------------

_MARKER = re.compile(r"FLEETBOOT-([A-Z]+)((?:[ \t]+[^\s]+)*)")


@dataclass(frozen=True)
class Marker:
    """One ``FLEETBOOT-<KIND> [event] key=value ...`` line of the guest console."""

    kind: str
    event: str
    fields: Mapping[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)


@dataclass(frozen=True)
class Lease:
    """What the guest's udhcpc reported (``FLEETBOOT-LEASE``)."""

    ip: str
    mac: str
    iface: str
    mask: str
    router: str
    server: str
    hostname: str
    uptime: float

    @classmethod
    def from_marker(cls, marker: Marker) -> Lease:
        if marker.kind != "LEASE":
            raise GuestError(f"not a lease marker: {marker}")
        return cls(
            ip=marker.get("ip"), mac=marker.get("mac"), iface=marker.get("iface"),
            mask=marker.get("mask"), router=marker.get("router"), server=marker.get("server"),
            hostname=marker.get("hostname"), uptime=float(marker.get("uptime", "0") or 0),
        )


def parse_marker(line: str) -> Marker | None:
    """The marker in one console line, or None (kernel messages, garbage)."""
    found = _MARKER.search(line)
    if found is None:
        return None
    event, fields = "", {}
    for i, word in enumerate(found.group(2).split()):
        key, sep, value = word.partition("=")
        if sep:
            fields[key] = value
        elif i == 0:
            event = word
    return Marker(found.group(1), event, fields)


def parse_markers(text: str) -> list[Marker]:
    """Every marker in a serial log, in order."""
    return [m for line in text.splitlines() if (m := parse_marker(line)) is not None]


# --- cpio (newc) ----------------------------------------------------------


@dataclass(frozen=True)
class CpioEntry:
    """One initramfs member. ``data`` is the file body, or the target of a symlink."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


_TRAILER = CpioEntry("TRAILER!!!", 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _cpio_header(ino: int, entry: CpioEntry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev,
              len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """An uncompressed ``newc`` cpio archive (what the kernel unpacks as initramfs).

    Owner root, mtime 0: identical input gives identical bytes, so images can
    be cached by content hash.
    """
    out = bytearray()
    members = [*entries, _TRAILER]
    for ino, entry in enumerate(members, start=1):
        name = entry.path.lstrip("/").encode() or b"."
        header = _cpio_header(0 if entry is _TRAILER else ino, entry, name)
        out += header + name + b"\0" + _pad4(len(header) + len(name) + 1)
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def parse_cpio_newc(raw: bytes) -> list[CpioEntry]:
    """The entries of a ``newc`` archive (without the trailer); the inverse of cpio_newc."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if raw[pos : pos + 6] != b"070701":
            raise GuestError(f"not a newc cpio archive at byte {pos}")
        f = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        name_at = pos + 110
        name = raw[name_at : name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append(CpioEntry("/" + name, mode, raw[data_at : data_at + size], rdev))
        pos = data_at + size + (-size % 4)


def with_parent_dirs(entries: Iterable[CpioEntry]) -> list[CpioEntry]:
    """Entries preceded by every missing parent directory (the kernel creates none)."""
    out: list[CpioEntry] = []
    seen: set[str] = set()
    for entry in entries:
        parts = entry.path.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            if parent not in seen:
                seen.add(parent)
                out.append(CpioEntry(parent, stat.S_IFDIR | 0o755))
        if entry.path not in seen:
            seen.add(entry.path)
            out.append(entry)
    return out


def check_inside_path(path: str) -> str:
    """Validate a path inside the initramfs: absolute, no ``..``, no empty parts."""
    parts = path.split("/")
    if not path.startswith("/") or path == "/" or any(p in ("", ".", "..") for p in parts[1:]):
        raise GuestError(f"initramfs path {path!r}: give an absolute path like /usr/bin/tool "
                         "without '..' or '//'")
    if "\0" in path or len(path) > 255:
        raise GuestError(f"initramfs path {path!r}: no NUL bytes, at most 255 characters")
    return path


# ----------------------------------------------------------------------------
# The kernel cache (I/O)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestKernel:
    """A Debian kernel unpacked in the cache, with the modules the lab needs."""

    flavor: str
    package: str
    release: str
    root: Path
    modules: Mapping[str, Path]
    depends: Mapping[str, tuple[str, ...]]
    builtin: frozenset[str] = field(default_factory=frozenset)

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    def has_driver(self, name: str) -> bool:
        return name in self.modules or name in self.builtin

    def supports_nic(self, model: str) -> bool:
        return self.has_driver(NIC_DRIVERS.get(model, model))

    def load_order(self, wanted: Sequence[str] = NIC_MODULES) -> list[str]:
        return module_load_order(wanted, self.depends, self.builtin)


def cache_dir() -> Path:
    return Path(os.environ.get("FLEETBOOT_GUEST_CACHE", DEFAULT_CACHE))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock shared by every process using this cache."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / ".lock", "a+")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise GuestError(f"cannot use the guest cache {directory}: {exc}; set "
                         "FLEETBOOT_GUEST_CACHE to a writable directory") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GuestError(f"{argv[0]} is missing: run scripts/install-system-deps.sh") from None
    if done.returncode != 0:
        raise GuestError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def _kernel_package(flavor: str) -> str:
    """The versioned package the flavour's meta-package currently points to."""
    if flavor not in META_PACKAGES:
        raise GuestError(f"unknown kernel flavour {flavor!r}; use one of {sorted(META_PACKAGES)}")
    pinned = os.environ.get(f"FLEETBOOT_GUEST_KERNEL_{flavor.upper()}")
    if pinned:
        return pinned
    out = _run(["apt-cache", "depends", META_PACKAGES[flavor]])
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and dep.startswith("linux-image-"):
            return dep
    raise GuestError(f"apt knows no {META_PACKAGES[flavor]}: run apt-get update")


def _download(package: str, into: Path) -> Path:
    """``apt-get download`` (retried once after ``apt-get update``: mirrors drop old kernels)."""
    argv = ["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", package]
    try:
        _run(argv, cwd=into)
    except GuestError:
        _run(["apt-get", "update", "-qq"])
        _run(argv, cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise GuestError(f"apt-get download {package} produced no .deb in {into}")
    return debs[-1]


def _read_module(path: Path) -> bytes:
    """The module body; compressed modules are unpacked since busybox insmod cannot."""
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return raw


def _index_modules(tree: Path) -> dict[str, Path]:
    return {module_name(p.name): p for suffix in _MODULE_SUFFIXES
            for p in tree.rglob(f"*{suffix}")}


def _builtin(tree: Path) -> frozenset[str]:
    listing = tree / "modules.builtin"
    if not listing.exists():
        return frozenset()
    return frozenset(module_name(Path(line).name) for line in listing.read_text().split())


def _put(path: Path, body: Callable[[], bytes]) -> None:
    """Write a cache file once, atomically: a VM or server may be reading it."""
    if not path.exists():
        _atomic_write(path, body())


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one; a unique temporary name keeps
    concurrent writers (processes or threads) apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unpack(deb: Path, dest: Path, wanted: Sequence[str]) -> dict[str, Any]:
    """dpkg -x the package; copy vmlinuz, config and the needed modules into dest."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".x-") as tmp:
        _run(["dpkg", "-x", str(deb), tmp])
        vmlinuz = sorted(Path(tmp, "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise GuestError(f"{deb.name} holds no /boot/vmlinuz-*")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        tree = Path(tmp, "lib/modules", release)
        index, builtin = _index_modules(tree), _builtin(tree)
        depends: dict[str, tuple[str, ...]] = {}
        todo = [m for m in wanted if m in index]
        while todo:
            name = todo.pop()
            if name in depends:
                continue
            deps = _run(["modinfo", "-F", "depends", str(index[name])]).strip()
            # modinfo names dependencies as their files are named (libcurve25519-generic)
            named = (d.replace("-", "_") for d in deps.split(",") if d)
            depends[name] = tuple(d for d in named if d not in builtin)
            todo.extend(d for d in depends[name] if d in index)
        _put(dest / "vmlinuz", vmlinuz[0].read_bytes)
        _put(dest / "config", Path(tmp, "boot", f"config-{release}").read_bytes)
        for name in depends:
            _put(dest / "modules" / f"{name}.ko", functools.partial(_read_module, index[name]))
    return {"release": release, "requested": sorted(wanted),
            "builtin": sorted(builtin.intersection(wanted)),
            "depends": {k: list(v) for k, v in depends.items()}}


def _load(flavor: str, package: str, root: Path, manifest: dict[str, Any]) -> GuestKernel:
    depends = {k.replace("-", "_"): tuple(d.replace("-", "_") for d in v)
               for k, v in manifest["depends"].items()}
    return GuestKernel(
        flavor=flavor, package=package, release=str(manifest["release"]), root=root,
        modules={name: root / "modules" / f"{name}.ko" for name in depends},
        depends=depends, builtin=frozenset(manifest["builtin"]),
    )


def _manifest(cache: Path, flavor: str) -> tuple[str, dict[str, Any]] | None:
    try:
        package = json.loads((cache / f"{flavor}.json").read_text())["package"]
        return package, json.loads((cache / package / "manifest.json").read_text())
    except (OSError, ValueError, KeyError):
        return None


def _cached(cache: Path, flavor: str, wanted: Sequence[str]) -> GuestKernel | None:
    found = _manifest(cache, flavor)
    if found is None or not set(wanted) <= set(found[1].get("requested", ())):
        return None
    kernel = _load(flavor, found[0], cache / found[0], found[1])
    # Every module wanted needs its dependencies' files: caches written before dashed
    # dependency names (libcurve25519-generic) were mapped lack some.
    try:
        order = kernel.load_order(wanted)
    except GuestError:
        return None
    return kernel if all(kernel.modules[name].exists() for name in order) else None


def _write_json(path: Path, value: object) -> None:
    _atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode())


def fetch_guest_kernel(
    flavor: Flavor = "cloud", *, cache: Path | None = None, modules: Sequence[str] = NIC_MODULES
) -> GuestKernel:
    """The flavour's kernel from the cache, downloading it the first time.

    Safe when several processes call it at once (a lock file); files already in
    the cache are never rewritten (a VM may be reading them), only added.
    """
    cache = cache or cache_dir()
    if (found := _cached(cache, flavor, modules)) is not None:
        return found
    with _locked(cache):
        if (found := _cached(cache, flavor, modules)) is not None:
            return found
        previous = _manifest(cache, flavor)
        wanted = sorted({*modules, *(previous[1].get("requested", ()) if previous else ())})
        package = _kernel_package(flavor)
        root = cache / package
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".dl-") as tmp:
            manifest = _unpack(_download(package, Path(tmp)), root, wanted)
        _write_json(root / "manifest.json", manifest)
        _write_json(cache / f"{flavor}.json", {"package": package})
        return _load(flavor, package, root, manifest)


# ----------------------------------------------------------------------------
# The initramfs (I/O around the pure cpio writer)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraFile:
    """A file baked into the initramfs, e.g. the node-side client script."""

    path: str
    data: bytes
    mode: int = 0o755

    @classmethod
    def from_file(cls, source: Path, path: str, mode: int | None = None) -> ExtraFile:
        st = source.stat()
        return cls(path, source.read_bytes(), stat.S_IMODE(st.st_mode) if mode is None else mode)


def _resource(name: str) -> bytes:
    return importlib.resources.files("fleetboot.lab").joinpath(name).read_bytes()


def _static_busybox() -> tuple[bytes, list[str]]:
    """The host's busybox binary and applet paths; it must be static (no libc in the image)."""
    path = shutil.which("busybox")
    if path is None:
        raise GuestError("busybox is not installed: run scripts/install-system-deps.sh "
                         "(package busybox-static)")
    binary = Path(path).read_bytes()
    if _elf_interpreter(binary):
        raise GuestError(f"{path} is dynamically linked; install busybox-static")
    applets = _run([path, "--list-full"]).split()
    return binary, [a for a in applets if "/" in a]


def _elf_interpreter(binary: bytes) -> bool:
    """True when an ELF64 binary has a PT_INTERP header, i.e. needs a dynamic loader."""
    if binary[:4] != b"\x7fELF" or binary[4] != 2:
        raise GuestError("busybox is not a 64-bit ELF binary")
    phoff, = struct.unpack_from("<Q", binary, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", binary, 0x36)
    return any(struct.unpack_from("<I", binary, phoff + i * phentsize)[0] == 3
               for i in range(phnum))


def initramfs_entries(
    *,
    busybox: bytes,
    applets: Sequence[str],
    modules: Sequence[tuple[str, bytes]],
    extra_files: Sequence[ExtraFile] = (),
    hook: str | None = None,
    end: str | None = None,
) -> list[CpioEntry]:
    """Everything in the image, parents first (pure: the caller reads the files)."""
    reg = stat.S_IFREG
    base = [
        CpioEntry("/dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("/dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        *(CpioEntry(f"/{d}", stat.S_IFDIR | 0o755) for d in ("proc", "sys", "run", "tmp", "etc")),
        CpioEntry("/bin/busybox", reg | 0o755, busybox),
        CpioEntry("/init", reg | 0o755, _resource("guest_init.sh")),
        CpioEntry("/etc/fleetboot/udhcpc.sh", reg | 0o755, _resource("guest_udhcpc.sh")),
        CpioEntry("/etc/fleetboot/modules", reg | 0o644,
                  "".join(f"{name}\n" for name, _ in modules).encode()),
        *(CpioEntry(f"/lib/modules/{name}.ko", reg | 0o644, body) for name, body in modules),
    ]
    for key, value in (("hook", hook), ("end", end)):
        if value:
            base.append(CpioEntry(f"/etc/fleetboot/{key}", reg | 0o644, value.encode() + b"\n"))
    taken = {e.path for e in base}
    for extra in extra_files:
        if check_inside_path(extra.path) in taken:
            raise GuestError(f"extra file {extra.path} clashes with a file the image needs")
        taken.add(extra.path)
        base.append(CpioEntry(extra.path, reg | (extra.mode & 0o7777), extra.data))
    links = [CpioEntry("/" + a, stat.S_IFLNK | 0o777, b"/bin/busybox") for a in applets
             if "/" + a not in taken]
    return with_parent_dirs([*base, *links])


def build_initramfs(
    kernel: GuestKernel,
    *,
    extra_files: Sequence[ExtraFile] = (),
    hook: str | None = None,
    end: str | None = None,
    modules: Sequence[str] = NIC_MODULES,
    out: Path | None = None,
) -> Path:
    """A gzip-compressed initramfs for ``kernel``; returns its path.

    ``hook`` (a URL or a path inside the image) runs after the lease unless the
    kernel command line gives ``fleetboot.hook``; ``end`` is the default end
    action. Without ``out`` the image goes to the cache under its content hash,
    so equal inputs share one file and a file in use is never rewritten.
    """
    busybox, applets = _static_busybox()
    bodies = [(name, kernel.modules[name].read_bytes()) for name in kernel.load_order(modules)]
    entries = initramfs_entries(busybox=busybox, applets=applets, modules=bodies,
                                extra_files=extra_files, hook=hook, end=end)
    image = gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)
    if out is None:
        digest = hashlib.sha256(image).hexdigest()[:16]
        out = kernel.root.parent / "initramfs" / f"{kernel.release}-{digest}.cpio.gz"
        if out.exists():
            return out
    _atomic_write(out, image)
    return out


_LDD_PATH = re.compile(r"(/\S+) \(0x[0-9a-f]+\)$|=> (/\S+) ")


def host_programs(programs: Sequence[str], into: str = "/sbin") -> list[ExtraFile]:
    """Host binaries (e.g. iproute2's ``ip`` and ``tc``) with every shared library they load.

    Busybox's ``ip`` and ``tc`` lack most of what a full system has (``ip link add type
    vxlan``, ``tc ... netem``); a guest that must behave like a full system gets the
    host's own tools, under ``into`` (in place of the busybox applets of the same names).
    """
    files: dict[str, ExtraFile] = {}
    for program in programs:
        path = shutil.which(program)
        if path is None:
            raise GuestError(f"{program} is not installed on this machine")
        files[f"{into}/{program}"] = ExtraFile.from_file(Path(path), f"{into}/{program}", 0o755)
        for line in _run(["ldd", path]).splitlines():
            found = _LDD_PATH.search(line.strip())
            lib = found and (found[1] or found[2])
            if lib and lib not in files:
                files[lib] = ExtraFile(lib, Path(lib).resolve().read_bytes(), 0o755)
    return list(files.values())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fleetboot.lab.guest [--flavor F]``: fill the cache (Makefile, CI)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--flavor", choices=sorted(META_PACKAGES), action="append")
    args = parser.parse_args(argv)
    for flavor in args.flavor or ["cloud", "generic"]:
        kernel = fetch_guest_kernel(flavor)
        initrd = build_initramfs(kernel)
        print(f"{flavor}: kernel {kernel.vmlinuz} initramfs {initrd}")


if __name__ == "__main__":
    main()
