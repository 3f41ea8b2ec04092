"""ISC perfdhcp -6 against the DHCPv6 service: unique addresses under load, and every
REPLY's lease in the database (durable before the REPLY left)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dhcp6_helpers import Inventory6, lease6_rows, start_server6, wait_dad

from fleetboot.lab.netns import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("perfdhcp") is None, reason="perfdhcp (kea-admin) missing"),
]

BIG = Inventory6(pools=[("fd00:77::1:0", "fd00:77::ffff:ffff")])


def test_perfdhcp6_load_gives_unique_durable_addresses(lab: Lab, tmp_path: Path) -> None:
    wait_dad(lab)
    server = start_server6(lab, tmp_path, BIG)
    try:
        run = subprocess.run(lab.client.exec_argv(
            ["perfdhcp", "-6", "-u", "-l", lab.client_if, "-r", "300", "-R", "100000000",
             "-p", "3"]), capture_output=True, text=True, check=False)
    finally:
        stats = server.stop()
    assert [int(n) for n in re.findall(r"non unique addresses: (\d+)", run.stdout)] == [0, 0], \
        run.stdout
    advertised, replied = (int(n) for n in re.findall(r"received packets: (\d+)", run.stdout))
    assert advertised > 100 and replied > 100, run.stdout
    # Every REPLY perfdhcp received carried a lease that was committed before it left.
    assert len(lease6_rows(server.db_path)) >= replied
    assert stats["dhcp6.rx"] >= advertised + replied


def test_perfdhcp6_as_a_relay_gets_relay_replies(lab: Lab, tmp_path: Path) -> None:
    """``perfdhcp -A 1`` wraps every message in RELAY-FORW: the server must answer each
    with RELAY-REPL to the relay's port 547, or perfdhcp counts nothing."""
    wait_dad(lab)
    server = start_server6(lab, tmp_path, BIG)
    try:
        run = subprocess.run(lab.client.exec_argv(
            ["perfdhcp", "-6", "-A", "1", "-l", lab.client_if, "-r", "50", "-R", "100000000",
             "-p", "2"]), capture_output=True, text=True, check=False)
    finally:
        server.stop()
    advertised, replied = (int(n) for n in re.findall(r"received packets: (\d+)", run.stdout))
    assert advertised > 20 and replied > 20, run.stdout
    assert any(e.get("relayed") for e in server.events() if e.get("dir") == "rx")
    assert len(lease6_rows(server.db_path)) >= replied
