"""Claiming devices for instances: scheduling, atomic claims, attach, release.

How a claim stays atomic on SQLite and PostgreSQL alike:

1. An unlocked look at every host picks the hosts that fit (best first).
2. For the chosen host, one transaction takes the host's row lock
   (:func:`hosts.lock_host`), re-reads the devices, plans again and flips each
   chosen device with ``UPDATE ... SET state='claimed' WHERE id=? AND
   state='available' AND present`` checking that exactly one row changed.
   Under READ COMMITTED every statement after the lock sees the previous
   claimer's commit; SQLite has one writer at a time anyway.
3. The claim row's unique ``device_id`` would still refuse a double claim, and
   an invariant check (no PF in use together with one of its VFs) runs before
   commit. If the host no longer fits (another claim won), the next host is tried.

Device states go available -> claimed (:func:`claim`) -> allocated
(:func:`attach`) -> available (:func:`release`).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Update, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleetboot.inventory.db import Database
from fleetboot.passthrough import catalog, hosts
from fleetboot.passthrough.errors import ClaimError, NoHostError
from fleetboot.passthrough.flavors import DeviceRequest, Flavor, format_requests
from fleetboot.passthrough.libvirt_xml import PortSpec, devices_xml, domain_xml, port_mac
from fleetboot.passthrough.models import (
    IN_USE,
    ClaimState,
    DeviceState,
    PassthroughClaim,
    PassthroughDevice,
    PassthroughHost,
)
from fleetboot.passthrough.networks import define_network, delete_networks_of
from fleetboot.passthrough.pci import PciAddress
from fleetboot.passthrough.placement import (
    HOSTDEV,
    Candidate,
    HostChoice,
    Placement,
    Slot,
    choose_host,
    place,
    slots_for,
)


def normalize_uuid(text: str) -> str:
    try:
        return str(uuidlib.UUID(str(text)))
    except ValueError:
        raise ClaimError(f"{text!r} is not an instance UUID (like "
                         "123e4567-e89b-12d3-a456-426614174000)") from None


@dataclass(frozen=True)
class ClaimedDevice:
    port: int
    host: str
    address: str
    kind: str
    flavors: tuple[str, ...]
    state: str
    mac: str | None
    numa_node: int | None
    netdev: str | None
    incoming: bool = False

    def port_spec(self, guest_address: PciAddress | None = None) -> PortSpec:
        return PortSpec(self.port, self.kind, self.address, self.netdev, self.mac, guest_address)


@dataclass(frozen=True)
class ClaimResult:
    instance_uuid: str
    host: str
    devices: tuple[ClaimedDevice, ...]
    numa_aligned: bool


def _view(claim: PassthroughClaim) -> ClaimedDevice:
    dev = claim.device
    return ClaimedDevice(
        port=claim.port, host=dev.host.name, address=dev.address, kind=claim.kind,
        flavors=tuple(claim.flavors), state=claim.state.value, mac=claim.mac,
        numa_node=dev.numa_node, netdev=dev.netdevs[0] if dev.netdevs else None,
        incoming=claim.incoming,
    )


# ---------------------------------------------------------------- reading


def claims_of(
    session: Session, instance_uuid: str, incoming: bool = False
) -> list[PassthroughClaim]:
    """The instance's claims (``incoming``: a running migration's target side), by port.

    Always re-read from the database (``populate_existing``): callers read after
    taking a host lock and must not see rows cached before it.
    """
    stmt = (select(PassthroughClaim)
            .where(PassthroughClaim.instance_uuid == instance_uuid,
                   PassthroughClaim.incoming == incoming)
            .order_by(PassthroughClaim.port)
            .execution_options(populate_existing=True))
    return list(session.scalars(stmt))


def instance_devices(db: Database, instance_uuid: str, incoming: bool = False
                     ) -> list[ClaimedDevice]:
    with db.session() as session:
        return [_view(c) for c in claims_of(session, normalize_uuid(instance_uuid), incoming)]


def _hosts_of(session: Session, instance_uuid: str, incoming: bool | None = None) -> list[int]:
    stmt = (select(PassthroughDevice.host_id).join(PassthroughClaim)
            .where(PassthroughClaim.instance_uuid == instance_uuid).distinct())
    if incoming is not None:
        stmt = stmt.where(PassthroughClaim.incoming == incoming)
    return sorted(session.scalars(stmt))


def host_candidates(
    session: Session, host: PassthroughHost, flavors: Sequence[Flavor]
) -> list[Candidate]:
    return hosts.candidates(session, flavors, [host.name])[host.name]


# ---------------------------------------------------------------- claiming


def schedule(
    db: Database, requests: Sequence[DeviceRequest], host: str | None = None,
    numa_node: int | None = None,
) -> tuple[list[HostChoice], dict[str, list[str]]]:
    """Which hosts fit ``requests`` (best first) and why the others don't; claims nothing."""
    return _look(db, requests, host, numa_node, usable_only=False)


