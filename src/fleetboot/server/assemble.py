"""Wires the services of one Fleetboot process together from the configuration.

DHCP owns the lease table, which is also the directory that identifies HTTP and
TFTP clients; every service reports boot events to the node-config service,
which turns them into node states and timelines; TFTP and HTTP share one
boot-file source (and its chunk cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fleetboot.api.app import ApiContext
from fleetboot.api.app import routes as api_routes
from fleetboot.boot.files import BootFileSource
from fleetboot.config import Settings, admin_token
from fleetboot.inventory.db import Database
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.protocols.tftp.options import TftpQuirk
from fleetboot.server.dhcp import DhcpService, settings_from_config
from fleetboot.server.dhcp6 import Dhcp6Service, settings6_from_config
from fleetboot.server.directory import DirectoryChain, LeaseDirectory
from fleetboot.server.grubcfg import register_grub_configs
from fleetboot.server.http import HttpService, create_app
from fleetboot.server.metrics import registry
from fleetboot.server.runtime import ReloadHook, Runtime, Service
from fleetboot.server.tftp import TftpServer, TftpSettings


@dataclass
class Assembly:
    runtime: Runtime
    dhcp: DhcpService
    tftp: TftpServer | None
    http: HttpService | None
    nodeconfig: NodeConfigService
    source: BootFileSource
    dhcp6: Dhcp6Service | None = None
    tftp6: TftpServer | None = None


def tftp_settings(settings: Settings) -> TftpSettings:
    t = settings.tftp
    quirks = [TftpQuirk(q.network, q.mac_prefix, q.disable_options, q.max_blksize,
                        q.max_windowsize, q.description) for q in t.quirks]
    return TftpSettings(root=Path(settings.boot_root), port=t.port, max_blksize=t.max_blksize,
                        max_windowsize=t.max_windowsize, options_enabled=t.options_enabled,
                        timeout=t.timeout_s, max_timeout=t.max_timeout_s, retries=t.retries,
                        max_sessions=t.max_sessions, quirks=quirks)


class FieldCounters(Mapping[str, int]):
    """A dataclass of int counters as a live mapping, for the metrics registry."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._names = [f.name for f in fields(obj)]

    def __getitem__(self, name: str) -> int:
        if name not in self._names:
            raise KeyError(name)
        return int(getattr(self._obj, name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def node_status_probe(nodeconfig: NodeConfigService) -> Callable[[int], tuple[str, float] | None]:
    """Admission control's view of the node state machine: (state, since) per node id."""

    def probe(node_id: int) -> tuple[str, float] | None:
        st = nodeconfig.statuses.get(node_id)  # the dict is replaced at start: look it up
        return (st.state.value, st.since) if st is not None else None

    return probe


def assemble(settings: Settings, db: Database | None = None) -> Assembly:
    """Build (not start) every enabled service of the process."""
    db = db or Database(settings.database.url)
    Path(settings.boot_root).mkdir(parents=True, exist_ok=True)
    source = BootFileSource(settings.boot_root)
    dhcp = DhcpService(settings_from_config(settings), db)
    # IPv6: DHCPv6 leases identify nodes too, and TFTP/HTTP also listen on [::].
    dhcp6 = Dhcp6Service(settings6_from_config(settings), db) if settings.dhcp6.enabled else None
    directory: LeaseDirectory = dhcp if dhcp6 is None else DirectoryChain(dhcp, dhcp6)
    nodeconfig = NodeConfigService(db, directory, NodeConfigSettings.from_settings(settings),
                                   admin_token=admin_token(settings))
    dhcp.events = nodeconfig.sink
    services: list[Service] = [nodeconfig]
    if settings.dhcp.enabled:
        services.append(dhcp)
    if dhcp6 is not None:
        dhcp6.events = nodeconfig.sink
        services.append(dhcp6)
    tftp = tftp6 = None
    if settings.tftp.enabled:
        tftp = TftpServer(tftp_settings(settings), source, events=nodeconfig.sink,
                          directory=directory)
        services.append(tftp)
        if dhcp6 is not None and settings.dhcp6.dual_stack:
            tftp6 = TftpServer(replace(tftp_settings(settings), host="::"), source,
                               events=nodeconfig.sink, directory=directory)
            services.append(tftp6)
    http = None
    reload_hooks: list[ReloadHook] = [dhcp.reload, nodeconfig.reload]
    if dhcp6 is not None:
        reload_hooks.append(dhcp6.reload)
    if settings.http.enabled:
        # The management API (/api/v1) and the web view (/ui/) ride on the same server.
        operator = api_routes(ApiContext(db, admin_token(settings), settings.boot_root,
                                         nodeconfig, settings))
        app = create_app(settings, db, directory, nodeconfig.sink, source=source,
                         extra_routes=[*nodeconfig.routes(), *operator],
                         cmdline_hook=nodeconfig.cmdline_hook,
                         node_status=node_status_probe(nodeconfig))
        # Scripts render from an in-memory view the runtime reloads on revision changes;
        # started (view loaded) before HTTP accepts the first request.
        scripts = app.state.fleetboot.scripts
        scripts.follow_runtime()
        register_grub_configs(source, scripts, settings)  # grub/grub.cfg, same decisions
        reload_hooks.append(scripts.reload)
        http = HttpService.from_settings(app, settings, protocol=nodeconfig.http_protocol())
        if dhcp6 is not None and settings.dhcp6.dual_stack:
            http.extra_hosts = ("::",)
        services += [scripts, http]
        live = app.state.exposition.live  # /metrics reads these at scrape time
        live.nodeconfig, live.dhcp, live.tftp = nodeconfig, dhcp, tftp
    runtime = Runtime(db, services, reload_hooks=reload_hooks)
    # Everything counted, in GET /metrics (DHCP and HTTP register their own).
    registry.register("nodeconfig", nodeconfig.counters)
    if tftp is not None:
        registry.register("tftp", FieldCounters(tftp.stats))
    if tftp6 is not None:
        registry.register("tftp6", FieldCounters(tftp6.stats))
    return Assembly(runtime, dhcp, tftp, http, nodeconfig, source, dhcp6, tftp6)
