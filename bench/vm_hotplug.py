"""Hotplug latency: ``device_add`` sent -> the device visible in ``query-pci`` at its slot.

Runs real QEMU (TCG) through Fleetboot's VM service: a running q35 VM (the
firmware numbers the root ports, so ``query-pci`` shows what sits behind them)
takes ``--rounds`` NIC and disk hotplugs, each unplugged again (q35 frees a
slot no guest powered on at once); a paused pc VM fills its NIC pool.
Also times a whole ``fleetboot vm migrate`` of the q35 VM with its devices.

Run: ``python bench/vm_hotplug.py``; ends with
``RESULT vm_hotplug q35_nic_p50_ms=.. q35_nic_p99_ms=.. q35_disk_p50_ms=.. pc_nic_p50_ms=..
migrate_s=..``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
from pathlib import Path

from fleetboot.inventory.db import Database
from fleetboot.vm.planner import Family, PoolSizes
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _q35(vms: VmService, rounds: int) -> tuple[list[float], list[float], float]:
    await vms.create(CreateSpec("bq", Family.Q35, memory_mib=128, nics=(parse_nic("boot"),)))
    await vms.start("bq")
    nics, disks = [], []
    for _ in range(rounds):
        result = await vms.hotplug_nic("bq", parse_nic("model=e1000"))
        nics.append(result.latency_s or 0.0)
        await vms.unplug("bq", result.device)
        result = await vms.hotplug_disk("bq", parse_disk("size=1M"))
        disks.append(result.latency_s or 0.0)
        await vms.unplug("bq", result.device)
    await vms.hotplug_nic("bq", parse_nic("model=rtl8139"))
    await vms.hotplug_disk("bq", parse_disk("size=1M,bus=virtio-scsi"))
    migrated = await vms.migrate("bq")
    assert migrated.drift.ok, migrated.drift
    await vms.stop("bq")
    return nics, disks, migrated.seconds


async def _pc(vms: VmService) -> list[float]:
    pools = PoolSizes(qemu=4, nic=12, disk=4, passthrough=0)
    await vms.create(CreateSpec("bp", Family.PC, memory_mib=128, pools=pools))
    await vms.start("bp", paused=True)
    out = []
    for _ in range(pools.nic):
        out.append((await vms.hotplug_nic("bp", parse_nic("model=e1000"))).latency_s or 0.0)
    await vms.stop("bp")
    return out


async def main(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="fbvb", dir="/tmp"))
    try:
        db = Database(f"sqlite:///{work}/bench.db")
        db.create_schema()
        vms = VmService(db, VmSettings(run_dir=work / "run", image_dir=work / "img"))
        nics, disks, migrate_s = await _q35(vms, rounds)
        pc = await _pc(vms)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, values in (("q35 NIC", nics), ("q35 virtio-blk", disks), ("pc NIC", pc)):
        print(f"{name:15} n={len(values):3} p50={_pct(values, .5):6.2f} ms "
              f"p99={_pct(values, .99):6.2f} ms mean={statistics.mean(values) * 1000:6.2f} ms")
    print(f"RESULT vm_hotplug q35_nic_p50_ms={_pct(nics, .5):.2f} "
          f"q35_nic_p99_ms={_pct(nics, .99):.2f} q35_disk_p50_ms={_pct(disks, .5):.2f} "
          f"pc_nic_p50_ms={_pct(pc, .5):.2f} migrate_s={migrate_s:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=50)
    asyncio.run(main(parser.parse_args().rounds))
