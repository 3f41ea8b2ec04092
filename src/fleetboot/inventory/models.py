"""Inventory tables: nodes, their interfaces, boot profiles, subnets, pools,
reservations and leases.

Addresses are stored as text (dotted quad) and MACs as lowercase
colon-separated text, so both databases compare them the same way; the
in-memory hot state converts them to integers and bytes once at load.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleetboot.inventory.db import Base


class BootAction(enum.StrEnum):
    """What a node boots: its local disk, a named profile, or nothing yet (ask again)."""

    LOCAL = "local"
    PROFILE = "profile"
    WAIT = "wait"


class ProfileKind(enum.StrEnum):
    KERNEL = "kernel"  # kernel + initrd + command line
    IPXE = "ipxe"  # a whole iPXE script


def _now() -> datetime:
    return datetime.now().astimezone()


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    arch: Mapped[str] = mapped_column(String(32), default="x86_64")
    # The three levels of "what do I boot": one-shot beats temporary beats default.
    default_action: Mapped[BootAction] = mapped_column(
        Enum(BootAction, native_enum=False, length=16), default=BootAction.LOCAL
    )
    default_profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("boot_profiles.id", ondelete="RESTRICT")
    )
    temp_action: Mapped[BootAction | None] = mapped_column(
        Enum(BootAction, native_enum=False, length=16)
    )
    temp_profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("boot_profiles.id", ondelete="RESTRICT")
    )
    next_action: Mapped[BootAction | None] = mapped_column(
        Enum(BootAction, native_enum=False, length=16)
    )
    next_profile_id: Mapped[int | None] = mapped_column(
        ForeignKey("boot_profiles.id", ondelete="RESTRICT")
    )
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    interfaces: Mapped[list[Interface]] = relationship(
        back_populates="node", cascade="all, delete-orphan", order_by="Interface.id"
    )
    default_profile: Mapped[BootProfile | None] = relationship(foreign_keys=[default_profile_id])
    temp_profile: Mapped[BootProfile | None] = relationship(foreign_keys=[temp_profile_id])
    next_profile: Mapped[BootProfile | None] = relationship(foreign_keys=[next_profile_id])

    @property
    def boot_interface(self) -> Interface | None:
        return next((i for i in self.interfaces if i.is_boot), None)


class Interface(Base):
    __tablename__ = "interfaces"
    __table_args__ = (
        # Exactly one designated boot interface per node (partial unique index).
        Index(
            "uq_interfaces_one_boot_per_node",
            "node_id",
            unique=True,
            sqlite_where=text("is_boot"),
            postgresql_where=text("is_boot"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32), default="")
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    is_boot: Mapped[bool] = mapped_column(Boolean, default=False)

    node: Mapped[Node] = relationship(back_populates="interfaces")


class BootProfile(Base):
    __tablename__ = "boot_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[ProfileKind] = mapped_column(
        Enum(ProfileKind, native_enum=False, length=16), default=ProfileKind.KERNEL
    )
    kernel: Mapped[str | None] = mapped_column(String(255))
    initrd: Mapped[str | None] = mapped_column(String(255))
    cmdline: Mapped[str] = mapped_column(Text, default="")
    script: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Subnet(Base):
    __tablename__ = "subnets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    cidr: Mapped[str] = mapped_column(String(18), unique=True)
    router: Mapped[str | None] = mapped_column(String(15))
    dns_servers: Mapped[list[str]] = mapped_column(JSON, default=list)
    domain: Mapped[str | None] = mapped_column(String(253))
    lease_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    # The TFTP/HTTP server nodes on this subnet boot from (siaddr / next-server).
    next_server: Mapped[str | None] = mapped_column(String(15))
    mtu: Mapped[int | None] = mapped_column(Integer)

    pools: Mapped[list[Pool]] = relationship(
        back_populates="subnet", cascade="all, delete-orphan", order_by="Pool.id"
    )
    reservations: Mapped[list[Reservation]] = relationship(
        back_populates="subnet", cascade="all, delete-orphan", order_by="Reservation.id"
    )


class Pool(Base):
    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(primary_key=True)
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id", ondelete="CASCADE"))
    start: Mapped[str] = mapped_column(String(15))
    end: Mapped[str] = mapped_column(String(15))

    subnet: Mapped[Subnet] = relationship(back_populates="pools")


class Reservation(Base):
    """A static address for a MAC (node interface or not)."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(primary_key=True)
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets.id", ondelete="CASCADE"))
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    address: Mapped[str] = mapped_column(String(15), unique=True)
    hostname: Mapped[str | None] = mapped_column(String(63))

    subnet: Mapped[Subnet] = relationship(back_populates="reservations")


