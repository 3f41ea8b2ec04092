"""Claims in the database: scheduling, overlap, PF/VF exclusion, concurrency, attach, release."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from pt_helpers import INSTANCE, OTHER, Fleet

from fleetboot.inventory.db import Database
from fleetboot.passthrough import catalog, claims, hosts, vmlayout
from fleetboot.passthrough.errors import ClaimError, FlavorError, NoHostError
from fleetboot.passthrough.flavors import Flavor, parse_requests
from fleetboot.passthrough.models import DeviceState, PassthroughClaim, PassthroughDevice

R = parse_requests


def _states(db: Database, host: str) -> dict[str, str]:
    with db.session() as s:
        h = hosts.get_host(s, host)
        return {d.address: d.state.value for d in h.devices}


def _add_flavor(db: Database, flavor: Flavor) -> None:
    with db.session() as s:
        catalog.add_flavor(s, flavor)


def test_claim_attach_release(fleet: Fleet) -> None:
    got = claims.claim(fleet.db, INSTANCE, R("2 x gpu-a100"))
    assert got.host == "compute-a" and got.numa_aligned  # only a has two GPUs, both on node 1
    assert [(d.port, d.address, d.state) for d in got.devices] == [
        (0, "0000:86:00.0", "claimed"), (1, "0000:af:00.0", "claimed")]
    att = claims.attach(fleet.db, INSTANCE)
    assert [d.state for d in att.devices] == ["allocated", "allocated"] and att.networks == ()
    assert _states(fleet.db, "compute-a")["0000:86:00.0"] == "allocated"
    assert [v.qemu_device() for v in vmlayout.vfio_devices(fleet.db, INSTANCE)] == [
        "vfio-pci,host=0000:86:00.0,id=ptdev0", "vfio-pci,host=0000:af:00.0,id=ptdev1"]
    assert claims.release(fleet.db, INSTANCE) == ["compute-a 0000:86:00.0",
                                                  "compute-a 0000:af:00.0"]
    assert set(_states(fleet.db, "compute-a").values()) == {"available"}
    assert claims.instance_devices(fleet.db, INSTANCE) == []


def test_network_ports_get_networks(fleet: Fleet) -> None:
    claims.claim(fleet.db, INSTANCE, R("1 x sriov-physnet1, 1 x mlx-netdev, 1 x gpu-a100"),
                 host="compute-a")
    att = claims.attach(fleet.db, INSTANCE)
    names = [n for n, _ in att.networks]
    assert names == [f"fb-{INSTANCE}-p0", f"fb-{INSTANCE}-p1"]
    assert 'mode="hostdev"' in att.networks[0][1] and 'dev="ens2f0"' in att.networks[1][1]
    assert claims.attach(fleet.db, INSTANCE).networks == att.networks  # idempotent
    # vfio: the VF and the GPU; the macvtap port is a NIC of the guest.
    assert [v.port for v in vmlayout.vfio_devices(fleet.db, INSTANCE)] == [0, 2]
    claims.release(fleet.db, INSTANCE)
    with fleet.db.session() as s:
        from fleetboot.passthrough.networks import host_networks
        assert host_networks(s, hosts.get_host(s, "compute-a").id) == []


def test_more_devices_later_stay_on_the_same_host(fleet: Fleet) -> None:
    claims.claim(fleet.db, INSTANCE, R("1 x gpu-a100"), host="compute-b")
    more = claims.claim(fleet.db, INSTANCE, R("1 x sriov-physnet1"))
    assert more.host == "compute-b" and [d.port for d in more.devices] == [1]
    with pytest.raises(NoHostError, match="gpu-a100: needs 1, 0 usable of 1 matching"):
        claims.claim(fleet.db, INSTANCE, R("1 x gpu-a100"))
    with pytest.raises(ClaimError, match="holds devices on compute-b"):
        claims.claim(fleet.db, INSTANCE, R("1 x gpu-a100"), host="compute-a")


def test_overlapping_flavors(fleet: Fleet) -> None:
    # On a, the four physnet1 VFs are also x710-vf; x710-vf must take the physnet2 ones.
    got = claims.claim(fleet.db, INSTANCE, R("4 x sriov-physnet1, 2 x x710-vf"), host="compute-a")
    by_port = {d.port: d.address for d in got.devices}
    assert sorted(by_port[p] for p in (0, 1, 2, 3)) == [f"0000:3b:02.{i}" for i in range(4)]
    assert sorted(by_port[p] for p in (4, 5)) == ["0000:3b:0a.0", "0000:3b:0a.1"]
    claims.release(fleet.db, INSTANCE)
    with pytest.raises(NoHostError) as err:
        claims.claim(fleet.db, INSTANCE, R("4 x sriov-physnet1, 3 x x710-vf"))
    assert "compute-a: each request alone fits, but not all together" in str(err.value)
    assert "compute-b: x710-vf: needs 3, 2 usable of 2 matching" in str(err.value)


def test_claimed_through_one_flavor_is_gone_from_all(fleet: Fleet) -> None:
    claims.claim(fleet.db, INSTANCE, R("4 x sriov-physnet1"), host="compute-a")
    with pytest.raises(NoHostError) as err:
        claims.claim(fleet.db, OTHER, R("3 x x710-vf"), host="compute-a")
    assert str(err.value).endswith("x710-vf: needs 3, 2 usable of 6 matching (4 claimed)")
    assert claims.claim(fleet.db, OTHER, R("2 x x710-vf"), host="compute-a").devices


def test_pf_and_vfs_exclude_each_other(fleet: Fleet) -> None:
    _add_flavor(fleet.db, Flavor.create("x710-pf", vendor="8086", products=["1572"],
                                        device_type="pf", tags={"physical_network": "physnet1"}))
    got = claims.claim(fleet.db, INSTANCE, R("1 x x710-pf"), host="compute-a")
    assert [d.address for d in got.devices] == ["0000:3b:00.0"]
    states = _states(fleet.db, "compute-a")
    assert {states[f"0000:3b:02.{i}"] for i in range(4)} == {"unavailable"}
    assert states["0000:3b:0a.0"] == "available"  # the other PF's VFs are untouched
    with pytest.raises(NoHostError,
                       match=r"4 blocked \(its PF, a VF or an IOMMU group mate is in use\)"):
        claims.claim(fleet.db, OTHER, R("1 x sriov-physnet1"), host="compute-a")
    claims.release(fleet.db, INSTANCE)
    # Now the other way round: a VF in use blocks its PF.
    claims.claim(fleet.db, OTHER, R("1 x sriov-physnet1"), host="compute-a")
    assert _states(fleet.db, "compute-a")["0000:3b:00.0"] == "unavailable"
    with pytest.raises(NoHostError, match="x710-pf: needs 1, 0 usable of 1 matching"):
        claims.claim(fleet.db, INSTANCE, R("1 x x710-pf"), host="compute-a")
    claims.release(fleet.db, OTHER)
    assert set(_states(fleet.db, "compute-a").values()) == {"available"}


def test_errors(fleet: Fleet) -> None:
    with pytest.raises(FlavorError, match=r"unknown flavor.*nope"):
        claims.claim(fleet.db, INSTANCE, R("1 x nope"))
    with pytest.raises(ClaimError, match="not an instance UUID"):
        claims.claim(fleet.db, "vm-1", R("1 x gpu-a100"))
    with pytest.raises(ClaimError, match="no devices"):
        claims.attach(fleet.db, INSTANCE)
    with pytest.raises(NoHostError, match="compute-b: gpu-a100: needs 3, 1 usable"):
        claims.claim(fleet.db, INSTANCE, R("3 x gpu-a100"))


def test_no_hosts(db: Database) -> None:
    with db.session() as s:
        catalog.add_flavor(s, Flavor.create("g", vendor="10de"))
    with pytest.raises(NoHostError, match="no host is registered"):
        claims.claim(db, INSTANCE, R("1 x g"))


def test_schedule_is_a_dry_run(fleet: Fleet) -> None:
    fits, refusals = claims.schedule(fleet.db, R("2 x gpu-a100"))
    assert [f.host for f in fits] == ["compute-a"] and list(refusals) == ["compute-b"]
    assert set(_states(fleet.db, "compute-a").values()) == {"available"}


def _invariants(db: Database) -> None:
    with db.session() as s:
        in_use = {d.id for d in s.query(PassthroughDevice).filter(
            PassthroughDevice.state.in_([DeviceState.CLAIMED, DeviceState.ALLOCATED]))}
        claimed = [c.device_id for c in s.query(PassthroughClaim)]
        assert len(claimed) == len(set(claimed)) and set(claimed) == in_use
        for host in hosts.list_hosts(s):
            claims.check_exclusion(s, host.id)


def _race(db: Database, requests: list[str], workers: int = 12) -> list[object]:
    def one(text: str) -> object:
        try:
            return claims.claim(db, str(uuid.uuid4()), R(text))
        except NoHostError as exc:
            return exc

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, requests))


def test_parallel_claims_never_double_allocate(fleet: Fleet) -> None:
    results = _race(fleet.db, ["1 x gpu-a100"] * 24)
    won = [r for r in results if isinstance(r, claims.ClaimResult)]
    assert len(won) == 3  # two GPUs on a, one on b
    assert len({(w.host, w.devices[0].address) for w in won}) == 3
    assert all(isinstance(r, NoHostError) for r in results if r not in won)
    _invariants(fleet.db)


def test_parallel_mixed_claims_keep_pf_vf_exclusion(fleet: Fleet) -> None:
    _add_flavor(fleet.db, Flavor.create("x710-pf", vendor="8086", products=["1572"],
                                        device_type="pf"))
    results = _race(fleet.db, ["1 x x710-pf", "1 x x710-vf", "2 x intel-nic",
                               "1 x sriov-physnet1"] * 8)
    won = [r for r in results if isinstance(r, claims.ClaimResult)]
    assert won and len(won) < len(results)
    _invariants(fleet.db)
    addresses = Counter((d.host, d.address) for w in won for d in w.devices)
    assert max(addresses.values()) == 1


def test_parallel_claims_for_one_instance_stay_on_one_host(fleet: Fleet) -> None:
    def one(_: int) -> object:
        try:
            return claims.claim(fleet.db, INSTANCE, R("1 x intel-nic"))
        except ClaimError as exc:  # NoHostError included
            return exc

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    held = claims.instance_devices(fleet.db, INSTANCE)
    assert len({d.host for d in held}) == 1
    assert sorted(d.port for d in held) == list(range(len(held)))
    assert len(held) == sum(isinstance(r, claims.ClaimResult) for r in results) > 0
    _invariants(fleet.db)