def _look(
    db: Database, requests: Sequence[DeviceRequest], host: str | None,
    numa_node: int | None, usable_only: bool,
) -> tuple[list[HostChoice], dict[str, list[str]]]:
    with db.session() as session:
        flavors = catalog.list_flavors(session)
        catalog.require_known(flavors, (n for r in requests for n in r.flavors))
        names = [host] if host else [h.name for h in hosts.list_hosts(session)]
        if host:
            hosts.get_host(session, host)
        pools = hosts.candidates(session, flavors, names, usable_only)
    return choose_host(pools, slots_for(requests), numa_node)


def claim(
    db: Database,
    instance_uuid: str,
    requests: Sequence[DeviceRequest],
    *,
    host: str | None = None,
    numa_node: int | None = None,
) -> ClaimResult:
    """Claim devices for every request on one host, or raise :class:`NoHostError` saying why.

    An instance that already holds devices gets the new ones on the same host.
    """
    uid = normalize_uuid(instance_uuid)
    with db.session() as session:
        here = _current_host(session, uid)
    if here and host and host != here:
        raise ClaimError(f"instance {uid} holds devices on {here}; more can only be "
                         f"claimed there (not on {host})")
    host = here or host
    fits, _ = _look(db, requests, host, numa_node, usable_only=True)
    for choice in fits:
        result = _claim_on(db, choice.host, uid, requests, numa_node)
        if result is not None:
            return result
    # Nothing fits (or every fitting host was taken since the look): say why, per host.
    _, refusals = _look(db, requests, host, numa_node, usable_only=False)
    raise NoHostError(_no_host_message(requests, refusals), refusals)


def _current_host(session: Session, uid: str) -> str | None:
    """The host the instance's devices are on (None: it holds none)."""
    if claims_of(session, uid, incoming=True):
        raise ClaimError(f"instance {uid} is being migrated; finish or abort that first")
    current = claims_of(session, uid)
    return current[0].device.host.name if current else None


def _no_host_message(requests: Sequence[DeviceRequest], refusals: Mapping[str, list[str]]) -> str:
    if not refusals:
        return (f"no host can take {format_requests(requests)}: no host is registered "
                "(run `fleetboot host scan NAME`)")
    per_host = " | ".join(f"{h}: {'; '.join(r)}" for h, r in sorted(refusals.items()))
    return f"no host can take {format_requests(requests)}: {per_host}"


