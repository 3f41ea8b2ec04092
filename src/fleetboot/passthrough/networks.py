"""The libvirt networks Fleetboot manages: one per passthrough port of an instance.

A network is first an inventory row holding its XML (the truth); ``libvirtd.py``
makes each host's libvirtd hold exactly its rows. The rule from seeds/003:
when a device is freed, every network it is a member of is deleted.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fleetboot.passthrough.errors import ClaimError
from fleetboot.passthrough.libvirt_xml import network_name, network_xml
from fleetboot.passthrough.models import PassthroughDevice, PassthroughNetwork
from fleetboot.passthrough.placement import NETWORK_HOSTDEV

FORWARD_MODES = {NETWORK_HOSTDEV: "hostdev"}


def define_network(
    session: Session, instance_uuid: str, port: int, device: PassthroughDevice, kind: str
) -> PassthroughNetwork:
    """Define (idempotently) the port's network on the device's host, holding that device."""
    name = network_name(instance_uuid, port)
    existing = session.scalar(select(PassthroughNetwork).where(
        PassthroughNetwork.host_id == device.host_id, PassthroughNetwork.name == name))
    if existing is not None:
        if existing.device_id != device.id:
            raise ClaimError(f"network {name} on this host already holds another device "
                             f"({existing.device.address}); release instance {instance_uuid} "
                             "and claim again")
        return existing
    netdev = device.netdevs[0] if device.netdevs else None
    net = PassthroughNetwork(
        host_id=device.host_id, name=name, instance_uuid=instance_uuid, port=port,
        device_id=device.id, forward_mode=FORWARD_MODES.get(kind, "passthrough"),
        xml=network_xml(name, kind, device.address, netdev),
    )
    session.add(net)
    session.flush()
    return net


def delete_networks_of(session: Session, device_ids: Collection[int]) -> list[str]:
    """Delete every network any of these devices is a member of; return their names."""
    if not device_ids:
        return []
    names = list(session.scalars(select(PassthroughNetwork.name)
                                 .where(PassthroughNetwork.device_id.in_(device_ids))
                                 .order_by(PassthroughNetwork.name)))
    session.execute(delete(PassthroughNetwork)
                    .where(PassthroughNetwork.device_id.in_(device_ids))
                    .execution_options(synchronize_session=False))
    return names


def host_networks(session: Session, host_id: int) -> list[PassthroughNetwork]:
    return list(session.scalars(select(PassthroughNetwork)
                                .where(PassthroughNetwork.host_id == host_id)
                                .order_by(PassthroughNetwork.name)))
