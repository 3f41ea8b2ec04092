"""Hosts and their PCI devices in the inventory: scans, rescans, operator tags.

A rescan adds new devices, marks vanished ones absent (never deletes them, so
claims and tags survive a flapping device), updates what changed, and flags a
conflict on any device that is claimed but vanished or turned into something
else. Every write to a host's devices starts with :func:`lock_host`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetboot.inventory.db import Database
from fleetboot.passthrough import hostuse, sysfs
from fleetboot.passthrough.errors import HostError
from fleetboot.passthrough.flavors import (
    DeviceAttrs,
    Flavor,
    freeze_tags,
    matching_flavors,
    validate_name,
    validate_tag,
)
from fleetboot.passthrough.models import (
    IN_USE,
    DeviceState,
    PassthroughClaim,
    PassthroughDevice,
    PassthroughHost,
)
from fleetboot.passthrough.pci import normalize_address
from fleetboot.passthrough.placement import USABLE, Candidate, attach_kind

ABSENT = "absent"
BLOCKED = "blocked (its PF, a VF or an IOMMU group mate is in use)"
NOT_ALLOWED = "not allowed for passthrough (see `fleetboot host allow`)"
BRIDGE_CLASS_PREFIX = "0604"  # PCI bridges share groups harmlessly: never handed out


def _now() -> datetime:
    return datetime.now().astimezone()


def lock_host(session: Session, host_id: int) -> None:
    """Take the host's row lock for the rest of the transaction.

    Claims, releases and rescans of one host run one at a time, so each sees the
    others' committed results. Take host locks before any ORM flush and, for
    several hosts, in id order: that keeps lock order fixed (no deadlocks).
    """
    session.execute(
        update(PassthroughHost)
        .where(PassthroughHost.id == host_id)
        .values(generation=PassthroughHost.generation + 1)
    )


def get_host(session: Session, name: str) -> PassthroughHost:
    host = session.scalar(select(PassthroughHost).where(PassthroughHost.name == name))
    if host is None:
        raise HostError(f"unknown host {name!r}; register it with `fleetboot host scan {name}`")
    return host


def list_hosts(session: Session) -> list[PassthroughHost]:
    return list(session.scalars(select(PassthroughHost).order_by(PassthroughHost.name)))


# ---------------------------------------------------------------- scanning


@dataclass
class ScanReport:
    host: str
    devices: int = 0
    new_host: bool = False
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


_IDENTITY = ("vendor_id", "product_id", "class_code")
_FACTS = (
    *_IDENTITY, "subsystem_vendor_id", "subsystem_device_id", "driver", "numa_node",
    "iommu_group", "device_type", "pf_address", "sriov_totalvfs", "sriov_numvfs", "netdevs",
)


def _facts(dev: sysfs.PciDevice) -> dict[str, object]:
    return {
        "vendor_id": dev.vendor_id, "product_id": dev.product_id, "class_code": dev.class_code,
        "subsystem_vendor_id": dev.subsystem_vendor_id,
        "subsystem_device_id": dev.subsystem_device_id, "driver": dev.driver,
        "numa_node": dev.numa_node, "iommu_group": dev.iommu_group,
        "device_type": dev.device_type, "pf_address": dev.physfn,
        "sriov_totalvfs": dev.sriov_totalvfs, "sriov_numvfs": dev.sriov_numvfs,
        "netdevs": list(dev.netdevs),
    }


def scan_host(
    db: Database, name: str, root: str | os.PathLike[str] = "/sys", now: datetime | None = None,
    proc_root: str | os.PathLike[str] | None = None,
) -> ScanReport:
    """Read ``root`` (outside any transaction) and record it as host ``name``.

    ``proc_root`` is the same host's ``/proc`` (mounts, routes); by default
    ``/proc`` when ``root`` is this machine's ``/sys``, else none.
    """
    validate_name(name, "host")
    result = sysfs.scan(root)
    if proc_root is None and os.path.realpath(root) == "/sys":
        proc_root = "/proc"
    uses = hostuse.host_use(root, proc_root) if proc_root is not None else (
        hostuse.console_devices(Path(root)))
    with db.session() as session:
        return record_scan(session, name, result, now or _now(), uses)


def _group_uses(devices: Sequence[sysfs.PciDevice], uses: Mapping[str, str]) -> dict[str, str]:
    """Host uses, spread over IOMMU groups: vfio takes a whole group or nothing."""
    groups = {d.address: d.iommu_group for d in devices
              if not d.class_code.startswith(BRIDGE_CLASS_PREFIX)}
    spread = dict(uses)
    for address, reason in uses.items():
        for mate in hostuse.group_mates(groups, address):
            spread.setdefault(mate, f"shares IOMMU group {groups[address]} with {address}, "
                                    f"which the host uses ({reason})")
    return spread


def record_scan(
    session: Session, name: str, result: sysfs.ScanResult, now: datetime,
    uses: Mapping[str, str] | None = None,
) -> ScanReport:
    host = session.scalar(select(PassthroughHost).where(PassthroughHost.name == name))
    new_host = host is None
    if host is None:
        host = PassthroughHost(name=name, sysfs_root=result.root)
        session.add(host)
        session.flush()
    lock_host(session, host.id)
    session.refresh(host)
    report = ScanReport(name, devices=len(result.devices), new_host=new_host,
                        problems=list(result.problems))
    rows = {d.address: d for d in host.devices}
    host_uses = _group_uses(result.devices, uses or {})
    seen = set()
    for dev in result.devices:
        seen.add(dev.address)
        row = rows.get(dev.address)
        if row is None:
            row = PassthroughDevice(address=dev.address, **_facts(dev), first_seen=now,
                                    last_seen=now)
            host.devices.append(row)
            report.added.append(dev.address)
        else:
            _update_row(row, dev, now, report)
        row.host_use = host_uses.get(dev.address)
        if row.host_use and row.state in IN_USE:
            row.conflict = f"claimed device is used by the host: {row.host_use}"
            report.conflicts.append(f"{dev.address}: {row.conflict}")
    for address, row in sorted(rows.items()):
        if address not in seen and row.present:
            row.present = False
            report.vanished.append(address)
            if row.state in IN_USE:
                row.conflict = f"claimed device vanished from the host (scan at {now:%F %T})"
                report.conflicts.append(f"{address}: {row.conflict}")
    host.sysfs_root = result.root
    host.scanned_at = now
    session.flush()
    refresh_exclusion(session, host.id)
    return report


def _update_row(row: PassthroughDevice, dev: sysfs.PciDevice, now: datetime,
                report: ScanReport) -> None:
    facts = _facts(dev)
    changed = [k for k in _FACTS if getattr(row, k) != facts[k]]
    if not row.present:
        report.returned.append(dev.address)
    elif changed:
        report.updated.append(f"{dev.address}: {', '.join(changed)}")
    if row.state in IN_USE and any(k in changed for k in _IDENTITY):
        row.conflict = (f"claimed device changed identity: was {row.vendor_id}:{row.product_id}"
                        f" class {row.class_code}, now {dev.vendor_id}:{dev.product_id} "
                        f"class {dev.class_code}")
        report.conflicts.append(f"{dev.address}: {row.conflict}")
    elif row.present is False and row.state in IN_USE and row.conflict:
        row.conflict = None  # it came back as the same device: the claim holds again
    for key in changed:
        setattr(row, key, facts[key])
    row.present = True
    row.last_seen = now


def refresh_exclusion(session: Session, host_id: int) -> None:
    """Re-derive ``unavailable``: a PF with a VF in use, a VF whose PF is in use, and any
    other member of an IOMMU group one of whose devices is in use (vfio hands a group
    to one owner; bridges excepted).

    Idempotent; call it under the host lock after anything that changes use.
    """
    rows = session.execute(
        select(PassthroughDevice.id, PassthroughDevice.address, PassthroughDevice.pf_address,
               PassthroughDevice.state, PassthroughDevice.iommu_group,
               PassthroughDevice.class_code).where(PassthroughDevice.host_id == host_id)
    ).all()
    in_use = {r.address for r in rows if r.state in IN_USE}
    pfs_with_vfs_in_use = {r.pf_address for r in rows if r.pf_address and r.address in in_use}
    groups_in_use = {r.iommu_group for r in rows
                     if r.address in in_use and r.iommu_group is not None}
    blocked: list[int] = []
    free: list[int] = []
    for r in rows:
        if r.state in IN_USE:
            continue
        is_blocked = (r.address in pfs_with_vfs_in_use or (r.pf_address in in_use)
                      or (r.iommu_group in groups_in_use
                          and not r.class_code.startswith(BRIDGE_CLASS_PREFIX)))
        wanted = DeviceState.UNAVAILABLE if is_blocked else DeviceState.AVAILABLE
        if r.state != wanted:
            (blocked if is_blocked else free).append(r.id)
    for ids, state in ((blocked, DeviceState.UNAVAILABLE), (free, DeviceState.AVAILABLE)):
        if ids:
            session.execute(
                update(PassthroughDevice)
                .where(PassthroughDevice.id.in_(ids), PassthroughDevice.state.not_in(IN_USE))
                .values(state=state)
                .execution_options(synchronize_session="fetch")
            )


# ---------------------------------------------------------------- tags


def set_tags(
    db: Database, host: str, address: str, tags: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
) -> dict[str, str]:
    """Set/remove operator tags on one device (a PF's tags apply to its VFs too)."""
    address = normalize_address(address)
    with db.session() as session:
        row = get_device(session, get_host(session, host), address)
        new = dict(row.tags)
        for key in remove:
            if new.pop(key, None) is None:
                raise HostError(f"{host} {address} has no tag {key!r}")
        new.update(dict(validate_tag(k, v) for k, v in (tags or {}).items()))
        row.tags = new  # a new dict: JSON columns do not track in-place changes
        return new


def get_device(session: Session, host: PassthroughHost, address: str) -> PassthroughDevice:
    row = session.scalar(select(PassthroughDevice).where(
        PassthroughDevice.host_id == host.id, PassthroughDevice.address == address))
    if row is None:
        raise HostError(f"host {host.name} has no PCI device {address}; "
                        f"see `fleetboot host devices {host.name}`")
    return row


# ---------------------------------------------------------------- views


def device_attrs(row: PassthroughDevice, pf: PassthroughDevice | None) -> DeviceAttrs:
    tags = {**(pf.tags if pf is not None else {}), **row.tags}
    return DeviceAttrs(
        address=row.address, vendor_id=row.vendor_id, product_id=row.product_id,
        class_code=row.class_code, device_type=row.device_type, driver=row.driver,
        subsystem_vendor_id=row.subsystem_vendor_id,
        subsystem_device_id=row.subsystem_device_id, tags=freeze_tags(tags),
    )


def status(row: PassthroughDevice, allowed: bool = True) -> str:
    """``usable`` or why not, in the words shown to users."""
    return _status(row.present, row.state, row.host_use, allowed)


def _status(present: bool, state: DeviceState, host_use: str | None = None,
            allowed: bool = True) -> str:
    if not present:
        return ABSENT
    if host_use:
        return f"used by the host: {host_use}"
    if not allowed and state not in IN_USE:
        return NOT_ALLOWED
    if state == DeviceState.UNAVAILABLE:
        return BLOCKED
    if state in IN_USE:
        return state.value
    return USABLE


@dataclass(frozen=True)
class DeviceView:
    row: PassthroughDevice
    attrs: DeviceAttrs
    kind: str
    flavors: frozenset[str]
    status: str
    instance_uuid: str | None = None


def device_views(
    session: Session, host: PassthroughHost, flavors: Sequence[Flavor]
) -> list[DeviceView]:
    rows = list(session.scalars(select(PassthroughDevice)
                                .where(PassthroughDevice.host_id == host.id)
                                .order_by(PassthroughDevice.address)))
    by_address = {r.address: r for r in rows}
    owners = {row.device_id: row.instance_uuid for row in session.execute(
        select(PassthroughClaim.device_id, PassthroughClaim.instance_uuid)
        .join(PassthroughDevice).where(PassthroughDevice.host_id == host.id))}
    allow = allowlist(host)
    views = []
    for row in rows:
        attrs = device_attrs(row, by_address.get(row.pf_address or ""))
        views.append(DeviceView(row, attrs, attach_kind(row.device_type, row.class_code,
                                                        row.netdevs),
                                matching_flavors(attrs, flavors),
                                status(row, is_allowed(attrs, allow)), owners.get(row.id)))
    return views


def set_libvirt_uri(db: Database, host: str, uri: str) -> None:
    if "://" not in uri:
        raise HostError(f"libvirt URI {uri!r} is not like qemu+ssh://HOST/system or "
                        "qemu:///system")
    with db.session() as session:
        get_host(session, host).libvirt_uri = uri


# ---------------------------------------------------------------- the allowlist


def allowlist(host: PassthroughHost) -> list[Flavor]:
    return [Flavor.from_dict("allow", spec) for spec in host.allow or ()]


def is_allowed(attrs: DeviceAttrs, allow: Sequence[Flavor]) -> bool:
    return any(rule.matches(attrs) for rule in allow)


def allow_devices(db: Database, host: str, rule: Flavor) -> list[str]:
    """Add a rule (a flavor's criteria, copied: a later edit of the flavor does not widen
    it) to the host's allowlist; the addresses it matches."""
    with db.session() as session:
        row = get_host(session, host)
        spec = rule.to_dict()
        if spec not in row.allow:
            row.allow = [*row.allow, spec]  # a new list: JSON columns track assignment only
        return [v.row.address for v in device_views(session, row, [])
                if rule.matches(v.attrs)]


def disallow_devices(db: Database, host: str, index: int) -> dict[str, Any]:
    """Remove rule number ``index`` (1-based, as `host show` lists them)."""
    with db.session() as session:
        row = get_host(session, host)
        if not 1 <= index <= len(row.allow):
            raise HostError(f"host {host} has {len(row.allow)} allow rule(s); "
                            f"give a number from 1 to {len(row.allow)} (see `fleetboot host "
                            f"show {host}`)")
        rules = list(row.allow)
        removed = rules.pop(index - 1)
        row.allow = rules
        return removed


_CANDIDATE_COLUMNS = (
    PassthroughHost.name.label("host"), PassthroughDevice.id, PassthroughDevice.address,
    PassthroughDevice.vendor_id, PassthroughDevice.product_id, PassthroughDevice.class_code,
    PassthroughDevice.device_type, PassthroughDevice.driver,
    PassthroughDevice.subsystem_vendor_id, PassthroughDevice.subsystem_device_id,
    PassthroughDevice.tags, PassthroughDevice.pf_address, PassthroughDevice.numa_node,
    PassthroughDevice.netdevs, PassthroughDevice.state, PassthroughDevice.present,
    PassthroughDevice.host_use,
)


def candidates(
    session: Session,
    flavors: Sequence[Flavor],
    host_names: Sequence[str] | None = None,
    usable_only: bool = False,
) -> dict[str, list[Candidate]]:
    """The hosts' devices as the planner sees them, host name -> candidates.

    Plain-column queries (no ORM objects): this runs on every claim. With
    ``usable_only`` only free devices are read, so a claim costs what is left
    free, not the fleet's size; explanations of a refusal need all of them.
    """
    stmt = select(*_CANDIDATE_COLUMNS, PassthroughHost.allow.label("allow")).join(
        PassthroughHost).order_by(
        PassthroughHost.name, PassthroughDevice.address)
    pf_stmt = select(PassthroughHost.name, PassthroughDevice.address, PassthroughDevice.tags
                     ).join(PassthroughHost).where(PassthroughDevice.device_type == "pf")
    if host_names is not None:
        stmt = stmt.where(PassthroughHost.name.in_(host_names))
        pf_stmt = pf_stmt.where(PassthroughHost.name.in_(host_names))
    if usable_only:
        stmt = stmt.where(PassthroughDevice.state == DeviceState.AVAILABLE,
                          PassthroughDevice.present.is_(True),
                          PassthroughDevice.host_use.is_(None))
    rows = session.execute(stmt).all()
    # VFs inherit their PF's tags, whatever state the PF is in.
    pf_tags = {(r.name, r.address): r.tags for r in session.execute(pf_stmt)}
    out: dict[str, list[Candidate]] = {name: [] for name in host_names or ()}
    allow: dict[str, list[Flavor]] = {}
    for r in rows:
        tags = {**pf_tags.get((r.host, r.pf_address), {}), **r.tags} if r.pf_address else r.tags
        attrs = DeviceAttrs(
            address=r.address, vendor_id=r.vendor_id, product_id=r.product_id,
            class_code=r.class_code, device_type=r.device_type, driver=r.driver,
            subsystem_vendor_id=r.subsystem_vendor_id,
            subsystem_device_id=r.subsystem_device_id, tags=freeze_tags(tags),
        )
        if r.host not in allow:
            allow[r.host] = [Flavor.from_dict("allow", spec) for spec in r.allow or ()]
        rules = allow[r.host]
        out.setdefault(r.host, []).append(Candidate(
            id=r.id, address=r.address, flavors=matching_flavors(attrs, flavors),
            kind=attach_kind(r.device_type, r.class_code, r.netdevs), numa_node=r.numa_node,
            pf_address=r.pf_address, is_pf=r.device_type == "pf",
            status=_status(r.present, r.state, r.host_use, is_allowed(attrs, rules)),
        ))
    return out
