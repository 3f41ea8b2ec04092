"""Process-wide counters and a rate-limited logger, shared by every server component.

Counting must cost next to nothing on packet paths, so a counter is a dict
entry: components either call ``registry.inc(name)`` or keep their own plain
``dict[str, int]`` and register it once as a source (the DHCP engine does that).
``snapshot()`` merges everything under dotted names for the API and the CLI.

Bad input is counted, never fatal, and logged at most once per interval per
kind, with the number of suppressed repeats, so a flood cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping


class Metrics:
    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._sources: dict[str, Mapping[str, int]] = {}

    def inc(self, name: str, n: int = 1) -> None:
        values = self._values
        values[name] = values.get(name, 0) + n

    def set(self, name: str, value: int) -> None:
        """A gauge: the current value of something (sessions open, leases held)."""
        self._values[name] = value

    def get(self, name: str) -> int:
        if name in self._values:
            return self._values[name]
        prefix, _, rest = name.partition(".")
        source = self._sources.get(prefix)
        return source.get(rest, 0) if source is not None else 0

    def register(self, prefix: str, counters: Mapping[str, int]) -> None:
        """Expose a component's own counter dict as ``prefix.<key>`` (read live)."""
        self._sources[prefix] = counters

    def unregister(self, prefix: str) -> None:
        self._sources.pop(prefix, None)

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        out = {k: v for k, v in self._values.items() if k.startswith(prefix)}
        for name, source in list(self._sources.items()):
            for key, value in list(source.items()):
                full = f"{name}.{key}"
                if full.startswith(prefix):
                    out[full] = value
        return dict(sorted(out.items()))

    def render_text(self) -> str:
        """``name value`` lines (close to the Prometheus text format)."""
        return "".join(f"fleetboot_{k.replace('.', '_')} {v}\n"
                       for k, v in self.snapshot().items())


registry = Metrics()


class RateLimitedLog:
    """Log each kind of message at most once per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, key: str, level: int, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log unless ``key`` was logged within the interval; return whether it was."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += f" ({skipped} more like this in the last {self.interval:g}s)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(key, logging.WARNING, msg, *args)
