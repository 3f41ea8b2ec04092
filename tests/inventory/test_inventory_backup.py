"""`inventory export` is a backup (issue 11, item 15): nodes with their configuration
sections, fleet defaults, flavors, passthrough hosts and VM definitions; export ->
import into an empty database -> export gives the same file, on SQLite and
PostgreSQL. Secrets only on request."""

from __future__ import annotations

import base64
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fleetboot.inventory import service, yamlio
from fleetboot.inventory.db import Database
from fleetboot.lab import postgres
from fleetboot.nodeconfig import store
from fleetboot.passthrough import catalog, hosts
from fleetboot.passthrough.flavors import Flavor
from fleetboot.passthrough.sysfs_builder import build_example_host
from fleetboot.vm.service import VmService, VmSettings
from fleetboot.vm.specs import CreateSpec, parse_disk, parse_nic

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1Y2t5IGd1ZXNzIG5vdCBhIHJlYWwga2V5 ops"


@pytest.fixture
def empty_db(db: Database, request: pytest.FixtureRequest,
             tmp_path: Path) -> Iterator[Database]:
    """A second empty inventory on the same kind of database as ``db``."""
    if db.url.startswith("sqlite"):
        other = Database(f"sqlite:///{tmp_path}/restored.db")
        name = None
    else:
        server: postgres.PostgresServer = request.getfixturevalue("pg_server")
        name = f"t_{uuid.uuid4().hex[:12]}"
        other = Database(server.create_database(name))
    other.create_schema()
    yield other
    other.dispose()
    if name is not None:
        request.getfixturevalue("pg_server").drop_database(name)


async def _fill(db: Database, tmp_path: Path) -> None:
    with db.session() as s:
        service.add_profile(s, "deb12", kernel="images/k/vmlinuz", initrd="images/k/initrd")
        service.add_subnet(s, "lab", "10.0.0.0/24", router="10.0.0.1", dns=["10.0.0.1"],
                           domain="lab.test", mtu=1500)
        service.add_pool(s, "lab", "10.0.0.100", "10.0.0.199")
        service.add_reservation(s, "lab", "52:54:00:00:00:01", "10.0.0.10", "n1")
        service.add_node(s, "n1", [service.parse_nic("52:54:00:00:00:01,name=eth0")])
        service.add_node(s, "n2", [service.parse_nic("52:54:00:00:00:02")], arch="aarch64")
        store.set_section(s, "n1", "hostname", "web-1")
        store.set_section(s, "n1", "accounts", [{"name": "ops", "ssh_keys": [KEY]}])
        store.set_section(s, "n2", "files", [
            {"path": "/etc/motd", "content_b64": base64.b64encode(b"hi").decode()},
            {"path": "/etc/key", "content_b64": "c2VjcmV0", "secret": True}])
        store.set_section(s, None, "routes",
                          [{"destination": "10.9.0.0/16", "gateway": "10.0.0.1"}])
        catalog.add_flavor(s, Flavor.create("x710", vendor="8086", products=["1572"]))
    hosts.scan_host(db, "compute-a", build_example_host(tmp_path / "sys", "a").root)
    hosts.set_tags(db, "compute-a", "0000:3b:00.0", {"physical_network": "physnet1"})
    hosts.set_libvirt_uri(db, "compute-a", "qemu+ssh://compute-a/system")
    hosts.allow_devices(db, "compute-a", Flavor.create("x710", vendor="8086", products=["1572"]))
    vms = VmService(db, VmSettings(run_dir=tmp_path / "run", image_dir=tmp_path / "img"))
    vms.add_host("rack2", "10.0.0.12", run_dir="/run/fb", image_dir="/var/lib/fb")
    await vms.create(CreateSpec("vm1", nics=(parse_nic("model=e1000,mac=52:54:00:00:00:42"),),
                                disks=(parse_disk("size=64M,boot"),)))


async def test_export_import_export_gives_the_same_file(db: Database, empty_db: Database,
                                                        tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-system-x86 and qemu-utils to define a VM")
    await _fill(db, tmp_path)
    with db.session() as s:
        text = yamlio.export_inventory(s, secrets=True)
    doc = yaml.safe_load(text)
    assert set(doc) >= {"defaults", "flavors", "passthrough_hosts", "vm_hosts", "vms"}
    assert doc["passthrough_hosts"][0]["allow"] == [
        Flavor.create("a", vendor="8086", products=["1572"]).to_dict()]
    assert doc["nodes"][0]["config"]["accounts"][0]["ssh_keys"] == [KEY]
    with empty_db.session() as s:
        yamlio.import_inventory(s, text)
    with empty_db.session() as s:
        assert yamlio.export_inventory(s, secrets=True) == text
    with empty_db.session() as s:  # and again: an unchanged import changes nothing
        yamlio.import_inventory(s, text)
        assert yamlio.export_inventory(s, secrets=True) == text


async def test_secrets_only_on_request(db: Database, tmp_path: Path) -> None:
    with db.session() as s:
        service.add_node(s, "n1", [service.parse_nic("52:54:00:00:00:01")])
        store.set_section(s, "n1", "hostname", "web-1")
        store.set_section(s, "n1", "accounts", [{"name": "ops", "ssh_keys": [KEY]}])
        store.set_section(s, "n1", "files", [
            {"path": "/etc/key", "content_b64": "c2VjcmV0", "secret": True}])
        text = yamlio.export_inventory(s)
    assert KEY not in text and "c2VjcmV0" not in text and "secrets: omitted" in text
    assert yaml.safe_load(text)["nodes"][0]["config"] == {"hostname": "web-1"}
    with db.session() as s:  # importing the file without secrets keeps them
        yamlio.import_inventory(s, text.replace("web-1", "web-2"))
    with db.session() as s:
        kept = store.stored_sections(s, "n1")
        assert kept["hostname"] == "web-2" and kept["accounts"][0]["ssh_keys"] == [KEY]
        assert kept["files"][0]["secret"] is True


def test_a_bad_section_names_the_node(db: Database) -> None:
    text = ("nodes:\n- name: n1\n  interfaces: [{mac: '52:54:00:00:00:01'}]\n"
            "  config: {acounts: []}\n")
    with pytest.raises(service.InventoryError, match=r"nodes\[0\] \(n1\): unknown section "
                                                     "'acounts'"), db.session() as s:
        yamlio.import_inventory(s, text)
