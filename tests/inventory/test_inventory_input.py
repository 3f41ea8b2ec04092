"""Input the inventory used to accept silently or crash on (issue 11, items 7, 11, 12).

Each error is one line naming the entry and what to do; nothing is stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetboot.errors import FleetbootError
from fleetboot.inventory import service, yamlio
from fleetboot.inventory.db import Database

MAC = "52:54:00:aa:00:01"


def _import(db: Database, text: str, boot_root: Path | None = None) -> str:
    with pytest.raises(service.InventoryError) as err, db.session() as s:
        yamlio.import_inventory(s, text, boot_root=boot_root)
    message = str(err.value)
    assert "\n" not in message
    with db.session() as s:  # one transaction: nothing of the file was kept
        assert not service.list_nodes(s) and not service.list_subnets(s)
    return message


@pytest.mark.parametrize("text, expected", [
    ("nodes:\n- name: node00\n  interfaces: [{mac: '52:54:00:aa:00:09'}]\n"
     "- name: node01\n  interface: [{mac: '52:54:00:aa:00:01'}]\n",
     "nodes[1] (node01): unknown key 'interface' (did you mean 'interfaces'?)"),
    ("nodes: {node01: {interfaces: []}}\n", "nodes must be a list of entries"),
    ("nodes:\n- {name: a, interfaces: [{mac: '52:54:00:aa:00:01'}]}\n"
     "- {name: a, interfaces: [{mac: '52:54:00:aa:00:02'}]}\n",
     "nodes: a appear(s) more than once"),
    ("nodes:\n- {name: a, interfaces: [{mac: '52:54:00:aa:00:01'}]}\n"
     "- {name: b, interfaces: [{mac: '52:54:00:AA:00:01'}]}\n",
     "nodes[1] (b): MAC 52:54:00:AA:00:01 is also an interface of a"),
    ("subnets:\n- {name: lab, cidr: 10.0.0.0/24, pools: [{start: 10.0.0.10, stop: 10.0.0.20}]}\n",
     "subnets[0] (lab).pools[0]: unknown key 'stop'; known keys: start, end"),
    ("subnets:\n- {name: lab, cidr: 10.0.0.0/24, mtu: '1500'}\n",
     "subnets[0] (lab).mtu: input should be a valid integer"),
    ("subnet: []\n", "the document: unknown key 'subnet' (did you mean 'subnets'?)"),
    ("nodes:\n- {interfaces: []}\n", "nodes[0]: missing key 'name'"),
    ("nodes:\n- node01\n", "nodes[0]: input should be a valid dictionary"),
    ("nodes:\n- {name: n1, interfaces: [{mac: 52:54:00:00:10:01}]}\n",
     "nodes[0] (n1).interfaces[0].mac: write it in quotes"),
])
def test_document_errors_name_the_entry(sqlite_db: Database, text: str, expected: str) -> None:
    assert expected in _import(sqlite_db, text)


@pytest.mark.parametrize("mac, why", [
    ("ff:ff:ff:ff:ff:ff", "broadcast"), ("00:00:00:00:00:00", "all-zero"),
    ("01:00:5e:00:00:01", "multicast"), ("33:33:00:00:00:01", "multicast"),
])
def test_mac_a_nic_cannot_have_is_refused(db: Database, mac: str, why: str) -> None:
    message = _import(db, f"nodes:\n- name: n1\n  interfaces: [{{mac: '{mac}'}}]\n")
    assert message.startswith("nodes[0] (n1): ") and why in message
    with pytest.raises(FleetbootError, match=why), db.session() as s:
        service.add_node(s, "n1", [service.parse_nic(mac)])
    with pytest.raises(FleetbootError, match=why), db.session() as s:
        service.add_subnet(s, "lab", "10.0.0.0/24")
        service.add_reservation(s, "lab", mac, "10.0.0.5")


@pytest.mark.parametrize("entry, expected", [
    ("{name: 'node 01', interfaces: [{mac: '52:54:00:aa:00:01'}]}", "no spaces"),
    ("{name: n1, arch: x86-64, interfaces: [{mac: '52:54:00:aa:00:01'}]}",
     "unknown architecture 'x86-64'; did you mean 'x86_64'?"),
    ("{name: n1, interfaces: [{mac: '52:54:00:aa:00:01'}, {mac: '52:54:00:aa:00:01'}]}",
     "a MAC belongs to one node"),
])
def test_node_entries_refused(db: Database, entry: str, expected: str) -> None:
    assert expected in _import(db, f"nodes:\n- {entry}\n")


def test_the_cli_layer_refuses_the_same(db: Database) -> None:
    for call, expected in [
        (lambda s: service.add_node(s, "a b", [service.NicSpec(MAC)]), "no spaces"),
        (lambda s: service.add_node(s, "n1", [service.NicSpec(MAC)], arch="pdp11"),
         "unknown architecture"),
        (lambda s: service.add_node(s, "n1", [service.NicSpec(MAC), service.NicSpec(MAC)]),
         "given twice"),
    ]:
        with pytest.raises(service.InventoryError, match=expected), db.session() as s:
            call(s)


def test_a_reservation_inside_the_dynamic_pool_is_refused(db: Database) -> None:
    text = ("subnets:\n- name: lab\n  cidr: 10.0.0.0/24\n"
            "  pools: [{start: 10.0.0.100, end: 10.0.0.199}]\n"
            "  reservations: [{mac: '52:54:00:aa:00:01', address: 10.0.0.150}]\n")
    assert "pool 10.0.0.100-10.0.0.199 holds 10.0.0.150" in _import(db, text)
    with db.session() as s:
        service.add_subnet(s, "lab", "10.0.0.0/24")
        service.add_pool(s, "lab", "10.0.0.100", "10.0.0.199")
    with pytest.raises(service.InventoryError, match="inside the dynamic pool"), db.session() as s:
        service.add_reservation(s, "lab", MAC, "10.0.0.150")


@pytest.mark.parametrize("field, value, expected", [
    ("mtu", "70000", "MTU 70000 is out of range"),
    ("mtu", "20", "MTU 20 is out of range"),
    ("lease_seconds", "10", "lease time 10 is out of range"),
    ("lease_seconds", str(1 << 32), "out of range"),
    ("dns", "[" + ", ".join(f"10.0.0.{i}" for i in range(1, 70)) + "]", "do not fit"),
    ("domain", "'lab example'", "not a DNS name"),
    ("domain", "'" + "a" * 300 + "'", "not a DNS name"),
])
def test_values_beyond_their_wire_range_are_refused(db: Database, field: str, value: str,
                                                    expected: str) -> None:
    text = f"subnets:\n- {{name: lab, cidr: 10.0.0.0/24, {field}: {value}}}\n"
    assert expected in _import(db, text)


def test_profiles_must_name_files_under_the_boot_root(db: Database, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "vmlinuz").write_bytes(b"k")
    escape = "profiles:\n- {name: p, kernel: ../../etc/passwd}\n"
    assert "no '..'" in _import(db, escape)
    missing = "profiles:\n- {name: p, kernel: images/vmlinuz, initrd: images/initrd.img}\n"
    assert "initrd 'images/initrd.img' is not a file under the boot root" in _import(
        db, missing, boot_root=root)
    assert "does not exist" in _import(db, missing, boot_root=tmp_path / "nowhere")
    with db.session() as s:  # a URL and a file that exists are fine
        yamlio.import_inventory(s, "profiles:\n- {name: p, kernel: /images/vmlinuz, "
                                   "initrd: 'http://10.0.0.1/initrd'}\n", boot_root=root)


def test_an_unchanged_reimport_keeps_subnets_and_their_leases(db: Database) -> None:
    from datetime import UTC, datetime, timedelta

    from fleetboot.inventory.models import Lease

    with db.session() as s:
        service.add_subnet(s, "lab", "10.0.0.0/24", router="10.0.0.1", mtu=1500)
        service.add_pool(s, "lab", "10.0.0.100", "10.0.0.199")
        service.add_reservation(s, "lab", MAC, "10.0.0.5", "fixed")
        subnet_id = service.get_subnet(s, "lab").id
        s.add(Lease(address="10.0.0.100", mac="52:54:00:aa:00:02", subnet_id=subnet_id,
                    expires=datetime.now(UTC) + timedelta(hours=1)))
        text = yamlio.export_inventory(s)
    for document in (text, text.replace("mtu: 1500", "mtu: 9000")):
        with db.session() as s:
            yamlio.import_inventory(s, document)
        with db.session() as s:
            assert service.get_subnet(s, "lab").id == subnet_id
            leases = service.list_leases(s, now=0, subnet="lab")
            assert [(v.address, v.subnet) for v in leases] == [("10.0.0.100", "lab")]
    with db.session() as s:
        subnet = service.get_subnet(s, "lab")
        assert subnet.mtu == 9000 and [r.address for r in subnet.reservations] == ["10.0.0.5"]


def test_the_example_inventory_imports(db: Database) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"
    with db.session() as s:
        counts = yamlio.import_inventory(s, example.read_text())
    assert counts == {"profiles": 1, "subnets": 1, "nodes": 1}
