"""The boot integration: `fleetboot node boot ... --reboot` on a node whose BMC is ipmi_sim
in front of a real QEMU. The power cycle starts the VM, which PXE-boots (iPXE) from
Fleetboot's HTTP server into the lab kernel, fetches its configuration and reports UP;
the power action and the boot are on the node's timeline.

As in tests/nodeconfig/test_client_vm.py, QEMU's user-mode network stands in for DHCP (its
bootfile is our iPXE script URL; the guest reaches us as 10.0.2.2 from 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from power_helpers import require
from sqlalchemy import select
from typer.testing import CliRunner

from fleetboot.boot.images import ImageStore
from fleetboot.cli.main import app
from fleetboot.config import HttpConfig, Settings
from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.lab.bmc import IpmiSim
from fleetboot.nodeconfig.models import TimelineEvent
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.nodeconfig.states import State
from fleetboot.power import service
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.http import HttpService, create_app

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

VM_MAC = "52:54:00:77:15:01"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fbpb", dir="/tmp"))
    yield path
    marker = str(path).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes() and entry.name != str(os.getpid()):
                    os.kill(int(entry.name), signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


async def test_reboot_brings_the_node_back_through_pxe_to_up(
        tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require("ipmi_sim", "qemu-system-x86_64")
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
    db = Database(f"sqlite:///{tmp_path}/fleetboot.db")
    db.create_schema()
    with db.session() as s:
        node_id = inventory.add_node(s, "vm", [inventory.NicSpec(VM_MAC, boot=True)]).id
        inventory.add_profile(s, "lab", kernel=k.path, initrd=i.path,
                              cmdline=guest.kernel_cmdline(mac=VM_MAC, end="poweroff"))

    settings = Settings(server_address="10.0.2.2", boot_root=str(root),
                        http=HttpConfig(wait_seconds=1))
    directory = StaticDirectory({"127.0.0.1": VM_MAC})
    nodeconfig = NodeConfigService(db, directory, NodeConfigSettings())
    await nodeconfig.start()
    web = create_app(settings, db, directory, nodeconfig.sink,
                     extra_routes=nodeconfig.routes(), cmdline_hook=nodeconfig.cmdline_hook)
    http = HttpService(web, "127.0.0.1", 0, protocol=nodeconfig.http_protocol())
    await http.start()
    settings.http.public_url = nodeconfig.settings.base_url = f"http://10.0.2.2:{http.port}"
    url = f"http://10.0.2.2:{http.port}/boot/script.ipxe"
    qemu = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "256", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", f"file:{short_dir}/serial.log",
            "-netdev", f"user,id=n0,bootfile={url}",
            "-device", f"virtio-net-pci,netdev=n0,mac={VM_MAC},bootindex=1"]
    # ipmi_sim's own VM mode refuses boot devices, so the chassis script runs this QEMU.
    sim = IpmiSim.start(short_dir / "bmc", machine_argv=qemu)

    monkeypatch.setenv("FLEETBOOT_DB", db.url)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pw").write_text("secret\n")

    def cli(*args: Any) -> Any:  # on a thread: the CLI runs its own event loop
        return CliRunner().invoke(app, [str(a) for a in args])

    try:
        res = await asyncio.to_thread(
            cli, "power", "set", "vm", "--driver", "ipmi", "--address", "127.0.0.1",
            "--port", sim.port, "--username", "admin", "--password-file", tmp_path / "pw")
        assert res.exit_code == 0, res.output
        res = await asyncio.to_thread(cli, "node", "boot", "vm", "profile", "-p", "lab",
                                      "--level", "next", "--reboot")
        assert res.exit_code == 0, res.output
        assert "power-cycled" in res.output
        assert sim.bootdev() == "pxe" and sim.machine_pid() is not None
        for _ in range(900):  # TCG on a shared 2-core machine: allow minutes
            st = nodeconfig.statuses.get(node_id)
            if st is not None and st.state is State.UP:
                break
            await asyncio.sleep(0.2)
        await nodeconfig.settle()
        serial = (short_dir / "serial.log").read_text(errors="replace")
        assert st is not None and st.state is State.UP, serial[-3000:]
    finally:
        await http.stop()
        await nodeconfig.stop()
        sim.stop()
    with db.session() as s:
        events = s.scalars(select(TimelineEvent).where(TimelineEvent.node_id == node_id)
                           .order_by(TimelineEvent.at, TimelineEvent.seq)).all()
        seen = [(e.source, e.kind) for e in events]
    assert seen[0] == ("power", "reboot-network") and events[0].detail["ok"] is True
    assert seen.index(("http", "script")) < seen.index(("config", "config"))
    assert events[-1].state == "UP"
    assert service.flag_not_back(db, time.time(), 0.0) == []  # it came back: not flagged
    db.dispose()
