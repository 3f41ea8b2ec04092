"""The exceptions of the VM concern; the CLI prints them as one line."""

from __future__ import annotations

from fleetboot.errors import FleetbootError


class VmError(FleetbootError):
    """Anything wrong in the VM concern."""


class LayoutError(VmError, ValueError):
    """A PCI layout request that cannot be satisfied (bad address, duplicate id...)."""


class PoolFullError(LayoutError):
    """Every slot of a pool is held; raised before QEMU is touched."""


class ArgvError(VmError, ValueError):
    """User-supplied QEMU arguments that Fleetboot cannot accept."""


class QemuError(VmError):
    """QEMU refused a command, could not start, or went away."""


class QemuGoneError(QemuError):
    """The QEMU process is not running (killed, crashed or never started)."""


class UnplugPendingError(VmError):
    """The guest has not (yet) released a device; its slot stays held."""


class DriftError(VmError):
    """What QEMU shows on its PCI buses differs from the stored layout."""
