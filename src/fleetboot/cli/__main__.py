"""``python -m fleetboot.cli``: the same as the ``fleetboot`` command."""

from fleetboot.cli.main import app

app(prog_name="fleetboot")
