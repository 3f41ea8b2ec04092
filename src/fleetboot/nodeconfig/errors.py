"""The node-configuration package's exception type."""

from fleetboot.errors import FleetbootError


class NodeConfigError(FleetbootError):
    """Bad configuration input, an unknown section or node: the message says how to fix it."""
