"""The root of Fleetboot's exceptions: the CLI shows these as a plain message."""


class FleetbootError(Exception):
    """An error whose message tells the user what was wrong and how to fix it."""
