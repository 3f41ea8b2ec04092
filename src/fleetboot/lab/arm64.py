"""ARM64 lab guests: AAVMF (UEFI for qemu-system-aarch64) network-boots through Fleetboot.

Everything comes from Debian's arm64 packages (``dpkg --add-architecture arm64``,
then ``apt-get download``; nothing is installed): the signed network GRUB
(``grub-efi-arm64-signed``), the cloud kernel (``linux-image-cloud-arm64``) and a
static busybox (``busybox-static``) for the same initramfs as the x86 guests. QEMU
runs ``virt`` with a Cortex-A57 under TCG, AAVMF from ``qemu-efi-aarch64``; the
console is the PL011 UART, ``ttyAMA0``.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleetboot.lab import guest, qemu
from fleetboot.lab.netns import Lab
from fleetboot.lab.qemu import NicSpec, Vm, VmFiles, VmSpec

QEMU_AARCH64 = "qemu-system-aarch64"
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
META_KERNEL = "linux-image-cloud-arm64:arm64"
BUSYBOX = "busybox-static:arm64"
GRUB_SIGNED = "grub-efi-arm64-signed:arm64"
GRUB_IMAGE = "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"
GRUB_BIN = "grub-efi-arm64-bin:arm64"  # GRUB's arm64 modules, for grub-mkimage
HTTP_BOOT_PROGRAM = "arm64/grubhttpaa64.efi"
# Debian's signed GRUB started by UEFI HTTP boot does not configure its network from
# it and stops at grub> (docs/real-clients.md). This image asks DHCP itself, then
# reads its per-node grub.cfg over TFTP like the PXE-started one. GRUB sets
# $net_default_server to the HOST:PORT of the URL it came from (measured), so the
# port is cut off; over HTTP GRUB 2.06 waits ~34 s per file on a keep-alive server.
HTTP_GRUB_CONFIG = """echo Fleetboot: GRUB asks DHCP
net_bootp
regexp --set=1:server '^([^:]+)' "$net_default_server"
echo Fleetboot: GRUB reads grub.cfg from $server
set prefix=(tftp,$server)/grub
configfile $prefix/grub.cfg
"""
HTTP_GRUB_MODULES = ("efinet", "net", "tftp", "http", "linux", "boot", "normal", "configfile",
                     "echo", "sleep", "test", "gzio", "regexp")
BOOT_PROGRAM = "arm64/grubnetaa64.efi"  # the default table's entry for arch 11
MODULES = ("af_packet", "virtio_pci", "virtio_net")
MEMORY_MB = 1024


@dataclass(frozen=True)
class Arm64Guest:
    kernel: Path
    initrd: Path
    grub: Path


def _download(package: str, into: Path) -> Path:
    # guest._run turns a missing tool or a failure into a one-line GuestError.
    guest._run(["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", package],
               cwd=into)
    debs = sorted(into.glob(f"{package.split(':')[0]}_*.deb"))
    if not debs:
        raise guest.GuestError(f"apt-get download {package} produced no .deb; run "
                               "dpkg --add-architecture arm64 && apt-get update")
    return debs[-1]


def _kernel_package() -> str:
    out = guest._run(["apt-cache", "depends", META_KERNEL])
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and dep.startswith("linux-image-"):
            return dep if ":" in dep else dep + ":arm64"
    raise guest.GuestError(f"apt knows no {META_KERNEL}: run dpkg --add-architecture arm64 "
                           "&& apt-get update")


def fetch_arm64_guest(cache: Path | None = None) -> Arm64Guest:
    """Kernel, initramfs and GRUB for an ARM64 lab VM (cached after the first call)."""
    root = (cache or guest.cache_dir()) / "arm64"
    done = Arm64Guest(root / "vmlinuz", root / "initrd.img", root / "grubnetaa64.efi")
    if all(p.is_file() for p in (done.kernel, done.initrd, done.grub)):
        return done
    root.mkdir(parents=True, exist_ok=True)
    with guest._locked(root), tempfile.TemporaryDirectory(dir=root, prefix=".dl-") as tmp:
        dl = Path(tmp)
        kernel_dir = root / "kernel"
        kernel_dir.mkdir(exist_ok=True)
        manifest = guest._unpack(_download(_kernel_package(), dl), kernel_dir, MODULES)
        kernel = guest._load("cloud-arm64", "arm64", kernel_dir, manifest)
        tree = dl / "x"
        for package in (BUSYBOX, GRUB_SIGNED):
            guest._run(["dpkg", "-x", str(_download(package, dl)), str(tree)])
        busybox = (tree / "bin" / "busybox").read_bytes()
        # The arm64 busybox cannot run here to list its applets; the host's busybox is
        # the same Debian version, so its list is the arm64 one.
        _, applets = guest._static_busybox()
        bodies = [(n, kernel.modules[n].read_bytes()) for n in kernel.load_order(MODULES)]
        entries = guest.initramfs_entries(busybox=busybox, applets=applets, modules=bodies)
        guest._atomic_write(done.initrd, gzip.compress(guest.cpio_newc(entries), mtime=0))
        guest._atomic_write(done.grub, (tree / GRUB_IMAGE).read_bytes())
        guest._atomic_write(done.kernel, kernel.vmlinuz.read_bytes())
    return done


def build_http_grub(out: Path, cache: Path | None = None) -> Path:
    """An unsigned ARM64 GRUB for UEFI HTTP boot (arch 19), made with grub-mkimage from
    Debian's grub-efi-arm64-bin modules."""
    if shutil.which("grub-mkimage") is None:
        raise guest.GuestError("grub-mkimage is missing: install grub-common")
    root = (cache or guest.cache_dir()) / "arm64"
    root.mkdir(parents=True, exist_ok=True)
    with guest._locked(root), tempfile.TemporaryDirectory(dir=root, prefix=".mk-") as tmp:
        tree = Path(tmp) / "x"
        guest._run(["dpkg", "-x", str(_download(GRUB_BIN, Path(tmp))), str(tree)])
        config = Path(tmp) / "embedded.cfg"
        config.write_text(HTTP_GRUB_CONFIG)
        out.parent.mkdir(parents=True, exist_ok=True)
        guest._run(["grub-mkimage", "-O", "arm64-efi", "-d",
                    str(tree / "usr/lib/grub/arm64-efi"), "-c", str(config), "-p", "/grub",
                    "-o", str(out), *HTTP_GRUB_MODULES])
    return out


