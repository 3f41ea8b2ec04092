"""Migration to an equivalent device: unchanged domain XML, per-port networks, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from pt_helpers import INSTANCE, Fleet, virt_xml_validate
from sqlalchemy import select

from fleetboot.inventory.db import Database
from fleetboot.passthrough import claims, hosts, migration
from fleetboot.passthrough.errors import MigrationError
from fleetboot.passthrough.flavors import parse_requests
from fleetboot.passthrough.migration import MigrationPlan
from fleetboot.passthrough.models import PassthroughClaim, PassthroughDevice, PassthroughNetwork
from fleetboot.passthrough.networks import host_networks

# Port 0 must match both flavors: on b that is the X710 VF, not the E810 VF that
# sorts first and is physnet1 too. Port 1 is a macvtap passthrough NIC.
REQUESTS = parse_requests("1 x sriov-physnet1+x710-vf, 1 x mlx-netdev")


def _snapshot(db: Database) -> object:
    with db.session() as s:
        devices = [(d.host_id, d.address, d.state.value, d.present) for d in
                   s.scalars(select(PassthroughDevice).order_by(PassthroughDevice.id))]
        held = [(c.instance_uuid, c.device_id, c.port, c.state.value, c.incoming, c.mac,
                 tuple(c.flavors)) for c in
                s.scalars(select(PassthroughClaim).order_by(PassthroughClaim.device_id))]
        nets = [(n.host_id, n.name, n.device_id, n.xml) for n in
                s.scalars(select(PassthroughNetwork).order_by(PassthroughNetwork.id))]
    return devices, held, nets


def _networks(db: Database, host: str) -> dict[str, str]:
    with db.session() as s:
        return {n.name: n.xml for n in host_networks(s, hosts.get_host(s, host).id)}


def _running_instance(fleet: Fleet) -> str:
    claims.claim(fleet.db, INSTANCE, REQUESTS, host="compute-a")
    claims.attach(fleet.db, INSTANCE)
    return claims.instance_domain_xml(fleet.db, INSTANCE)


def test_migrate_to_equivalent_devices(fleet: Fleet, tmp_path: Path) -> None:
    before = _running_instance(fleet)
    source_nets = _networks(fleet.db, "compute-a")
    seen: list[MigrationPlan] = []
    result = migration.migrate(fleet.db, INSTANCE, "compute-b", transfer=seen.append)

    # The domain XML the guest carries is byte-identical.
    assert claims.instance_domain_xml(fleet.db, INSTANCE).encode() == before.encode()
    assert seen[0].domain_xml == before
    assert result.plan.moves == ((0, "0000:3b:02.0", "0000:18:02.0"),
                                 (1, "0000:5e:00.0", "0000:d8:00.0"))
    # Same network names on the target, holding the target's equivalent devices.
    target_nets = _networks(fleet.db, "compute-b")
    assert sorted(target_nets) == sorted(source_nets) == [f"fb-{INSTANCE}-p0", f"fb-{INSTANCE}-p1"]
    assert 'bus="0x18" slot="0x02" function="0x0"' in target_nets[f"fb-{INSTANCE}-p0"]
    assert 'dev="ens6f0"' in target_nets[f"fb-{INSTANCE}-p1"]
    assert dict(result.plan.target_networks) == target_nets
    # The source is cleaned up: devices free, networks deleted.
    assert _networks(fleet.db, "compute-a") == {}
    assert sorted(result.released_networks) == sorted(source_nets)
    devices = claims.instance_devices(fleet.db, INSTANCE)
    assert [(d.host, d.address, d.state) for d in devices] == [
        ("compute-b", "0000:18:02.0", "allocated"), ("compute-b", "0000:d8:00.0", "allocated")]
    with fleet.db.session() as s:
        a = hosts.get_host(s, "compute-a")
        assert {d.state.value for d in a.devices} == {"available"}
        assert claims.instance_devices(fleet.db, INSTANCE, incoming=True) == []
    for xml in (before, *source_nets.values(), *target_nets.values()):
        virt_xml_validate(xml, "domain" if xml.startswith("<domain") else "network", tmp_path)
    # And back again: the XML still does not change.
    migration.migrate(fleet.db, INSTANCE, "compute-a")
    assert claims.instance_domain_xml(fleet.db, INSTANCE) == before


@pytest.mark.parametrize("step", [*migration.STEPS, "finalize"])
def test_failure_half_way_rolls_back(fleet: Fleet, step: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _running_instance(fleet)
    before = _snapshot(fleet.db)

    def fail(at: str) -> None:
        if at == step:
            raise RuntimeError(f"injected failure after {at}")

    if step == "finalize":
        # Fail inside the final transaction, after the source claims were freed in it.
        def broken_adopt(*_: object) -> None:
            raise RuntimeError("injected failure in finalize")
        monkeypatch.setattr(migration, "_adopt", broken_adopt)
    with pytest.raises(MigrationError, match="rolled back") as err:
        migration.migrate(fleet.db, INSTANCE, "compute-b", on_step=fail)
    assert "injected failure" in str(err.value)
    assert _snapshot(fleet.db) == before


def test_failed_transfer_rolls_back(fleet: Fleet) -> None:
    _running_instance(fleet)
    before = _snapshot(fleet.db)

    def transfer(plan: MigrationPlan) -> None:
        assert _networks(fleet.db, "compute-b")  # the target networks exist by now
        raise OSError("connection to the destination lost")

    with pytest.raises(MigrationError, match="failed at transfer: OSError: connection"):
        migration.migrate(fleet.db, INSTANCE, "compute-b", transfer=transfer)
    assert _snapshot(fleet.db) == before


def test_no_equivalent_device_on_target(fleet: Fleet) -> None:
    claims.claim(fleet.db, INSTANCE, parse_requests("3 x sriov-physnet1+x710-vf"),
                 host="compute-a")
    before = _snapshot(fleet.db)
    with pytest.raises(MigrationError, match=r"compute-b has no equivalent devices.*"
                       r"sriov-physnet1\+x710-vf \(network-hostdev\): needs 3, 2 usable"):
        migration.migrate(fleet.db, INSTANCE, "compute-b")
    assert _snapshot(fleet.db) == before


def test_refusals(fleet: Fleet) -> None:
    with pytest.raises(MigrationError, match="no passthrough devices"):
        migration.migrate(fleet.db, INSTANCE, "compute-b")
    claims.claim(fleet.db, INSTANCE, parse_requests("1 x gpu-a100, 1 x sriov-physnet1"),
                 host="compute-a")
    with pytest.raises(MigrationError, match="plain PCI hostdev"):
        migration.migrate(fleet.db, INSTANCE, "compute-b")
    claims.release(fleet.db, INSTANCE)
    claims.claim(fleet.db, INSTANCE, parse_requests("1 x sriov-physnet1"), host="compute-a")
    with pytest.raises(MigrationError, match="already on compute-a"):
        migration.migrate(fleet.db, INSTANCE, "compute-a")
    with pytest.raises(Exception, match="unknown host"):
        migration.migrate(fleet.db, INSTANCE, "compute-z")


def test_abort_interrupted_migration(fleet: Fleet) -> None:
    _running_instance(fleet)
    before = _snapshot(fleet.db)
    # A crash between steps leaves incoming claims behind; abort cleans them up.
    migration._claim_target(fleet.db, INSTANCE, "compute-b",
                            claims.instance_devices(fleet.db, INSTANCE))
    assert claims.instance_devices(fleet.db, INSTANCE, incoming=True)
    with pytest.raises(MigrationError, match="in progress"):
        migration.migrate(fleet.db, INSTANCE, "compute-b")
    assert len(migration.abort(fleet.db, INSTANCE)) == 2
    assert _snapshot(fleet.db) == before


def test_claimed_but_not_started_instance_migrates_as_claimed(fleet: Fleet) -> None:
    claims.claim(fleet.db, INSTANCE, REQUESTS, host="compute-a")
    migration.migrate(fleet.db, INSTANCE, "compute-b")
    assert {d.state for d in claims.instance_devices(fleet.db, INSTANCE)} == {"claimed"}
    assert _networks(fleet.db, "compute-b") == {}  # made by attach, as on the source
    assert len(claims.attach(fleet.db, INSTANCE).networks) == 2
