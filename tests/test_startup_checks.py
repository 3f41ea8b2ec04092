"""`fleetboot serve` names a boot root that does not exist and a server_address this
host does not have (issue 11, item 12), instead of starting without a word."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetboot.config import Settings
from fleetboot.server.startup_checks import address_is_local, startup_warnings


def _nonlocal_bind() -> bool:
    return Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0"


def test_a_missing_boot_root_and_a_foreign_address_are_named(tmp_path: Path) -> None:
    if _nonlocal_bind():
        pytest.skip("net.ipv4.ip_nonlocal_bind lets any address bind here")
    settings = Settings(server_address="192.0.2.77", boot_root=str(tmp_path / "none"))
    warnings = startup_warnings(settings)
    assert len(warnings) == 2
    assert "boot_root" in warnings[0] and "does not exist" in warnings[0]
    assert "192.0.2.77 is not an address of this host" in warnings[1]


def test_a_good_configuration_has_no_warning(tmp_path: Path) -> None:
    if _nonlocal_bind():
        pytest.skip("net.ipv4.ip_nonlocal_bind lets any address bind here")
    assert startup_warnings(Settings(server_address="127.0.0.1", boot_root=str(tmp_path),
                                     architectures={})) == []
    assert startup_warnings(Settings(server_address="0.0.0.0", boot_root=str(tmp_path),
                                     architectures={})) == []
    assert address_is_local("127.0.0.1") and not address_is_local("192.0.2.77")
