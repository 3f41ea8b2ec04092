"""The SIGHUP reloader without a process: which keys are applied, which need a
restart, and a bad file changing nothing (tests/lab/test_serve_process.py sends
the real signal to a real server)."""

from __future__ import annotations

from pathlib import Path

from fleetboot.config import Settings, load_settings
from fleetboot.server.reload import ConfigReloader, changed_keys


def test_changed_keys_are_dotted() -> None:
    old = Settings()
    new = Settings.model_validate({"dhcp": {"unknown_clients": "ignore"}, "tftp": {"port": 70},
                                   "architectures": {0: {"name": "x"}}})
    assert changed_keys(old, new) == ["architectures", "dhcp.unknown_clients", "tftp.port"]
    assert changed_keys(old, Settings()) == []


def test_reload_applies_what_it_can_and_names_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "fleetboot.yaml"
    path.write_text("dhcp: {unknown_clients: serve}\n")
    calls: list[str] = []
    reloader = ConfigReloader(str(path), load_settings(path),
                              {"dhcp.unknown_clients": lambda s: calls.append(
                                  s.dhcp.unknown_clients)})
    path.write_text("dhcp: {unknown_clients: ignore}\ntftp: {port: 6969}\n")
    assert reloader.reload() == (["dhcp.unknown_clients"], ["tftp.port"])
    path.write_text("dhcp: {unknown_clients: [\n")  # broken: nothing changes
    assert reloader.reload() == ([], [])
    path.write_text("dhcp: {unknown_clients: serve}\n")  # back: applied again
    assert reloader.reload() == (["dhcp.unknown_clients"], [])
    assert calls == ["ignore", "serve"]
