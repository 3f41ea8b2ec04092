"""Deployments: refused for unknown or busy nodes, recorded per node, cancelled; and
`fleetboot deploy` serving real receiver processes in namespaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_reload_netns import GROUP, make_disk

from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.lab.bridge import BridgeLab
from fleetboot.lab.netns import have_netns, stop_process
from fleetboot.power.models import PowerSetting
from fleetboot.reload import service
from fleetboot.reload.models import DeployState
from fleetboot.reload.store import DiskImageStore


def _nodes(db: Database, *names: str) -> None:
    with db.session() as s:
        for i, name in enumerate(names):
            inventory.add_node(s, name, [inventory.parse_nic(f"52:54:00:aa:00:{i:02x}")])


def test_plan_refuses_unknown_and_busy_nodes_and_cancel_frees_them(db: Database,
                                                                  tmp_path: Path) -> None:
    make_disk(tmp_path / "d.raw", mib=3)
    disk, _ = DiskImageStore(tmp_path / "root").add(tmp_path / "d.raw", name="web")
    _nodes(db, "n1", "n2")
    with db.session() as s, pytest.raises(service.DeployError, match=r"unknown node.*ghost"):
        service.plan(s, disk, ["n1", "ghost"], "multicast", 1)
    with db.session() as s:
        assert service.history(s) == []  # all-or-nothing
        rows = service.plan(s, disk, ["n1", "n2"], "multicast", 7)
        ids = [r.id for r in rows]
    with db.session() as s, pytest.raises(service.DeployError, match="already being deployed"):
        service.plan(s, disk, ["n2"], "http", 8)
    with db.session() as s:
        service.finish(s, ids[:1], {ids[0]: (DeployState.VERIFIED, 100, "")})
        assert [n for n, _ in service.cancel(s, ["n1", "n2"])] == ["n2"]
        assert service.cancelled(s, ids[1:]) and not service.cancelled(s, ids)
    with db.session() as s:
        hist = {n: (d.state, d.percent, d.reason) for n, d in service.history(s)}
        assert hist == {"n1": ("verified", 100, ""), "n2": ("cancelled", 0, "cancelled")}
        service.plan(s, disk, ["n2"], "http", 9)  # no longer busy


def test_plan_refuses_nodes_their_bmc_reports_off(db: Database, tmp_path: Path) -> None:
    make_disk(tmp_path / "d.raw", mib=3)
    disk, _ = DiskImageStore(tmp_path / "root").add(tmp_path / "d.raw", name="web")
    _nodes(db, "n1", "n2", "n3")
    with db.session() as s:
        ids = {n.name: n.id for n in inventory.list_nodes(s)}
        s.add_all([PowerSetting(node_id=ids["n1"], driver="ipmi", address="10.0.0.1",
                                state="off"),
                   PowerSetting(node_id=ids["n2"], driver="ipmi", address="10.0.0.2",
                                state="on")])
    with db.session() as s, pytest.raises(service.DeployError,
                                          match=r"powered off.*: n1; .*power on n1"):
        service.plan(s, disk, ["n1", "n2", "n3"], "multicast", 1)
    with db.session() as s:
        assert service.history(s) == []  # all-or-nothing
        assert len(service.plan(s, disk, ["n2", "n3"], "multicast", 2)) == 2  # on, unknown


@pytest.mark.netns
@pytest.mark.skipif(not have_netns(), reason="needs root and iproute2")
def test_fleetboot_deploy_to_two_nodes_over_multicast(tmp_path: Path) -> None:
    content = make_disk(tmp_path / "d.raw", mib=12)
    (tmp_path / "fleetboot.yaml").write_text(f"boot_root: {tmp_path}/root\n")
    env = {"FLEETBOOT_DB": f"sqlite:///{tmp_path}/f.db", "COLUMNS": "200"}

    def cli(*args: str) -> list[str]:
        return ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m",
                "fleetboot.cli", "-c", str(tmp_path / "fleetboot.yaml"), *args]

    for argv in (cli("image", "add-disk", str(tmp_path / "d.raw"), "--name", "web"),
                 cli("node", "add", "n1", "--nic", "52:54:00:aa:00:01"),
                 cli("node", "add", "n2", "--nic", "52:54:00:aa:00:02")):
        subprocess.run(argv, check=True, capture_output=True)
    bad = subprocess.run(cli("deploy", "web", "n1", "nobody", "--iface-ip", "10.0.0.1"),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown node(s): nobody" in bad.stderr + bad.stdout
    procs: list[subprocess.Popen[bytes]] = []
    with BridgeLab.create(2) as lab:
        try:
            deploy = lab.server.popen(cli("deploy", "web", "n1", "n2", "--iface-ip",
                                          lab.server_ip, "--port", "4800", "--rate", "50m",
                                          "--timeout", "120"),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append(deploy)
            out = deploy.stdout.readline().decode()  # type: ignore[union-attr]
            session = out.split()[1].rstrip(":")
            group = out.split(" on ")[1].split(":")[0]
            assert group.startswith("239.77.") and group != GROUP
            for i, name in enumerate(("n1", "n2")):
                procs.append(lab.clients[i].popen(
                    [sys.executable, "-m", "fleetboot.reload.receiver", "multicast", "--group",
                     group, "--port", "4800", "--sender", f"{lab.server_ip}:4801",
                     "--iface-ip", lab.client_ips[i], "--session", session, "--name", name,
                     "--out", str(tmp_path / f"{name}.disk"), "--verify-disk"],
                    stdout=subprocess.DEVNULL))
            text = out + deploy.communicate(timeout=150)[0].decode()
            assert deploy.returncode == 0, text
            assert "all 2 node(s) verified" in text
        finally:
            for p in procs:
                stop_process(p)
    for name in ("n1", "n2"):
        assert (tmp_path / f"{name}.disk").read_bytes() == content
    status = subprocess.run(cli("deploy", "status"), capture_output=True, text=True,
                            check=True).stdout
    assert status.count("verified") == 2 and "multicast" in status