def arm64_cmdline() -> str:
    """The lab command line with the PL011 console (``virt`` has no ttyS0)."""
    return guest.kernel_cmdline(end="poweroff", quiet=False).replace(
        "console=ttyS0", "console=ttyAMA0")


def arm64_argv(spec: VmSpec, tap: str, files: VmFiles) -> list[str]:
    nic = spec.nics[0]
    return [QEMU_AARCH64, "-name", spec.name, "-machine", "virt,accel=tcg",
            "-cpu", "cortex-a57", "-m", str(MEMORY_MB), "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", f"file:{files.serial_log}",
            "-drive", f"if=pflash,format=raw,readonly=on,file={AAVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={files.ovmf_vars}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={nic.mac},romfile=,bootindex=1"]


def start_arm64_vm(name: str, mac: str, workdir: Path, lab: Lab, *,
                   http_boot: bool = False) -> Vm:
    """Start an AAVMF VM with one virtio NIC on a new tap of ``lab``'s bridge."""
    if shutil.which(QEMU_AARCH64) is None or not AAVMF_CODE.is_file():
        raise guest.GuestError("qemu-system-aarch64 or AAVMF is missing: install "
                               "qemu-system-arm and qemu-efi-aarch64")
    spec = VmSpec(name, nics=(NicSpec(mac, "virtio-net-pci", bootindex=1, rom=""),))
    workdir.mkdir(parents=True, exist_ok=True)
    files = VmFiles.inside(workdir, name)
    shutil.copyfile(AAVMF_VARS, files.ovmf_vars)
    tap = lab.add_tap()
    argv = arm64_argv(spec, tap, files)
    if http_boot:  # PXE off: each unanswered PXE try costs the firmware about a minute
        argv += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
                 "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]
    (workdir / f"{name}.argv").write_text(" ".join(argv) + "\n")
    with open(files.qemu_log, "wb") as log:
        process = subprocess.Popen(lab.server.exec_argv(argv), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=log)
    vm = Vm(spec, process, files, (tap,))
    qemu._live.add(vm)  # killed at interpreter exit if the caller never closes it
    return vm
