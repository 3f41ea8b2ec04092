"""Live migration between two VM hosts (two network namespaces, each with its own run and
image directories and address), over TCP, the disks copied by NBD mirroring; the
layout checked by query-pci on the target, the source cleaned only after the target runs,
and a failed migration leaving the VM running on its source."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetboot.lab.netns import Lab, have_netns
from fleetboot.vm.errors import VmError
from fleetboot.vm.models import VmStatus
from fleetboot.vm.planner import Family
from fleetboot.vm.runtime import Qmp
from fleetboot.vm.service import VmService
from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic

BACKEND = "/machine/peripheral/disk0/virtio-backend"
pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def lab() -> Iterator[Lab]:
    if not have_netns():
        pytest.skip("needs root and iproute2")
    with Lab.create(subnet="10.78.0") as lab:
        yield lab


def add_hosts(vms: VmService, lab: Lab, tmp_path: Path) -> None:
    for name, ns, address in (("host-a", lab.server.name, lab.server_ip),
                              ("host-b", lab.client.name, lab.client_ip)):
        vms.add_host(name, address, netns=ns, run_dir=vms.settings.run_dir / name,
                     image_dir=tmp_path / f"{name}-images")


async def hmp(view_qmp: str, command: str) -> str:
    async with Qmp(view_qmp) as qmp:
        return str(await qmp.cmd("human-monitor-command", {"command-line": command}))


def netns_pids(name: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


async def test_migrate_to_another_host_copies_the_disks(
    vms: VmService, lab: Lab, tmp_path: Path,
) -> None:
    add_hosts(vms, lab, tmp_path)
    await vms.create(CreateSpec("mover", Family.Q35, memory_mib=128,
                                nics=(parse_nic("boot"),), disks=(parse_disk("size=64M"),)))
    view = await vms.start("mover", netns=lab.server.name)
    source_image = Path(view.disks[0].path)
    assert view.qmp_socket is not None
    # A write through the running guest's own disk (HMP qemu-io prints nothing back).
    await hmp(view.qmp_socket, f'qemu-io -d {BACKEND} "write -P 0x5a 1M 4M"')

    result = await vms.migrate("mover", to="host-b")
    moved = await vms.show("mover")
    assert moved.status is VmStatus.RUNNING and moved.host == "host-b"
    assert moved.netns == lab.client.name and moved.pid in netns_pids(lab.client.name)
    assert moved.disks[0].path == str(tmp_path / "host-b-images" / source_image.name)
    assert moved.drift is not None and moved.drift.ok  # query-pci on the target
    assert result.stats["copied_disks"] == ["drive-disk0"]
    assert result.stats["uri"].startswith(f"tcp:{lab.client_ip}:")
    assert moved.qmp_socket is not None and "host-b" in moved.qmp_socket
    # The source is gone, with its image (Fleetboot made it) and its run files.
    assert not source_image.exists() and view.pid not in netns_pids(lab.server.name)
    assert [p.name for p in vms.settings.run_dir.iterdir() if p.suffix == ".qmp"] == []

    # Back to the first host over storage both see: the disk stays where it is.
    await vms.migrate("mover", to="host-a", copy_storage=False)
    back = await vms.show("mover")
    assert back.host == "host-a" and back.netns == lab.server.name
    assert back.disks[0].path == moved.disks[0].path and back.drift is not None
    assert back.drift.ok
    # The data arrived: once the VM stops (QEMU flushes), the copy holds the write.
    await vms.stop("mover")
    assert read_pattern(back.disks[0].path, 0x5A, "1M", "4M")
    assert not read_pattern(back.disks[0].path, 0x5A, "8M", "1M")


def read_pattern(image: str, byte: int, offset: str, length: str) -> bool:
    proc = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-U", "-c",
                           f"read -P {byte:#x} {offset} {length}", image],
                          capture_output=True, text=True, check=False)
    return "Pattern verification failed" not in proc.stdout + proc.stderr


async def test_a_failed_host_migration_leaves_the_vm_on_its_source(
    vms: VmService, lab: Lab, tmp_path: Path,
) -> None:
    add_hosts(vms, lab, tmp_path)
    # An address no interface of host-c has: its QEMU cannot listen there.
    vms.add_host("host-c", "10.78.0.99", netns=lab.client.name,
                 run_dir=vms.settings.run_dir / "host-c", image_dir=tmp_path / "c-images")
    await vms.create(CreateSpec("stayer", Family.PC, memory_mib=128,
                                nics=(parse_nic("boot"),), disks=(parse_disk("size=16M"),)))
    before = await vms.start("stayer", netns=lab.server.name)
    with pytest.raises(VmError, match=r"QEMU failed to start|rolled back"):
        await vms.migrate("stayer", to="host-c")
    after = await vms.show("stayer")
    assert after.status is VmStatus.RUNNING and after.pid == before.pid
    assert after.host is None and after.disks == before.disks
    assert after.drift is not None and after.drift.ok
    assert not any((tmp_path / "c-images").glob("*"))  # the target image was removed
    assert Path(before.disks[0].path).exists()
    with pytest.raises(VmError, match="no VM host named 'nowhere'"):
        await vms.migrate("stayer", to="nowhere")
    assert json.dumps(after.layout.placements != ())  # the layout is intact
