"""Fixtures for the lab VM tests: guest kernels from the shared cache (fetched once,
lock-protected, so xdist workers share them)."""

from __future__ import annotations

import shutil

import pytest

from fleetboot.lab import guest


def _require_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("dnsmasq") is None:
        pytest.skip("needs qemu-system-x86 and dnsmasq (run scripts/install-system-deps.sh)")


@pytest.fixture(scope="session")
def cloud_kernel() -> guest.GuestKernel:
    """Debian's cloud kernel: fast to boot, virtio NICs only."""
    _require_qemu()
    return guest.fetch_guest_kernel("cloud")


@pytest.fixture(scope="session")
def generic_kernel() -> guest.GuestKernel:
    """Debian's generic kernel: also e1000, e1000e and rtl8139 drivers."""
    _require_qemu()
    return guest.fetch_guest_kernel("generic")
