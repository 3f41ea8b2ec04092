"""libvirt XML: deterministic, and accepted by libvirt's own schemas (virt-xml-validate)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pt_helpers import INSTANCE, virt_xml_validate

from fleetboot.passthrough.errors import PassthroughError
from fleetboot.passthrough.libvirt_xml import (
    PortSpec,
    devices_xml,
    domain_xml,
    network_name,
    network_xml,
    port_mac,
)
from fleetboot.passthrough.pci import PciAddress
from fleetboot.passthrough.placement import HOSTDEV, NETWORK_HOSTDEV, NETWORK_PASSTHROUGH

SPECS = [
    PortSpec(0, HOSTDEV, "0000:86:00.0"),
    PortSpec(1, NETWORK_HOSTDEV, "0000:3b:02.1"),
    PortSpec(2, NETWORK_PASSTHROUGH, "0000:5e:00.0", netdev="ens2f0",
             guest_address=PciAddress(0, 0, 0x12, 0)),
    PortSpec(3, HOSTDEV, "0000:af:00.0", guest_address=PciAddress(0, 0, 0x13, 0)),
]


def test_domain_validates(tmp_path: Path) -> None:
    virt_xml_validate(domain_xml("vm1", INSTANCE, SPECS), "domain", tmp_path)


def test_networks_validate(tmp_path: Path) -> None:
    virt_xml_validate(network_xml(network_name(INSTANCE, 1), NETWORK_HOSTDEV, "0000:3b:02.1"),
                      "network", tmp_path)
    virt_xml_validate(network_xml(network_name(INSTANCE, 2), NETWORK_PASSTHROUGH,
                                  "0000:5e:00.0", "ens2f0"), "network", tmp_path)


def test_validator_really_rejects(tmp_path: Path) -> None:
    bad = network_xml("n", NETWORK_HOSTDEV, "0000:3b:02.1").replace("hostdev", "bogus")
    with pytest.raises(AssertionError, match="rejected"):
        virt_xml_validate(bad, "network", tmp_path)


def test_shapes() -> None:
    dom = domain_xml("vm1", INSTANCE, SPECS)
    assert "<source network=\"fb-123e4567-e89b-12d3-a456-426614174000-p1\" />" in dom
    assert "bus=\"0x86\"" in dom and "0x3b" not in dom and "ens2f0" not in dom
    net = network_xml("n", NETWORK_HOSTDEV, "0000:3b:02.1")
    assert '<forward mode="hostdev" managed="yes">' in net
    assert '<address type="pci" domain="0x0000" bus="0x3b" slot="0x02" function="0x1" />' in net
    assert '<interface dev="ens2f0" />' in network_xml("n", NETWORK_PASSTHROUGH, "0000:5e:00.0",
                                                       "ens2f0")


def test_network_ports_do_not_name_the_host_device() -> None:
    """What migration relies on: another device behind the same port, the same domain XML."""
    moved = [PortSpec(1, NETWORK_HOSTDEV, "0000:18:02.0"),
             PortSpec(2, NETWORK_PASSTHROUGH, "0000:d8:00.0", netdev="ens6f0",
                      guest_address=PciAddress(0, 0, 0x12, 0))]
    assert devices_xml(INSTANCE, SPECS[1:3]) == devices_xml(INSTANCE, moved)


def test_errors() -> None:
    with pytest.raises(PassthroughError, match="kernel network interface"):
        network_xml("n", NETWORK_PASSTHROUGH, "0000:5e:00.0", None)
    with pytest.raises(PassthroughError, match="uses no network"):
        network_xml("n", HOSTDEV, "0000:5e:00.0")
    with pytest.raises(PassthroughError, match="UUID"):
        network_name("not-a-uuid", 0)


def test_port_mac_is_stable_and_local() -> None:
    mac = port_mac(INSTANCE, 3)
    assert mac == port_mac(INSTANCE.upper(), 3) and mac.startswith("52:54:00:")
    assert mac != port_mac(INSTANCE, 4)


ports = st.lists(
    st.builds(PortSpec, st.integers(0, 63), st.sampled_from([HOSTDEV, NETWORK_HOSTDEV]),
              st.builds(lambda b, s, f: f"0000:{b:02x}:{s:02x}.{f}", st.integers(0, 255),
                        st.integers(0, 31), st.integers(0, 7))),
    max_size=6, unique_by=lambda p: p.port)


@given(specs=ports, uid=st.uuids())
def test_output_is_deterministic(specs: list[PortSpec], uid: object) -> None:
    """Same input, same bytes, whatever order the specs come in."""
    first = domain_xml("vm", str(uid), specs)
    assert domain_xml("vm", str(uid), list(reversed(specs))) == first
    assert domain_xml("vm", str(uid), specs).encode() == first.encode()
