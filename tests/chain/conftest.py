"""Fixtures for the whole-chain tests: guest kernels from the shared cache (fetched once,
lock-protected, so xdist workers share them); skips when QEMU or namespaces are missing."""

from __future__ import annotations

import pytest
from chain_helpers import require_chain

from fleetboot.lab import guest


def _kernel(flavor: guest.Flavor) -> guest.GuestKernel:
    require_chain()
    try:
        return guest.fetch_guest_kernel(flavor)
    except guest.GuestError as exc:
        pytest.skip(f"no {flavor} guest kernel: {exc}")


@pytest.fixture(scope="session")
def cloud_kernel() -> guest.GuestKernel:
    """Debian's cloud kernel: boots fastest, virtio NICs only."""
    return _kernel("cloud")


@pytest.fixture(scope="session")
def generic_kernel() -> guest.GuestKernel:
    """Debian's generic kernel: also has the e1000 and rtl8139 drivers."""
    return _kernel("generic")