def _claim_on(
    db: Database, host_name: str, uid: str, requests: Sequence[DeviceRequest],
    numa_node: int | None,
) -> ClaimResult | None:
    """Claim on one host under its lock; None if it no longer fits."""
    try:
        with db.session() as session:
            host = hosts.get_host(session, host_name)
            hosts.lock_host(session, host.id)
            # Re-read under the lock: ports continue the instance's own numbering.
            here = _current_host(session, uid)
            if here not in (None, host.name):
                return None
            held = claims_of(session, uid)
            slots = slots_for(requests, max((c.port for c in held), default=-1) + 1)
            flavors = catalog.list_flavors(session)
            cands = hosts.candidates(session, flavors, [host.name], usable_only=True)[host.name]
            placement = place(cands, slots, numa_node)
            if placement is None:
                return None
            claimed = apply_placement(session, host, uid, slots, placement)
            return ClaimResult(uid, host.name, tuple(_view(c) for c in claimed),
                               placement.numa_aligned)
    except IntegrityError:
        # Two claims for one instance raced on different hosts: the unique
        # (instance, port) refused the second; nothing of it was committed.
        raise ClaimError(f"another claim for instance {uid} ran at the same time; "
                         "retry") from None


def apply_placement(
    session: Session,
    host: PassthroughHost,
    uid: str,
    slots: Sequence[Slot],
    placement: Placement,
    *,
    incoming: bool = False,
    macs: Mapping[int, str | None] | None = None,
) -> list[PassthroughClaim]:
    """Flip the placed devices to ``claimed`` and record the claims (host lock held)."""
    made = []
    for slot in slots:
        cand = placement.assignment[slot.index]
        flipped = _rowcount(session, update(PassthroughDevice)
                            .where(PassthroughDevice.id == cand.id,
                                   PassthroughDevice.state == DeviceState.AVAILABLE,
                                   PassthroughDevice.present.is_(True))
                            .values(state=DeviceState.CLAIMED))
        if flipped != 1:
            raise ClaimError(f"{host.name} {cand.address} was taken by another claim; retry")
        if macs is not None:
            mac = macs.get(slot.index)
        else:
            mac = None if cand.kind == HOSTDEV else port_mac(uid, slot.index)
        claim_row = PassthroughClaim(
            instance_uuid=uid, device_id=cand.id, port=slot.index, flavors=list(slot.flavors),
            kind=cand.kind, mac=mac, state=ClaimState.CLAIMED, incoming=incoming,
        )
        session.add(claim_row)
        made.append(claim_row)
    session.flush()
    hosts.refresh_exclusion(session, host.id)
    check_exclusion(session, host.id)
    for row in made:
        session.refresh(row)
    return made


def _rowcount(session: Session, stmt: Update) -> int:
    """Run a conditional UPDATE; how many rows it changed is the test of success."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def check_exclusion(session: Session, host_id: int) -> None:
    """Refuse to commit a state where a PF and one of its VFs are both in use."""
    rows = session.execute(
        select(PassthroughDevice.address, PassthroughDevice.pf_address)
        .where(PassthroughDevice.host_id == host_id, PassthroughDevice.state.in_(IN_USE))
    ).all()
    in_use = {r.address for r in rows}
    clash = sorted(r.address for r in rows if r.pf_address in in_use)
    if clash:
        raise ClaimError(f"refusing to commit: VF(s) {', '.join(clash)} and their PF would "
                         "both be in use")


# ---------------------------------------------------------------- attach / release


@dataclass(frozen=True)
class Attachment:
    instance_uuid: str
    host: str
    devices: tuple[ClaimedDevice, ...]
    networks: tuple[tuple[str, str], ...]  # (name, network XML) to define on the host
    devices_xml: str  # the <hostdev>/<interface> elements for the domain


def lock_hosts_of(session: Session, uid: str, incoming: bool | None) -> list[int]:
    host_ids = _hosts_of(session, uid, incoming)
    for host_id in host_ids:  # ascending id: a fixed lock order
        hosts.lock_host(session, host_id)
    return host_ids


def attach(db: Database, instance_uuid: str) -> Attachment:
    """Mark the instance's claimed devices allocated and define their networks."""
    uid = normalize_uuid(instance_uuid)
    with db.session() as session:
        lock_hosts_of(session, uid, incoming=False)
        claims = claims_of(session, uid)
        if not claims:
            raise ClaimError(f"instance {uid} has no devices; claim some with "
                             "`fleetboot vm claim`")
        networks = []
        for row in claims:
            if row.state == ClaimState.CLAIMED:
                allocate(session, row)
            if row.kind != HOSTDEV:
                net = define_network(session, uid, row.port, row.device, row.kind)
                networks.append((net.name, net.xml))
        views = tuple(_view(c) for c in claims)
        return Attachment(uid, views[0].host, views, tuple(networks),
                          devices_xml(uid, [v.port_spec() for v in views]))


