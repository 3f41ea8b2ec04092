"""Moving an instance's passthrough ports to an equivalent device on another host.

The seeds/003 recipe: each network port is a per-instance network named from
the instance UUID and the port index. Before the guest moves, the target gets
a network of the same name holding *its* equivalent device, so the domain XML
travels unchanged. Steps (each one a transaction, each undone on failure):

1. ``target-claimed``: claim on the target, as ``incoming`` claims, a device
   per port that matches every flavor the port was requested through and
   reaches the guest the same way (VF hostdev stays VF hostdev, macvtap stays
   macvtap: the guest's driver must find the same kind of device).
2. ``target-networks``: define the same-named networks on the target, in the
   inventory and in the target's libvirtd.
3. ``transfer``: the runtime moves the guest (a callable; libvirt/QEMU's job).
4. ``verified``: the domain XML built from the target claims is byte-identical,
   and the target's libvirtd really holds each network with the target device.
5. finalize: target claims become the instance's claims, the source claims are
   released and the source networks deleted, in one transaction; then the
   source's libvirtd drops them.

A failure anywhere before the final commit releases the target claims and
deletes the target networks; the source is never touched until then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from fleetboot.inventory.db import Database
from fleetboot.passthrough import catalog, claims, hosts, libvirtd
from fleetboot.passthrough.claims import ClaimedDevice, normalize_uuid
from fleetboot.passthrough.errors import MigrationError, PassthroughError
from fleetboot.passthrough.models import ClaimState, PassthroughClaim
from fleetboot.passthrough.networks import define_network
from fleetboot.passthrough.placement import HOSTDEV, Slot, explain, place

STEPS = ("target-claimed", "target-networks", "transfer", "verified")


@dataclass(frozen=True)
class MigrationPlan:
    """What the runtime needs to move the guest: the XML and the target's networks."""

    instance_uuid: str
    source: str
    target: str
    domain_xml: str
    moves: tuple[tuple[int, str, str], ...]  # (port, source address, target address)
    target_networks: tuple[tuple[str, str], ...] = ()  # (name, XML)


@dataclass(frozen=True)
class MigrationResult:
    plan: MigrationPlan
    released_networks: tuple[str, ...]
    libvirt: tuple[libvirtd.SyncReport, ...] = ()  # target's, then source's


Transfer = Callable[[MigrationPlan], None]
StepHook = Callable[[str], None]


def _noop(_: object) -> None:
    return None


def migrate(
    db: Database,
    instance_uuid: str,
    target: str,
    *,
    transfer: Transfer = _noop,
    on_step: StepHook = _noop,
) -> MigrationResult:
    """Migrate the instance's passthrough ports to ``target``; roll back on any failure."""
    uid = normalize_uuid(instance_uuid)
    source_devices = _check_migratable(db, uid, target)
    source = source_devices[0].host
    source_xml = claims.render_domain(uid, source_devices)
    step = "target-claimed"
    try:
        moves = _claim_target(db, uid, target, source_devices)
        on_step(step)
        step = "target-networks"
        # A guest that was never started has no networks to mirror; attach makes them.
        running = any(d.state == ClaimState.ALLOCATED for d in source_devices)
        networks = _define_target_networks(db, uid) if running else ()
        target_sync = libvirtd.sync_networks(db, target)
        on_step(step)
        plan = MigrationPlan(uid, source, target, source_xml, moves, networks)
        step = "transfer"
        transfer(plan)
        on_step(step)
        step = "verified"
        _verify(db, uid, source_xml)
        problems = libvirtd.check_networks(db, target, [name for name, _ in networks])
        if problems:
            raise MigrationError("; ".join(problems))
        on_step(step)
        step = "finalize"
        released = _finalize(db, uid)
    except Exception as exc:
        raise _roll_back(db, uid, step, exc, target) from exc
    try:
        source_sync = libvirtd.sync_networks(db, source)
    except libvirtd.LibvirtError as exc:
        raise MigrationError(f"migrated to {target}, but removing the source's networks "
                             f"failed ({exc}): run `fleetboot host sync {source}`") from None
    return MigrationResult(plan, tuple(released), (target_sync, source_sync))


def abort(db: Database, instance_uuid: str) -> list[str]:
    """Undo an interrupted migration: free its target claims and networks."""
    return claims.release(db, instance_uuid, incoming=True)