class Lease(Base):
    """A bound DHCP lease. Written in batches by the lease journal, never per packet."""

    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(15))
    mac: Mapped[str] = mapped_column(String(17), index=True)
    client_id: Mapped[str | None] = mapped_column(String(255))
    hostname: Mapped[str | None] = mapped_column(String(63))
    subnet_id: Mapped[int | None] = mapped_column(ForeignKey("subnets.id", ondelete="SET NULL"))
    starts: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InventoryRevision(Base):
    """A single-row counter bumped by every inventory change (see ``inventory.changes``).

    Running servers poll it (one indexed read a second) and rebuild their
    in-memory views when it moves, so the CLI can write the database directly
    and a running server still notices.
    """

    __tablename__ = "inventory_revision"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


# --- IPv6 (DHCPv6 and router advertisements) ---------------------------------------------------
# Separate tables: IPv6 prefixes, DUIDs and (DUID, IAID) leases share nothing with the
# IPv4 columns. Nodes and interfaces are shared: a node's MAC identifies it in both.


class Subnet6(Base):
    __tablename__ = "subnets6"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    prefix: Mapped[str] = mapped_column(String(43), unique=True)  # fd00:77::/64
    dns_servers: Mapped[list[str]] = mapped_column(JSON, default=list)
    domains: Mapped[list[str]] = mapped_column(JSON, default=list)  # option 24 search list
    preferred_seconds: Mapped[int] = mapped_column(Integer, default=3000)
    valid_seconds: Mapped[int] = mapped_column(Integer, default=3600)

    pools: Mapped[list[Pool6]] = relationship(
        back_populates="subnet", cascade="all, delete-orphan", order_by="Pool6.id"
    )
    reservations: Mapped[list[Reservation6]] = relationship(
        back_populates="subnet", cascade="all, delete-orphan", order_by="Reservation6.id"
    )


class Pool6(Base):
    __tablename__ = "pools6"

    id: Mapped[int] = mapped_column(primary_key=True)
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets6.id", ondelete="CASCADE"))
    start: Mapped[str] = mapped_column(String(39))
    end: Mapped[str] = mapped_column(String(39))

    subnet: Mapped[Subnet6] = relationship(back_populates="pools")


class Reservation6(Base):
    """A static IPv6 address for a client DUID, or for a MAC (a node interface)."""

    __tablename__ = "reservations6"

    id: Mapped[int] = mapped_column(primary_key=True)
    subnet_id: Mapped[int] = mapped_column(ForeignKey("subnets6.id", ondelete="CASCADE"))
    duid: Mapped[str | None] = mapped_column(String(390), unique=True)  # aa:bb:.. hex
    mac: Mapped[str | None] = mapped_column(String(17), unique=True)
    address: Mapped[str] = mapped_column(String(39), unique=True)
    hostname: Mapped[str | None] = mapped_column(String(63))

    subnet: Mapped[Subnet6] = relationship(back_populates="reservations")


class Lease6(Base):
    """A bound DHCPv6 lease (one per DUID and IAID). Written in batches by the lease journal."""

    __tablename__ = "leases6"
    __table_args__ = (UniqueConstraint("address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(39))
    duid: Mapped[str] = mapped_column(String(260), index=True)  # plain hex
    iaid: Mapped[int] = mapped_column(BigInteger)
    mac: Mapped[str | None] = mapped_column(String(17), index=True)
    hostname: Mapped[str | None] = mapped_column(String(63))
    subnet_id: Mapped[int | None] = mapped_column(ForeignKey("subnets6.id", ondelete="SET NULL"))
    starts: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))
