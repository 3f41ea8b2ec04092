"""The exceptions of the passthrough concern; the CLI prints them as one line."""

from __future__ import annotations

from collections.abc import Mapping

from fleetboot.errors import FleetbootError


class PassthroughError(FleetbootError):
    """Anything wrong in the passthrough concern."""


class SysfsError(PassthroughError):
    """A sysfs tree could not be read or holds something that is not a PCI device."""


class FlavorError(PassthroughError, ValueError):
    """A flavor or a device request is malformed or names an unknown flavor."""


class HostError(PassthroughError):
    """An unknown host or device, or a rescan that cannot be applied."""


class ClaimError(PassthroughError):
    """Devices could not be claimed, allocated or released."""


class NoHostError(ClaimError):
    """No host can satisfy a set of requests; the message explains why, per host."""

    def __init__(self, message: str, refusals: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.refusals = dict(refusals or {})


class MigrationError(PassthroughError):
    """A migration was refused or failed (and was rolled back)."""
