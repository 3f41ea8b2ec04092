"""SIGHUP: read ``fleetboot.yaml`` again and apply what can change while serving.

What a running server can take over without dropping a client is applied
(DHCP answer policies and the architecture table, what iPXE scripts tell
unknown and waiting machines, the admin token); any other
changed key is logged by name as needing a restart. A file that does not load
(bad YAML, a value out of range) changes nothing: the error is logged and the
server keeps its configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from fleetboot.config import Settings, admin_token, load_settings
from fleetboot.errors import FleetbootError
from fleetboot.server.assemble import Assembly
from fleetboot.server.dhcp import settings_from_config

log = logging.getLogger("fleetboot.reload")

Applier = Callable[[Settings], None]


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of a settings dump; dict-valued tables keyed by numbers stay whole."""
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and value:
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, value


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The dotted keys whose values differ (pure)."""
    before, after = dict(flatten(old.model_dump())), dict(flatten(new.model_dump()))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _covered(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclass
class ConfigReloader:
    """Applies reloadable keys (``appliers``: key prefix -> applier) on each ``reload``."""

    config_path: str | None
    running: Settings  # as started: what keys needing a restart are compared with
    appliers: dict[str, Applier] = field(default_factory=dict)
    applied: Settings | None = None  # the last configuration the appliers were given

    def reload(self) -> tuple[list[str], list[str]]:
        """Returns (applied keys, keys needing a restart); both empty when the file is bad."""
        try:
            new = load_settings(self.config_path)
        except FleetbootError as exc:
            log.error("SIGHUP: the configuration does not load, keeping the current one: %s",
                      exc)
            return [], []
        prefixes = list(self.appliers)
        fresh = [k for k in changed_keys(self.applied or self.running, new)
                 if _covered(k, prefixes)]
        restart = [k for k in changed_keys(self.running, new) if not _covered(k, prefixes)]
        for prefix, apply in self.appliers.items():
            if any(_covered(k, [prefix]) for k in fresh):
                apply(new)
        self.applied = new
        log.info("SIGHUP: configuration reloaded; applied: %s; changed but needing a restart: "
                 "%s", ", ".join(fresh) or "nothing", ", ".join(restart) or "nothing")
        return fresh, restart


def assembly_appliers(assembly: Assembly) -> dict[str, Applier]:
    """What the services of ``assembly`` can change while they run."""

    def dhcp_policies(new: Settings) -> None:
        wanted = settings_from_config(new)
        settings = replace(assembly.dhcp.settings, unknown_clients=wanted.unknown_clients,
                           non_boot_interfaces=wanted.non_boot_interfaces,
                           architectures=wanted.architectures)
        assembly.dhcp.settings = settings
        if assembly.dhcp.engine is not None:
            assembly.dhcp.engine.set_settings(settings)

    def token(new: Settings) -> None:
        value = admin_token(new)
        assembly.nodeconfig.admin_token = value
        if assembly.http is not None:
            assembly.http.app.state.fleetboot.admin_token = value

    def script_policies(new: Settings) -> None:
        if assembly.http is None:
            return
        scripts = assembly.http.app.state.fleetboot.scripts
        changes = {k: getattr(new.http, k) for k in SCRIPT_KEYS}
        http = scripts.settings.http.model_copy(update=changes)
        # Rendered scripts are reused for at most 2 s, so the next asks get the new policy.
        scripts.settings = scripts.settings.model_copy(update={"http": http})

    appliers: dict[str, Applier] = {
        "dhcp.unknown_clients": dhcp_policies, "dhcp.non_boot_interfaces": dhcp_policies,
        "architectures": dhcp_policies, "security": token}
    appliers.update({f"http.{k}": script_policies for k in SCRIPT_KEYS})
    return appliers


# What machines not in the inventory (and waiting ones) are told by iPXE scripts.
SCRIPT_KEYS = ("wait_seconds", "unknown_action", "unknown_menu", "menu_timeout_s",
               "menu_default")
