"""The installed version of Fleetboot (``fleetboot --version``, the API's OpenAPI info)."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("fleetboot")
    except metadata.PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"
