"""Per-port networks in real libvirtd daemons, one per emulated host (each sees its own
fake sysfs as /sys): defined on attach, on the target before a migration, removed from
the source after it and on release, and checked with `virsh net-list --all` each time."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from pt_helpers import INSTANCE, Fleet

from fleetboot.lab import libvirtd as lab_libvirtd
from fleetboot.lab.libvirtd import LibvirtDaemon
from fleetboot.passthrough import claims, hosts, libvirtd, migration
from fleetboot.passthrough.errors import MigrationError
from fleetboot.passthrough.flavors import parse_requests

REQUESTS = parse_requests("1 x sriov-physnet1+x710-vf, 1 x mlx-netdev")
P0, P1 = f"fb-{INSTANCE}-p0", f"fb-{INSTANCE}-p1"


@pytest.fixture
def daemons(fleet: Fleet) -> Iterator[dict[str, LibvirtDaemon]]:
    if not lab_libvirtd.available():
        pytest.skip("needs libvirtd (scripts/install-system-deps.sh)")
    started: dict[str, LibvirtDaemon] = {}
    try:
        for which in ("a", "b"):
            started[which] = LibvirtDaemon.start(fleet.roots[which])
            hosts.set_libvirt_uri(fleet.db, f"compute-{which}", started[which].uri)
        yield started
    finally:
        for daemon in started.values():
            daemon.stop()


def virsh_networks(daemon: LibvirtDaemon) -> dict[str, str]:
    """`virsh net-list --all`: network name -> state (active/inactive)."""
    out = subprocess.run(["virsh", "-c", daemon.uri, "net-list", "--all"], check=True,
                         capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    return {row[0]: row[1] for row in rows}


def virsh_xml(daemon: LibvirtDaemon, name: str) -> str:
    return subprocess.run(["virsh", "-c", daemon.uri, "net-dumpxml", name], check=True,
                          capture_output=True, text=True).stdout


def test_networks_follow_attach_migration_and_release(
    fleet: Fleet, daemons: dict[str, LibvirtDaemon],
) -> None:
    claims.claim(fleet.db, INSTANCE, REQUESTS, host="compute-a")
    _, report = libvirtd.attach(fleet.db, INSTANCE)
    assert report.defined == [P0, P1]
    assert virsh_networks(daemons["a"]) == {P0: "inactive", P1: "inactive"}
    assert "<address type='pci' domain='0x0000' bus='0x3b' slot='0x02'" in virsh_xml(
        daemons["a"], P0)
    assert virsh_networks(daemons["b"]) == {}

    seen: list[dict[str, str]] = []
    migration.migrate(fleet.db, INSTANCE, "compute-b",
                      transfer=lambda plan: seen.append(virsh_networks(daemons["b"])))
    assert seen == [{P0: "inactive", P1: "inactive"}]  # on the target before the move
    assert virsh_networks(daemons["a"]) == {}  # and gone from the source after it
    assert "bus='0x18' slot='0x02'" in virsh_xml(daemons["b"], P0)

    freed, reports = libvirtd.release(fleet.db, INSTANCE)
    assert len(freed) == 2 and reports[0].undefined == [P0, P1]
    assert virsh_networks(daemons["b"]) == {}


def test_a_target_whose_libvirtd_is_down_rolls_the_migration_back(
    fleet: Fleet, daemons: dict[str, LibvirtDaemon],
) -> None:
    claims.claim(fleet.db, INSTANCE, REQUESTS, host="compute-a")
    libvirtd.attach(fleet.db, INSTANCE)
    before = claims.instance_devices(fleet.db, INSTANCE)
    daemons["b"].stop()
    with pytest.raises(MigrationError, match=r"failed at target-networks.*cannot reach "
                       r"libvirtd.*rolled back"):
        migration.migrate(fleet.db, INSTANCE, "compute-b")
    assert claims.instance_devices(fleet.db, INSTANCE) == before
    assert claims.instance_devices(fleet.db, INSTANCE, incoming=True) == []
    assert virsh_networks(daemons["a"]) == {P0: "inactive", P1: "inactive"}


def test_sync_heals_what_was_changed_behind_its_back(
    fleet: Fleet, daemons: dict[str, LibvirtDaemon],
) -> None:
    claims.claim(fleet.db, INSTANCE, REQUESTS, host="compute-a")
    libvirtd.attach(fleet.db, INSTANCE)
    uri = daemons["a"].uri
    subprocess.run(["virsh", "-c", uri, "net-undefine", P1], check=True, capture_output=True)
    stray = f"fb-{'0' * 8}-0000-4000-8000-{'0' * 12}-p0"
    xml = virsh_xml(daemons["a"], P0).replace(P0, stray)
    xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
    subprocess.run(["virsh", "-c", uri, "net-define", "/dev/stdin"], input=xml, text=True,
                   check=True, capture_output=True)
    report = libvirtd.sync_networks(fleet.db, "compute-a")
    assert report.defined == [P1] and report.undefined == [stray]
    assert virsh_networks(daemons["a"]) == {P0: "inactive", P1: "inactive"}


def test_same_network_sees_through_libvirts_additions() -> None:
    ours = ("<network><name>n</name><forward mode='hostdev' managed='yes'><driver name='vfio'/>"
            "<address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x0'/>"
            "</forward></network>")
    theirs = ("<network><name>n</name><uuid>x</uuid><forward mode='hostdev' managed='yes'>"
              "<address type='pci' domain='0' bus='59' slot='2' function='0'/></forward>"
              "</network>")
    assert libvirtd.same_network(ours, theirs)
    assert not libvirtd.same_network(ours, theirs.replace("slot='2'", "slot='3'"))
    macvtap = "<network><forward mode='passthrough'><interface dev='ens2f0'/></forward></network>"
    assert libvirtd.same_network(macvtap, macvtap.replace("<forward ", "<forward dev='ens2f0' "))
    assert not libvirtd.same_network(macvtap, macvtap.replace("ens2f0", "ens2f1"))
