"""Benchmark: concurrent claims on SQLite and PostgreSQL, and the planner on a big host.

Run: ``.venv/bin/python tests/passthrough/bench_claims.py`` (root, for PostgreSQL).
Not collected by pytest; meant for bench/ (prints one final ``RESULT`` line).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleetboot.inventory.db import Database
from fleetboot.lab import postgres
from fleetboot.passthrough import catalog, claims, hosts
from fleetboot.passthrough.errors import NoHostError
from fleetboot.passthrough.flavors import DeviceRequest, Flavor, parse_requests
from fleetboot.passthrough.placement import Candidate, place, slots_for
from fleetboot.passthrough.sysfs_builder import FakeDevice, FakeSysfs

HOSTS, PFS, VFS, THREADS = 4, 4, 32, 16


def _build(root: Path) -> None:
    fs = FakeSysfs(root)
    for pf in range(PFS):
        bus = 0x10 + pf
        fs.add(FakeDevice(f"0000:{bus:02x}:00.0", "8086", "1572", "020000", driver="i40e",
                          numa_node=pf % 2, netdevs=[f"ens{pf}"], sriov_totalvfs=64))
        fs.add_vfs(f"0000:{bus:02x}:00.0", [
            FakeDevice(f"0000:{bus:02x}:{2 + v // 8:02x}.{v % 8}", "8086", "154c", "020000",
                       driver="vfio-pci", numa_node=pf % 2) for v in range(VFS)])


def _claims_per_second(db: Database, root: Path) -> tuple[float, int]:
    db.create_schema()
    for h in range(HOSTS):
        hosts.scan_host(db, f"h{h}", root)
    vf = Flavor.create("vf", vendor="8086", products=["154c"])
    with db.session() as s:
        catalog.add_flavor(s, vf)
    for h in range(HOSTS):
        hosts.allow_devices(db, f"h{h}", vf)
    total = HOSTS * PFS * VFS
    request = parse_requests("1 x vf")

    def one(_: int) -> int:
        try:
            claims.claim(db, str(uuid.uuid4()), request)
            return 1
        except NoHostError:
            return 0

    start = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        won = sum(pool.map(one, range(total + THREADS)))
    elapsed = time.perf_counter() - start
    assert won == total, (won, total)  # every VF once, the extra requests refused
    return won / elapsed, won


def _plan_ms() -> float:
    cands = [Candidate(i, f"0000:{0x10 + i // 65:02x}:{i % 65:02x}.0", frozenset({"vf"}),
                       numa_node=(i // 65) % 2, pf_address=None if i % 65 == 0 else
                       f"0000:{0x10 + i // 65:02x}:00.0", is_pf=i % 65 == 0)
             for i in range(8 * 65)]
    slots = slots_for([DeviceRequest(16, ("vf",))])
    start = time.perf_counter()
    for _ in range(20):
        assert place(cands, slots) is not None
    return (time.perf_counter() - start) / 20 * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sys"
        _build(root)
        sqlite_rate, n = _claims_per_second(Database(f"sqlite:///{tmp}/b.db"), root)
        pg_rate = 0.0
        if postgres.available():
            server = postgres.PostgresServer.start()
            try:
                db = Database(server.create_database("bench"))
                pg_rate, _ = _claims_per_second(db, root)
                db.dispose()
            finally:
                server.stop()
    print(f"RESULT passthrough_claims devices={n} threads={THREADS} "
          f"sqlite_claims_per_s={sqlite_rate:.0f} postgres_claims_per_s={pg_rate:.0f} "
          f"plan_520_devices_16_slots_ms={_plan_ms():.1f}")


if __name__ == "__main__":
    main()
