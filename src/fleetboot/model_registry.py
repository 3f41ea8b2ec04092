"""The one list of modules that declare tables, for Alembic and ``create_schema``."""

from importlib import import_module

MODEL_MODULES = (
    "fleetboot.inventory.models",
    "fleetboot.nodeconfig.models",
    "fleetboot.passthrough.models",
    "fleetboot.power.models",
    "fleetboot.vm.models",
    "fleetboot.reload.models",
    "fleetboot.api.models",
)


def load() -> None:
    for name in MODEL_MODULES:
        import_module(name)
