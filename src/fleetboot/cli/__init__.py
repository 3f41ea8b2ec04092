"""The ``fleetboot`` command line: Typer for parsing, Rich for output."""
