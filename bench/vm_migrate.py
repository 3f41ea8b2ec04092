"""Live migration between two hosts of a VM that keeps writing its memory, with its disk
copied on the way: Fleetboot (``vm migrate --to``) against QEMU's own commands driven by
hand (the classic ``drive-mirror`` to an NBD export, then ``migrate``).

Two VM hosts are two network namespaces joined by a veth pair. Each run boots a fresh
VM (TCG) from the lab's kernel and busybox initramfs whose hook rewrites ``--dirty-mib``
of a tmpfs file over and over, and gives it a ``--disk-mib`` disk full of data; the
migration starts once the guest has written the whole file once. Both sides get the
same bandwidth (``max-bandwidth``) and downtime limit; downtime is QEMU's own figure.
``virsh migrate --copy-storage-all`` is not the peer: libvirt's QEMU driver does not
run in this sandbox, so the peer is its recipe driven by hand.

Run: ``python bench/vm_migrate.py``; ends with
``RESULT migrate fleetboot_total_s=.. fleetboot_downtime_ms=.. peer_total_s=..
peer_downtime_ms=..``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetboot.inventory.db import Database
from fleetboot.lab.guest import ExtraFile, build_initramfs, fetch_guest_kernel
from fleetboot.lab.netns import Lab
from fleetboot.vm import runtime
from fleetboot.vm.planner import Family
from fleetboot.vm.runtime import QemuProcess, Qmp, RunPaths
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic

DIRTY = """#!/bin/sh
mkdir -p /mnt && mount -t tmpfs -o size={mib}m tmpfs /mnt
i=0
while :; do
    yes "pass $i abcdefghijklmnopqrstuvwxyz0123456789" | dd of=/mnt/mem bs=1M count={mib} \\
        conv=notrunc iflag=fullblock 2>/dev/null
    echo "FLEETBOOT-DIRTY pass=$i"
    i=$((i + 1))
