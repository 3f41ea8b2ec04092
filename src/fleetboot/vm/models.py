"""VM tables: instances with their pinned machine type and stored PCI layout,
their NICs, disks and other devices.

The layout (``Instance.layout``, JSON from :mod:`fleetboot.vm.planner`) is the
source of truth for *where* devices sit and for the guest-visible boot/ROM
choices; the rows here say *what* the devices are (model, MAC, backend, image).
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
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleetboot.inventory.db import Base


class VmStatus(enum.StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"
    MIGRATING = "migrating"


class NicBackend(enum.StrEnum):
    USER = "user"  # QEMU's user-mode network (slirp): no host setup, no inbound traffic
    TAP = "tap"  # an existing tap device, named in ``backend_target``
    BRIDGE = "bridge"  # Fleetboot creates one tap per QEMU process on this bridge


class DiskBus(enum.StrEnum):
    VIRTIO_BLK = "virtio-blk"
    VIRTIO_SCSI = "virtio-scsi"


class DeviceKind(enum.StrEnum):
    BALLOON = "balloon"
    RNG = "rng"
    SERIAL = "serial"  # isa-serial to a log file: no PCI slot
    PASSTHROUGH = "passthrough"  # vfio-pci, props {"host": "0000:03:00.0"}


def _now() -> datetime:
    return datetime.now().astimezone()


class VmHost(Base):
    """A machine that runs Fleetboot's QEMU processes, a live migration's other end.

    Fleetboot starts QEMU there itself, so a host is where it can execute: this
    machine, or a network namespace of it (``netns``: the tests' second host).
    ``address`` is what a migration and its disk copy (NBD) connect to.
    """

    __tablename__ = "vm_hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    address: Mapped[str] = mapped_column(String(64))
    netns: Mapped[str | None] = mapped_column(String(63))
    run_dir: Mapped[str] = mapped_column(String(255))
    image_dir: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Instance(Base):
    __tablename__ = "vm_instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    family: Mapped[str] = mapped_column(String(8))  # pc | q35
    # The full versioned type (pc-q35-7.2), pinned at creation: the guest ABI must not
    # change under a QEMU upgrade, a restart or a migration.
    machine_type: Mapped[str] = mapped_column(String(32))
    accel: Mapped[str] = mapped_column(String(16), default="tcg")
    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    # Guest firmware (fleetboot.vm.firmware.Firmware), part of the guest ABI like the
    # machine type: fixed at creation. Rows from before this column read as bios.
    firmware: Mapped[str] = mapped_column(String(8), default="bios", server_default="bios")
    # A UEFI VM's own OVMF variable store (boot entries), kept until the VM is deleted.
    uefi_vars: Mapped[str | None] = mapped_column(String(1024))
    extra_args: Mapped[list[str]] = mapped_column(JSON, default=list)
    layout: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=VmStatus.STOPPED.value)
    # Runtime facts of the QEMU process, empty while stopped.
    pid: Mapped[int | None] = mapped_column(Integer)
    qmp_socket: Mapped[str | None] = mapped_column(String(255))
    netns: Mapped[str | None] = mapped_column(String(63))  # run QEMU inside this namespace
    # The VM host QEMU runs on (vm_hosts.name); none: this machine.
    host: Mapped[str | None] = mapped_column(
        String(63), ForeignKey("vm_hosts.name", ondelete="RESTRICT"))
    generation: Mapped[int] = mapped_column(Integer, default=0)  # bumped per QEMU process
    # While migrating: the destination process ({"pid": .., "qmp_socket": ..}), so a
    # command interrupted half-way can be cleaned up by the next one.
    migration_target: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )

    nics: Mapped[list[Nic]] = relationship(
        back_populates="instance", cascade="all, delete-orphan", order_by="Nic.id"
    )
    disks: Mapped[list[Disk]] = relationship(
        back_populates="instance", cascade="all, delete-orphan", order_by="Disk.id"
    )
    devices: Mapped[list[Device]] = relationship(
        back_populates="instance", cascade="all, delete-orphan", order_by="Device.id"
    )


class Nic(Base):
    __tablename__ = "vm_nics"
    __table_args__ = (
        UniqueConstraint("instance_id", "device_id"),
        # At most one designated boot NIC per instance (partial unique index).
        Index(
            "uq_vm_nics_one_boot_per_instance",
            "instance_id",
            unique=True,
            sqlite_where=text("is_boot"),
            postgresql_where=text("is_boot"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("vm_instances.id", ondelete="CASCADE"), index=True
    )
    device_id: Mapped[str] = mapped_column(String(32))  # the QEMU id, e.g. net0
    model: Mapped[str] = mapped_column(String(32), default="virtio-net-pci")
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    backend: Mapped[str] = mapped_column(String(16), default=NicBackend.USER.value)
    backend_target: Mapped[str | None] = mapped_column(String(63))  # tap or bridge name
    is_boot: Mapped[bool] = mapped_column(Boolean, default=False)
    rom: Mapped[str | None] = mapped_column(String(255))  # a custom ROM for the boot NIC

    instance: Mapped[Instance] = relationship(back_populates="nics")


class Disk(Base):
    __tablename__ = "vm_disks"
    __table_args__ = (UniqueConstraint("instance_id", "device_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("vm_instances.id", ondelete="CASCADE"), index=True
    )
    device_id: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16), default="qcow2")
    bus: Mapped[str] = mapped_column(String(16), default=DiskBus.VIRTIO_BLK.value)
    boot: Mapped[bool] = mapped_column(Boolean, default=False)
    # Only images Fleetboot made are deleted when a hotplug is rolled back.
    created_image: Mapped[bool] = mapped_column(Boolean, default=True)

    instance: Mapped[Instance] = relationship(back_populates="disks")


class Device(Base):
    """Balloon, rng, serial console, or a passthrough function (see fleetboot.passthrough)."""

    __tablename__ = "vm_devices"
    __table_args__ = (UniqueConstraint("instance_id", "device_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("vm_instances.id", ondelete="CASCADE"), index=True
    )
    device_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    props: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    instance: Mapped[Instance] = relationship(back_populates="devices")
