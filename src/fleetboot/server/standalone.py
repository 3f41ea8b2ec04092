"""One DHCP service (v4 or v6) run on its own: ``python -m fleetboot.server.dhcp[6]``.

Tests and benchmarks run the packet service alone, without HTTP, TFTP or node
configuration; both families share this runner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fleetboot.inventory.db import Database
from fleetboot.server.events import BootEvent, EventSink
from fleetboot.server.metrics import registry
from fleetboot.server.runtime import freeze_startup_objects, tune_gc_for_packets


class PacketService(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def reload(self) -> None: ...


# (settings as JSON text, database, event sink) -> the service to run
ServiceFactory = Callable[[str, Database, EventSink | None], PacketService]


def _event_sink(path: str | None) -> EventSink | None:
    if not path:
        return None
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process lifetime

    def sink(event: BootEvent) -> None:
        out.write(json.dumps({"at": event.at, "kind": event.kind, "mac": event.mac,
                              "address": event.address, **event.detail}) + "\n")
    return sink


async def _serve(args: argparse.Namespace, make: ServiceFactory) -> None:
    db = Database(args.db)
    if args.create_schema:
        await asyncio.to_thread(db.create_schema)
    service = make(args.settings, db, _event_sink(args.events))
    await service.start()
    freeze_startup_objects()  # as Runtime.start does in `fleetboot serve`: leases stay
    if args.ready:
        Path(args.ready).write_text("ready\n")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(service.reload()))
    await stop.wait()
    stats: dict[str, Any] = registry.snapshot()
    await service.stop()
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=1))
    db.dispose()


def run(make: ServiceFactory, what: str, settings_class: str,
        argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGINT/SIGTERM (SIGHUP reloads)."""
    parser = argparse.ArgumentParser(description=f"Run only Fleetboot's {what} service.")
    parser.add_argument("--db", required=True, help="SQLAlchemy URL of the inventory")
    parser.add_argument("--settings", default="",
                        help=f"{settings_class} fields as a JSON object")
    parser.add_argument("--create-schema", action="store_true")
    parser.add_argument("--ready", help="write this file once the sockets are open")
    parser.add_argument("--stats", help="write the counters here as JSON on exit")
    parser.add_argument("--events", help=f"append every {what} event here as a JSON line")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    tune_gc_for_packets()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_serve(args, make))
    else:
        uvloop.run(_serve(args, make))
