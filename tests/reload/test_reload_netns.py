"""Real receiver processes in namespaces on one bridge reload a disk image."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fleetboot.lab.bridge import BridgeLab
from fleetboot.lab.netns import have_netns, stop_process
from fleetboot.reload.store import DiskImageStore

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(not have_netns(), reason="needs root and iproute2")]

GROUP, PORT = "239.78.0.1", 4711


def make_disk(path: Path, mib: int = 24, seed: int = 5) -> bytes:
    """A disk with incompressible, compressible and zero regions (and holes)."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(mib << 20)
        for i in range(0, mib, 3):
            f.seek(i << 20)
            f.write(rnd.randbytes(1 << 19) + b"log line %d\n" % i * 40_000)
    return path.read_bytes()


def _receiver(lab: BridgeLab, i: int, out: Path, session: int) -> subprocess.Popen[bytes]:
    return lab.clients[i].popen(
        [sys.executable, "-m", "fleetboot.reload.receiver", "multicast", "--group", GROUP,
         "--port", str(PORT), "--sender", f"{lab.server_ip}:{PORT + 1}", "--iface-ip",
         lab.client_ips[i], "--session", str(session), "--out", str(out), "--verify-disk",
         "--timeout", "60"], stdout=subprocess.PIPE)


def test_multicast_reload_to_three_receivers_with_loss_and_a_late_joiner(tmp_path: Path) -> None:
    content = make_disk(tmp_path / "disk.raw")
    disk, _ = DiskImageStore(tmp_path / "root").add(tmp_path / "disk.raw")
    procs: list[subprocess.Popen[bytes]] = []
    with BridgeLab.create(3) as lab:
        try:
            lab.receiver_loss(3)
            procs = [_receiver(lab, i, tmp_path / f"out{i}", 77) for i in range(2)]
            sender = lab.server.popen(
                [sys.executable, "-m", "fleetboot.reload.sender", "--image",
                 str(disk.directory), "--group", GROUP, "--port", str(PORT),
                 "--iface-ip", lab.server_ip, "--rate", "40m", "--expected", "3",
                 "--session", "77", "--timeout", "90"], stdout=subprocess.PIPE)
            procs.append(sender)
            subprocess.run(["sleep", "1.5"], check=True)  # the third joins mid-stream
            procs.append(_receiver(lab, 2, tmp_path / "out2", 77))
            results = [json.loads(p.communicate(timeout=90)[0]) for p in procs]
        finally:
            for p in procs:
                stop_process(p)
    *receivers, late, = results[:2] + results[3:]
    stats = results[2]
    for r in [*receivers, late]:
        assert r["status"] == "verified", r
        assert r["disk_sha256"] == disk.manifest.disk_sha256
    for i in range(3):
        assert hashlib.sha256((tmp_path / f"out{i}").read_bytes()).digest() == \
            hashlib.sha256(content).digest()
    assert set(stats["receivers"].values()) == {"verified"}
    assert stats["sent_ratio"] < 3.0, stats