def _check_migratable(db: Database, uid: str, target: str) -> list[ClaimedDevice]:
    if claims.instance_devices(db, uid, incoming=True):
        raise MigrationError(f"instance {uid} has a migration in progress; abort it with "
                             f"`fleetboot vm pci-migrate {uid} --abort`")
    devices = claims.instance_devices(db, uid)
    if not devices:
        raise MigrationError(f"instance {uid} holds no passthrough devices; nothing to migrate")
    if devices[0].host == target:
        raise MigrationError(f"instance {uid} is already on {target}")
    plain = [d.address for d in devices if d.kind == HOSTDEV]
    if plain:
        raise MigrationError(
            f"instance {uid} has plain PCI hostdev(s) {', '.join(plain)}: their host address is "
            "in the domain XML, so the XML cannot stay unchanged; release them and claim on "
            f"{target} instead (only network ports migrate to an equivalent device)")
    with db.session() as session:
        hosts.get_host(session, target)
    return devices


def _claim_target(
    db: Database, uid: str, target: str, source: list[ClaimedDevice]
) -> tuple[tuple[int, str, str], ...]:
    slots = [Slot(d.port, d.flavors, d.kind) for d in source]
    numa = next((d.numa_node for d in source if d.numa_node is not None), None)
    with db.session() as session:
        host = hosts.get_host(session, target)
        hosts.lock_host(session, host.id)
        flavors = catalog.list_flavors(session)
        catalog.require_known(flavors, (n for s in slots for n in s.flavors))
        cands = claims.host_candidates(session, host, flavors)
        placement = place(cands, slots, numa)
        if placement is None:
            raise MigrationError(f"{target} has no equivalent devices for instance {uid}: "
                                 + "; ".join(explain(cands, slots)))
        claims.apply_placement(session, host, uid, slots, placement, incoming=True,
                               macs={d.port: d.mac for d in source})
        by_port = {d.port: d.address for d in source}
        return tuple((port, by_port[port], cand.address)
                     for port, cand in sorted(placement.assignment.items()))


def _define_target_networks(db: Database, uid: str) -> tuple[tuple[str, str], ...]:
    with db.session() as session:
        target_ids = claims.lock_hosts_of(session, uid, incoming=True)
        rows = claims.claims_of(session, uid, incoming=True)
        if not target_ids or not rows:
            raise MigrationError(f"the target claims of {uid} disappeared mid-migration")
        nets = [define_network(session, uid, r.port, r.device, r.kind) for r in rows]
        return tuple((n.name, n.xml) for n in nets)


def _verify(db: Database, uid: str, source_xml: str) -> None:
    target_xml = claims.render_domain(uid, claims.instance_devices(db, uid, incoming=True))
    if target_xml != source_xml:
        raise MigrationError("the domain XML built on the target differs from the source's")


def _finalize(db: Database, uid: str) -> list[str]:
    with db.session() as session:
        host_ids = claims.lock_hosts_of(session, uid, incoming=None)
        source = claims.claims_of(session, uid)
        incoming = claims.claims_of(session, uid, incoming=True)
        was_allocated = any(c.state == ClaimState.ALLOCATED for c in source)
        released = claims.free_claims(session, source)
        session.flush()
        for row in incoming:
            _adopt(session, row, was_allocated)
        for host_id in host_ids:
            hosts.refresh_exclusion(session, host_id)
        return released


def _adopt(session: Session, row: PassthroughClaim, allocated: bool) -> None:
    row.incoming = False
    if allocated:
        claims.allocate(session, row)


def _roll_back(db: Database, uid: str, step: str, exc: Exception,
               target: str) -> MigrationError:
    """Undo the target side; return the error to raise (what failed, what was undone)."""
    cause = str(exc) if isinstance(exc, PassthroughError) else f"{type(exc).__name__}: {exc}"
    try:
        freed = claims.release(db, uid, incoming=True)
    except Exception as undo_exc:
        return MigrationError(
            f"migration of {uid} failed at {step} ({cause}) and the rollback failed too "
            f"({undo_exc}); run `fleetboot vm pci-migrate {uid} --abort`")
    try:
        libvirtd.sync_networks(db, target)
        leftover = ""
    except libvirtd.LibvirtError as sync_exc:
        leftover = (f"; {target}'s libvirtd may still hold them ({sync_exc}): run "
                    f"`fleetboot host sync {target}` once it answers")
    return MigrationError(
        f"migration of {uid} failed at {step}: {cause}; rolled back ({len(freed)} target "
        f"device(s) released, their networks deleted, source untouched){leftover}")
