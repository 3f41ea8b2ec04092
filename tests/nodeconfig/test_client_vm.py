"""The shell client in a real guest: iPXE gets its script (with the per-boot token from the
command-line hook), boots the lab kernel, whose init runs the client fetched from us.

Like tests/http/test_http_ipxe_vm.py, QEMU's user-mode network stands in for DHCP: the
guest reaches the server on the host's loopback as 10.0.2.2, so its requests arrive from
127.0.0.1, which the lease directory maps to the VM's MAC. The whole chain through
Fleetboot's own DHCP server is the runtime's end-to-end test.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
from pathlib import Path

import pytest

from fleetboot.boot.images import ImageStore
from fleetboot.config import HttpConfig, Settings
from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.nodeconfig.states import State
from fleetboot.nodeconfig.timeline import read_timeline
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.http import HttpService, create_app

pytestmark = [
    pytest.mark.qemu, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

VM_MAC = "52:54:00:77:04:01"
FILE_BODY = b"configured by fleetboot\n"


async def _boot(tmp: Path, port: int, seconds: float = 180) -> str:
    serial = tmp / "serial.log"
    url = f"http://10.0.2.2:{port}/boot/script.ipxe"
    proc = await asyncio.create_subprocess_exec(
        "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-nodefaults",
        "-no-user-config", "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
        "-netdev", f"user,id=n0,bootfile={url}",
        "-device", f"virtio-net-pci,netdev=n0,mac={VM_MAC},bootindex=1",
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


async def test_a_guest_fetches_once_applies_and_reports_up(sqlite_db: Database,
                                                           tmp_path: Path) -> None:
    from fleetboot.lab import guest

    try:
        kernel = await asyncio.to_thread(guest.fetch_guest_kernel, "cloud")
    except guest.GuestError as exc:
        pytest.skip(f"no guest kernel: {exc}")
    initrd = await asyncio.to_thread(guest.build_initramfs, kernel)
    root = tmp_path / "root"
    root.mkdir()
    images = ImageStore(root)
    k, _ = images.add(kernel.vmlinuz, "vmlinuz")
    i, _ = images.add(initrd, "initrd.img")
    with sqlite_db.session() as s:
        inventory.add_node(s, "vm", [inventory.NicSpec(VM_MAC, boot=True)])
        inventory.add_profile(s, "lab", kernel=k.path, initrd=i.path,
                              cmdline=guest.kernel_cmdline(mac=VM_MAC, end="poweroff"))
        inventory.set_boot(s, "vm", "default", BootAction.PROFILE, "lab")
        store.set_section(s, "vm", "hostname", "vm-configured")
        store.set_section(s, "vm", "files", [
            {"path": "/etc/fleetboot-test", "content_b64": base64.b64encode(FILE_BODY).decode()}])

    settings = Settings(server_address="10.0.2.2", boot_root=str(root),
                        http=HttpConfig(wait_seconds=1))
    directory = StaticDirectory({"127.0.0.1": VM_MAC})
    nodeconfig = NodeConfigService(sqlite_db, directory, NodeConfigSettings())
    await nodeconfig.start()
    app = create_app(settings, sqlite_db, directory, nodeconfig.sink,
                     extra_routes=nodeconfig.routes(), cmdline_hook=nodeconfig.cmdline_hook)
    http = HttpService(app, "127.0.0.1", 0, protocol=nodeconfig.http_protocol())
    await http.start()
    settings.http.public_url = nodeconfig.settings.base_url = f"http://10.0.2.2:{http.port}"
    try:
        console = await _boot(tmp_path, http.port)
    finally:
        await http.stop()
        await nodeconfig.settle()
    try:
        assert "FLEETBOOT-STATE UP" in console, console[-3000:]
        assert "FLEETBOOT-CONFIG hostname name=vm-configured" in console
        assert f"file path=/etc/fleetboot-test bytes={len(FILE_BODY)}" in console
        assert nodeconfig.fetches == 1  # one request per boot
        with sqlite_db.session() as s:
            node_id = inventory.get_node(s, "vm").id
            events = read_timeline(s, node_id)
        status = nodeconfig.statuses[node_id]
        assert status.state is State.UP and status.last_boot_s is not None
        seen = [(e.source, e.kind) for e in events]
        script = seen.index(("http", "script"))
        config = seen.index(("config", "config"))
        assert seen.count(("http", "file")) == 2  # kernel and initrd
        assert script < config < seen.index(("node", "state"))
        assert [e.state for e in events][script] == "PXEBOOTING"
        assert events[config].state == "CONFIGURING" and events[-1].state == "UP"
    finally:
        await nodeconfig.stop()
