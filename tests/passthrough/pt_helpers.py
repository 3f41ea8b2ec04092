"""Helpers shared by the passthrough tests: the example fleet, flavors, XML validation."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetboot.inventory.db import Database
from fleetboot.passthrough import catalog, hosts
from fleetboot.passthrough.flavors import Flavor
from fleetboot.passthrough.sysfs_builder import FakeSysfs, build_example_host

INSTANCE = "123e4567-e89b-12d3-a456-426614174000"
OTHER = "00000000-0000-4000-8000-000000000001"


def example_flavors() -> list[Flavor]:
    return [
        Flavor.create("gpu-a100", vendor="10de", products=["20b0"]),
        Flavor.create("sriov-physnet1", class_prefix="02", device_type="vf",
                      tags={"physical_network": "physnet1"}),
        Flavor.create("x710-vf", vendor="8086", products=["154c"]),
        Flavor.create("intel-nic", vendor="8086", class_prefix="0200"),
        Flavor.create("mlx-netdev", vendor="15b3", drivers=["mlx5_core"]),
    ]


# Operator tags: which physical network each PF's ports reach (VFs inherit).
TAGS = {
    "a": {"0000:3b:00.0": "physnet1", "0000:3b:00.1": "physnet2", "0000:5e:00.0": "physnet1"},
    "b": {"0000:17:00.0": "physnet1", "0000:18:00.0": "physnet1", "0000:d8:00.0": "physnet1"},
}


@dataclass
class Fleet:
    db: Database
    roots: dict[str, Path]
    fakes: dict[str, FakeSysfs]


def build_fleet(db: Database, tmp_path: Path) -> Fleet:
    roots, fakes = {}, {}
    for which in ("a", "b"):
        root = tmp_path / f"sys-{which}"
        fakes[which] = build_example_host(root, which)
        roots[which] = root
        hosts.scan_host(db, f"compute-{which}", root)
        for address, physnet in TAGS[which].items():
            hosts.set_tags(db, f"compute-{which}", address, {"physical_network": physnet})
    with db.session() as session:
        for flavor in example_flavors():
            catalog.add_flavor(session, flavor)
    for which in ("a", "b"):  # every example device that a flavor names may be passed through
        for vendor in ("10de", "8086", "15b3"):
            hosts.allow_devices(db, f"compute-{which}", Flavor.create("allow", vendor=vendor))
    return Fleet(db, roots, fakes)


def virt_xml_validate(text: str, schema: str, tmp_path: Path) -> None:
    """Validate with libvirt's own schemas (libvirt-clients + libxml2-utils)."""
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate needs libvirt-clients and libxml2-utils "
                    "(scripts/install-system-deps.sh)")
    path = tmp_path / f"check-{schema}-{abs(hash(text))}.xml"
    path.write_text(text)
    proc = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, f"{schema} XML rejected:\n{proc.stderr}\n{text}"
