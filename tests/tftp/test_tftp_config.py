"""The ``tftp:`` section of fleetboot.yaml reaches the server: limits and per-client quirks."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetboot.config import ConfigError, load_settings
from fleetboot.protocols.tftp.options import policy_for
from fleetboot.server.assemble import tftp_settings

CONFIG = """
tftp:
  max_blksize: 1400
  max_windowsize: 8
  timeout_s: 0.5
  max_timeout_s: 4
  quirks:
    - description: old NIC ROM that breaks on OACKs
      mac_prefix: "00:1b:21"
      disable_options: true
    - network: 10.0.5.0/24
      max_blksize: 512
"""


def test_quirks_and_limits_reach_the_option_policy(tmp_path: Path) -> None:
    tftp = tftp_settings(load_settings(_write(tmp_path, CONFIG)))
    base = tftp.option_policy()
    assert (base.max_blksize, base.max_windowsize) == (1400, 8)
    assert (tftp.timer_policy().timeout, tftp.timer_policy().max_timeout) == (0.5, 4.0)
    old_rom = policy_for(base, tftp.quirks, "10.0.0.9", "00:1B:21:aa:bb:cc")
    assert not old_rom.options_enabled
    lab = policy_for(base, tftp.quirks, "10.0.5.77", "52:54:00:00:00:01")
    assert lab.options_enabled and lab.max_blksize == 512
    assert policy_for(base, tftp.quirks, "10.0.6.1", "52:54:00:00:00:01") == base


@pytest.mark.parametrize(("quirk", "hint"), [
    ("{disable_options: true}", "needs `network`"),
    ("{network: 10.0.5.0/33}", "not an address or CIDR"),
    ("{mac_prefix: 'zz:00'}", "hex octets"),
    ("{network: 10.0.0.1, max_blksize: 70000}", "max_blksize"),
])
def test_a_bad_quirk_is_explained(tmp_path: Path, quirk: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        load_settings(_write(tmp_path, f"tftp:\n  quirks: [{quirk}]\n"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleetboot.yaml"
    path.write_text(text)
    return path