def allocate(session: Session, row: PassthroughClaim) -> None:
    flipped = _rowcount(session, update(PassthroughDevice)
                        .where(PassthroughDevice.id == row.device_id,
                               PassthroughDevice.state == DeviceState.CLAIMED,
                               PassthroughDevice.present.is_(True),
                               PassthroughDevice.host_use.is_(None))
                        .values(state=DeviceState.ALLOCATED))
    if flipped != 1 and not row.device.present:
        raise ClaimError(
            f"{row.device.address} on {row.device.host.name} is absent (the last scan did not "
            f"find it): release it with `fleetboot vm release {row.instance_uuid}` and claim "
            "again, or rescan the host once the device is back")
    if flipped != 1 and row.device.host_use:
        raise ClaimError(f"{row.device.address} on {row.device.host.name} is used by the host "
                         f"({row.device.host_use}); release it with `fleetboot vm release "
                         f"{row.instance_uuid}`")
    if flipped != 1:
        raise ClaimError(f"{row.device.address} is no longer claimed for {row.instance_uuid}")
    row.state = ClaimState.ALLOCATED


def release(db: Database, instance_uuid: str, *, incoming: bool = False) -> list[str]:
    """Free the instance's devices (``incoming``: only a migration's target side).

    Deletes every network the freed devices are members of. Returns the freed
    addresses as ``host address``.
    """
    uid = normalize_uuid(instance_uuid)
    with db.session() as session:
        host_ids = lock_hosts_of(session, uid, incoming)
        claims = claims_of(session, uid, incoming)
        freed = [f"{c.device.host.name} {c.device.address}" for c in claims]
        free_claims(session, claims)
        for host_id in host_ids:
            hosts.refresh_exclusion(session, host_id)
        return freed


def free_claims(session: Session, claims: Sequence[PassthroughClaim]) -> list[str]:
    """Drop claims, free their devices and delete their networks (host locks held)."""
    device_ids = [c.device_id for c in claims]
    if not device_ids:
        return []
    deleted = delete_networks_of(session, device_ids)
    session.execute(delete(PassthroughClaim).where(PassthroughClaim.id.in_([c.id for c in claims]))
                    .execution_options(synchronize_session=False))
    session.execute(
        update(PassthroughDevice)
        .where(PassthroughDevice.id.in_(device_ids), PassthroughDevice.state.in_(IN_USE))
        .values(state=DeviceState.AVAILABLE, conflict=None)
        .execution_options(synchronize_session=False)
    )
    for row in claims:
        session.expunge(row)
    return deleted


# ---------------------------------------------------------------- domain XML


def instance_domain_xml(
    db: Database,
    instance_uuid: str,
    *,
    name: str | None = None,
    guest_addresses: Mapping[int, PciAddress] | None = None,
    incoming: bool = False,
) -> str:
    """A domain document holding the instance's passthrough devices (see libvirt_xml)."""
    uid = normalize_uuid(instance_uuid)
    devices = instance_devices(db, uid, incoming)
    return render_domain(uid, devices, name=name, guest_addresses=guest_addresses)


def render_domain(
    uid: str,
    devices: Sequence[ClaimedDevice],
    *,
    name: str | None = None,
    guest_addresses: Mapping[int, PciAddress] | None = None,
) -> str:
    addresses = guest_addresses or {}
    specs = [d.port_spec(addresses.get(d.port)) for d in devices]
    return domain_xml(name or f"instance-{uid}", uid, specs)