done
"""


def _boot_args(kernel: Path, initrd: Path) -> list[str]:
    return ["-kernel", str(kernel), "-initrd", str(initrd), "-append",
            "console=ttyS0 fleetboot.hook=/bin/dirty.sh fleetboot.end=shell quiet"]


async def _wait_for(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in {log} within {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def _new_vm(vms: VmService, name: str, extras: list[str], args: argparse.Namespace,
                  lab: Lab, work: Path) -> Path:
    log = work / f"{name}.console"
    await vms.create(CreateSpec(name, Family.Q35, memory_mib=args.dirty_mib + 384,
                                nics=(parse_nic("model=virtio-net-pci"),),
                                disks=(parse_disk(f"size={args.disk_mib}M"),),
                                extra_args=tuple(extras), serial_log=str(log)))
    image = vms.read(name).disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {args.disk_mib}M",
                    image], check=True, capture_output=True)
    await vms.start(name, netns=lab.server.name)
    await _wait_for(log, "FLEETBOOT-DIRTY pass=0", args.boot_timeout)
    return log


async def _limits(qmp: Qmp, args: argparse.Namespace) -> None:
    await qmp.cmd("migrate-set-parameters", {"max-bandwidth": args.mbps * 1024 * 1024 // 8,
                                             "downtime-limit": args.downtime_ms})


async def fleetboot_run(vms: VmService, args: argparse.Namespace, lab: Lab,
                        work: Path, extras: list[str]) -> dict[str, Any]:
    await _new_vm(vms, "fb", extras, args, lab, work)
    view = vms.read("fb")
    assert view.qmp_socket is not None
    async with Qmp(view.qmp_socket) as qmp:
        await _limits(qmp, args)
    started = time.monotonic()
    result = await vms.migrate("fb", to="host-b")
    total = time.monotonic() - started
    assert result.drift.ok, result.drift
    await vms.stop("fb")
    return {"total_s": total, "downtime_ms": result.stats.get("downtime", -1)}


async def peer_run(vms: VmService, args: argparse.Namespace, lab: Lab, work: Path,
                   extras: list[str]) -> dict[str, Any]:
    """The classic recipe by hand: target QEMU -incoming, nbd-server-add, drive-mirror,
    wait ready, migrate, block-job-cancel once the source has stopped."""
    await _new_vm(vms, "peer", extras, args, lab, work)
    view = vms.read("peer")
    source = view.process
    assert source is not None and view.qmp_socket is not None
    argv = await vms.argv("peer")
    target_image = work / "peer-target.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target_image),
                    f"{args.disk_mib}M"], check=True)
    argv = [a.replace(view.disks[0].path, str(target_image)) for a in argv]
    paths = RunPaths(work / "peer-run", "target")
    argv = [*_retarget(argv, paths), "-incoming", f"tcp:{lab.client_ip}:4444"]
    started = time.monotonic()
    target = await runtime.launch(argv, paths, lab.client.name)
    async with Qmp(target.qmp_socket) as dst, Qmp(view.qmp_socket) as src:
        await _limits(src, args)
        await dst.cmd("nbd-server-start", {"addr": {"type": "inet", "data": {
            "host": lab.client_ip, "port": "10809"}}})
        await dst.cmd("nbd-server-add", {"device": "drive-disk0", "writable": True})
        await src.cmd("drive-mirror", {
            "device": "drive-disk0", "job-id": "m0", "sync": "full", "mode": "existing",
            "format": "raw", "target": f"nbd:{lab.client_ip}:10809:exportname=drive-disk0"})
        while not any(j.get("ready") for j in await src.cmd("query-block-jobs")):
            await asyncio.sleep(0.05)
        await src.cmd("migrate", {"uri": f"tcp:{lab.client_ip}:4444"})
        while (info := await src.cmd("query-migrate"))["status"] not in (
                "completed", "failed", "cancelled"):
            await asyncio.sleep(0.02)
        await src.cmd("block-job-cancel", {"device": "m0"})
        while await src.cmd("query-block-jobs"):
            await asyncio.sleep(0.02)
        await dst.cmd("nbd-server-stop")
        total = time.monotonic() - started
    if info["status"] != "completed":
        raise RuntimeError(f"peer migration {info['status']}: {info.get('error-desc')}")
    await runtime.quit_qemu(target)
    await runtime.quit_qemu(source)
    return {"total_s": total, "downtime_ms": info.get("downtime", -1)}


def _retarget(argv: list[str], paths: RunPaths) -> list[str]:
    """The argv Fleetboot would start, with the target's own QMP socket and pidfile."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("unix:") and arg.endswith(".qmp,server=on,wait=off"):
            out[i] = f"unix:{paths.qmp_socket},server=on,wait=off"
        elif i and out[i - 1] == "-pidfile":
            out[i] = paths.pidfile
    return out


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="fbmb", dir="/tmp"))
    kernel = fetch_guest_kernel("cloud")
    script = DIRTY.format(mib=args.dirty_mib).encode()
    initrd = build_initramfs(kernel, extra_files=[ExtraFile("/bin/dirty.sh", script)],
                             out=work / "initrd.gz")
    extras = _boot_args(kernel.vmlinuz, initrd)
    try:
        with Lab.create(subnet="10.79.0") as lab:
            db = Database(f"sqlite:///{work}/bench.db")
            db.create_schema()
            vms = VmService(db, VmSettings(run_dir=work / "run", image_dir=work / "img",
                                           migrate_timeout=args.timeout))
            vms.add_host("host-b", lab.client_ip, netns=lab.client.name,
                         run_dir=work / "hb", image_dir=work / "hb-img")
            fb = await fleetboot_run(vms, args, lab, work, extras)
            peer = await peer_run(vms, args, lab, work, extras)
    finally:
        _kill_under(work)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"fleetboot": fb, "peer": peer}))
    print(f"RESULT migrate fleetboot_total_s={fb['total_s']:.2f} "
          f"fleetboot_downtime_ms={fb['downtime_ms']} peer_total_s={peer['total_s']:.2f} "
          f"peer_downtime_ms={peer['downtime_ms']}")


def _kill_under(work: Path) -> None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(work).encode() in (proc / "cmdline").read_bytes():
                    QemuProcess(int(proc.name), str(work)).signal()
            except OSError:
                continue


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dirty-mib", type=int, default=1024)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--mbps", type=int, default=4000, help="max-bandwidth, Mbit/s")
    parser.add_argument("--downtime-ms", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--boot-timeout", type=float, default=600.0)
    asyncio.run(main(parser.parse_args()))
