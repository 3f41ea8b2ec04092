"""Passthrough tables: hosts, their PCI devices, flavors, claims and per-port networks.

Device rows are never deleted by a rescan: a vanished device is marked absent
so its claims and history stay; a returning device gets its row back.
A device's ``state`` is the single source of truth claims are made against
(conditional ``UPDATE ... WHERE state = 'available'``), and the unique
``device_id`` of claims is a second, database-enforced guard against handing
one device out twice.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleetboot.inventory.db import Base


def _now() -> datetime:
    return datetime.now().astimezone()


class DeviceState(enum.StrEnum):
    AVAILABLE = "available"
    CLAIMED = "claimed"  # reserved for an instance, not yet attached
    ALLOCATED = "allocated"  # attached to the instance
    # A PF one of whose VFs is in use, or a VF whose PF is in use.
    UNAVAILABLE = "unavailable"


IN_USE = (DeviceState.CLAIMED, DeviceState.ALLOCATED)


class ClaimState(enum.StrEnum):
    CLAIMED = "claimed"
    ALLOCATED = "allocated"


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class PassthroughHost(Base):
    __tablename__ = "passthrough_hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    sysfs_root: Mapped[str] = mapped_column(String(255), default="/sys")
    # Bumped first thing by every claim or rescan on this host: the row lock it
    # takes serialises them per host (PostgreSQL; SQLite locks the whole file).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    scanned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The host's libvirtd (qemu+ssh://host/system, ...); its per-port networks live there.
    libvirt_uri: Mapped[str | None] = mapped_column(String(255))
    # Which devices may be passed through at all: flavor-style matchers (as dicts);
    # nothing is allowed until the operator says so (like Nova's device_spec).
    allow: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    devices: Mapped[list[PassthroughDevice]] = relationship(
        back_populates="host", cascade="all, delete-orphan", order_by="PassthroughDevice.address"
    )


class PassthroughDevice(Base):
    __tablename__ = "passthrough_devices"
    __table_args__ = (UniqueConstraint("host_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(
        ForeignKey("passthrough_hosts.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(16))
    vendor_id: Mapped[str] = mapped_column(String(4))
    product_id: Mapped[str] = mapped_column(String(4))
    subsystem_vendor_id: Mapped[str | None] = mapped_column(String(4))
    subsystem_device_id: Mapped[str | None] = mapped_column(String(4))
    class_code: Mapped[str] = mapped_column(String(6))
    driver: Mapped[str | None] = mapped_column(String(64))
    numa_node: Mapped[int | None] = mapped_column(Integer)
    iommu_group: Mapped[int | None] = mapped_column(Integer)
    device_type: Mapped[str] = mapped_column(String(3), default="pci")  # pci, pf, vf
    pf_address: Mapped[str | None] = mapped_column(String(16), index=True)
    sriov_totalvfs: Mapped[int] = mapped_column(Integer, default=0)
    sriov_numvfs: Mapped[int] = mapped_column(Integer, default=0)
    netdevs: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Operator tags (physical_network=...); a VF inherits its PF's.
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[DeviceState] = mapped_column(_enum(DeviceState), default=DeviceState.AVAILABLE)
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    # Set by a rescan that found a claimed device gone or changed; cleared on release.
    conflict: Mapped[str | None] = mapped_column(Text)
    # Why the host itself needs it (a mounted disk, the default route, the console),
    # or the IOMMU group mate of such a device; set by scans. Never claimable.
    host_use: Mapped[str | None] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    host: Mapped[PassthroughHost] = relationship(back_populates="devices")


class PassthroughFlavor(Base):
    __tablename__ = "passthrough_flavors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class PassthroughClaim(Base):
    """A device held for an instance. ``incoming`` claims are a migration's target side."""

    __tablename__ = "passthrough_claims"
    # A port is one device of the instance (and one more while it migrates).
    __table_args__ = (UniqueConstraint("instance_uuid", "port", "incoming"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("passthrough_devices.id", ondelete="RESTRICT"), unique=True
    )
    port: Mapped[int] = mapped_column(Integer)  # the instance's slot index, kept for life
    flavors: Mapped[list[str]] = mapped_column(JSON, default=list)  # all requested through
    kind: Mapped[str] = mapped_column(String(24))
    mac: Mapped[str | None] = mapped_column(String(17))
    state: Mapped[ClaimState] = mapped_column(_enum(ClaimState), default=ClaimState.CLAIMED)
    incoming: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    device: Mapped[PassthroughDevice] = relationship()


class PassthroughNetwork(Base):
    """A libvirt network Fleetboot defined on a host for one port of one instance."""

    __tablename__ = "passthrough_networks"
    __table_args__ = (UniqueConstraint("host_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(
        ForeignKey("passthrough_hosts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(80))
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    port: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[int] = mapped_column(
        ForeignKey("passthrough_devices.id", ondelete="CASCADE"), index=True
    )
    forward_mode: Mapped[str] = mapped_column(String(16))
    xml: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    host: Mapped[PassthroughHost] = relationship()
    device: Mapped[PassthroughDevice] = relationship()
