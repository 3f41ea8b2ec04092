"""Real iPXE (SeaBIOS + the NIC's iPXE ROM, under TCG) runs the scripts this server renders.

QEMU's user-mode network answers DHCP itself and hands iPXE the script URL;
the guest reaches our server on the host's loopback as 10.0.2.2, so the
connections arrive from 127.0.0.1, which the test's lease directory maps to
the VM's MAC. Nothing leaves the machine. This checks the scripts and the
HTTP server against real firmware; the whole chain through Fleetboot's own
DHCP server is the runtime's test.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetboot.boot.images import ImageStore
from fleetboot.config import HttpConfig, Settings
from fleetboot.inventory import service
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.events import BootEvent
from fleetboot.server.http import HttpService, create_app

pytestmark = [
    pytest.mark.qemu, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

VM_MAC = "52:54:00:77:00:01"
# A boot sector that writes a line to COM1 and halts: proof the local disk booted.
_MSG = b"LOCAL-DISK-BOOTED\r\n\x00"
MBR_CODE = bytes.fromhex("31c0 8ed8 fc baf803 be177c ac 08c0 7403 ee ebf8 faf4 ebfc"
                         .replace(" ", "")) + _MSG


def _mbr() -> bytes:
    sector = bytearray(512)
    sector[:len(MBR_CODE)] = MBR_CODE
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


class Rig:
    def __init__(self, db: Database, tmp: Path, service_: HttpService,
                 events: list[BootEvent]) -> None:
        self.db, self.tmp, self.service, self.events = db, tmp, service_, events

    async def boot_vm(self, *extra: str, seconds: float = 150) -> str:
        serial = self.tmp / "serial.log"
        sercon = self.tmp / "sercon.bin"
        sercon.write_bytes(b"\xf8\x03")  # SeaBIOS mirrors the BIOS console (iPXE) to COM1
        url = f"http://10.0.2.2:{self.service.port}/boot/script.ipxe"
        proc = await asyncio.create_subprocess_exec(
            "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
            "-fw_cfg", f"name=etc/sercon-port,file={sercon}",
            "-netdev", f"user,id=n0,bootfile={url}",
            "-device", f"virtio-net-pci,netdev=n0,mac={VM_MAC},bootindex=1", *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.wait_for(proc.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", serial.read_text(errors="replace"))

    async def wait_serial(self, pattern: str, *extra: str, seconds: float = 90) -> str:
        """Run a VM that never powers off until ``pattern`` shows on its console."""
        serial = self.tmp / "serial.log"
        task = asyncio.create_task(self.boot_vm(*extra, seconds=seconds))
        for _ in range(int(seconds * 10)):
            await asyncio.sleep(0.1)
            if serial.exists() and re.search(pattern, serial.read_text(errors="replace")):
                break
        # No pid at hand: let the VM run into its timeout only if the pattern never came.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return serial.read_text(errors="replace")


@pytest.fixture
async def rig(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[Rig]:
    root = tmp_path / "root"
    root.mkdir()
    settings = Settings(server_address="10.0.2.2", boot_root=str(root),
                        http=HttpConfig(wait_seconds=1))
    events: list[BootEvent] = []
    app = create_app(settings, sqlite_db, StaticDirectory({"127.0.0.1": VM_MAC}),
                     events.append)
    svc = HttpService(app, "127.0.0.1", 0)
    await svc.start()
    settings.http.public_url = f"http://10.0.2.2:{svc.port}"
    with sqlite_db.session() as s:
        service.add_node(s, "vm", [service.NicSpec(VM_MAC, boot=True)])
    try:
        yield Rig(sqlite_db, tmp_path, svc, events)
    finally:
        await svc.stop()


async def test_wait_then_profile_kernel_and_initrd_over_http(rig: Rig) -> None:
    from fleetboot.lab import guest

    try:
        kernel = await asyncio.to_thread(guest.fetch_guest_kernel, "cloud")
    except guest.GuestError as exc:
        pytest.skip(f"no guest kernel: {exc}")
    initrd = await asyncio.to_thread(guest.build_initramfs, kernel)
    store = ImageStore(rig.tmp / "root")
    k, _ = store.add(kernel.vmlinuz, "vmlinuz")
    i, _ = store.add(initrd, "initrd.img")
    with rig.db.session() as s:
        service.add_profile(s, "lab", kernel=k.path, initrd=i.path,
                            cmdline=guest.kernel_cmdline(mac=VM_MAC, end="poweroff"))
        service.set_boot(s, "vm", "default", BootAction.PROFILE, "lab")
        service.set_boot(s, "vm", "next", BootAction.WAIT)  # one WAIT round first
    console = await rig.boot_vm()
    assert "FLEETBOOT-LEASE" in console, console[-3000:]
    scripts = [e for e in rig.events if e.kind == "script"]
    assert scripts[0].detail["boot"] == "wait" and scripts[0].detail["one_shot_consumed"]
    assert scripts[1].detail["boot"] == "profile" and scripts[1].detail["profile"] == "lab"
    files = [e.detail for e in rig.events if e.kind == "file"]
    assert [f["path"] for f in files] == [k.path, i.path]
    assert all(f["complete"] and f["status"] == 200 for f in files)
    assert files[0]["bytes"] == k.size and files[1]["bytes"] == i.size
    assert "nothing to boot yet" in console  # the WAIT script's message, via iPXE


async def test_local_boot_hands_over_to_the_disk(rig: Rig) -> None:
    disk = rig.tmp / "disk.img"
    disk.write_bytes(_mbr() + bytes(1 << 20))
    with rig.db.session() as s:
        service.set_boot(s, "vm", "default", BootAction.LOCAL)
    console = await rig.wait_serial(
        "LOCAL-DISK-BOOTED", "-drive", f"file={disk},format=raw,if=ide,index=0")
    assert "Booting from the local disk" in console or "local disk" in console
    assert "LOCAL-DISK-BOOTED" in console, console[-3000:]
    assert [e.detail["boot"] for e in rig.events if e.kind == "script"] == ["local"]


async def test_unknown_machine_menu_times_out_to_its_default(rig: Rig) -> None:
    """The menu parses on real iPXE; with nobody at the keyboard its default runs."""
    disk = rig.tmp / "disk.img"
    disk.write_bytes(_mbr() + bytes(1 << 20))
    settings = rig.service.app.state.fleetboot.settings
    settings.http.unknown_menu, settings.http.menu_timeout_s = ["rescue"], 1
    settings.http.menu_default = "local"
    with rig.db.session() as s:
        service.remove_node(s, "vm")
        service.add_profile(s, "rescue", kernel="images/none/vmlinuz")
    console = await rig.wait_serial(
        "LOCAL-DISK-BOOTED", "-drive", f"file={disk},format=raw,if=ide,index=0")
    assert "LOCAL-DISK-BOOTED" in console, console[-3000:]
    assert [e.detail["boot"] for e in rig.events if e.kind == "script"] == ["menu"]
