"""The standalone server on port 69 in a namespace, real clients across a veth pair."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetboot.lab.netns import Lab

pytestmark = pytest.mark.netns


@pytest.fixture
def served_lab(lab: Lab, tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "boot.efi").write_bytes(os.urandom(700_000))
    proc = lab.server.popen([sys.executable, "-m", "fleetboot.server.tftp", "--root", str(root),
                             "--host", lab.server_ip, "--port", "69",
                             "--max-blksize", "65464"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("ready"), line
    try:
        yield lab, root
    finally:
        proc.terminate()
        proc.wait(10)


def test_clients_across_veth(served_lab: tuple[Lab, Path], tmp_path: Path) -> None:
    lab, root = served_lab
    expected = (root / "boot.efi").read_bytes()
    out = tmp_path / "out"
    lab.client.run(["curl", "-sS", "--tftp-blksize", "65464", "-o", str(out),
                    f"tftp://{lab.server_ip}/boot.efi"])
    assert out.read_bytes() == expected
    out.unlink()
    # The server allows 65464, but the route's MTU (1500 on the veth) allows 1468.
    result = lab.client.run(["atftp", "--trace", "--option", "blksize 9000", "--option", "tsize",
                             "-g", "-r", "boot.efi", "-l", str(out), lab.server_ip],
                            check=False)
    assert out.read_bytes() == expected, result.stdout + result.stderr
    oack = next(line for line in result.stderr.splitlines() if "received OACK" in line)
    assert "blksize: 1468," in oack, oack


def test_windowsize_across_veth(served_lab: tuple[Lab, Path], tmp_path: Path) -> None:
    # (No netem here: this kernel lacks sch_netem; bench/tftp.py brings its own delay line.)
    lab, root = served_lab
    out = tmp_path / "out"
    lab.client.run(["atftp", "--option", "blksize 1468", "--option", "windowsize 16", "-g",
                    "-r", "boot.efi", "-l", str(out), lab.server_ip])
    assert out.read_bytes() == (root / "boot.efi").read_bytes()
