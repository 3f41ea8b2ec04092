"""``python -m fleetboot.storm run --nodes N ...``: the same as ``fleetboot storm``."""

from fleetboot.cli.storm import app

if __name__ == "__main__":
    app(prog_name="python -m fleetboot.storm")
