"""Power control, the pure part: states, operations, errors, retry rules and summaries.

No I/O here. ``drivers.py`` talks to BMCs, ``bulk.py`` runs many at once.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fleetboot.errors import FleetbootError


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class BootDevice(enum.StrEnum):
    NETWORK = "network"
    DISK = "disk"


class Operation(enum.StrEnum):
    STATUS = "status"
    ON = "on"
    OFF = "off"  # soft (ACPI) first, hard once the soft timeout has passed
    CYCLE = "cycle"  # off (hard) then on; a node that is off is just switched on
    REBOOT_NETWORK = "reboot-network"  # one-time network boot, then cycle


class DriverName(enum.StrEnum):
    IPMI = "ipmi"
    REDFISH = "redfish"
    QMP = "qmp"


# --- errors: each says what is wrong and what to do ---


class PowerError(FleetbootError):
    """A power operation failed; ``retryable`` says whether trying again can help."""

    retryable = True


class AuthError(PowerError):
    # Never retried: a BMC may lock the account after a few wrong passwords.
    retryable = False


class UnsupportedError(PowerError):
    retryable = False


class NoAnswerError(PowerError):
    """The BMC did not answer in time (wedged, unreachable, or wrong address/port)."""


class ConfigError(PowerError):
    retryable = False


@dataclass(frozen=True)
class Credentials:
    """A BMC user and password. The password never appears in repr, str or logs."""

    username: str | None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"user {self.username or '-'} (password hidden)"


@dataclass(frozen=True)
class Target:
    """One node's BMC as a driver needs it (credentials already decrypted, in memory only)."""

    node: str
    node_id: int
    driver: DriverName
    address: str
    port: int | None = None
    credentials: Credentials = Credentials(None)
    ca_file: str | None = None
    system: str | None = None  # Redfish system path/id; default: the only system

    def where(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.driver.value} {self.address}{port}"


@dataclass(frozen=True)
class Outcome:
    """What happened to one node's BMC."""

    node: str
    node_id: int
    operation: Operation
    ok: bool
    state: PowerState = PowerState.UNKNOWN
    error: str | None = None
    reason: str | None = None  # short class of the failure, for the summary
    attempts: int = 1
    seconds: float = 0.0


@dataclass(frozen=True)
class Summary:
    total: int
    ok: int
    failed: int
    by_reason: dict[str, list[str]]  # reason -> nodes
    states: dict[str, int]

    def lines(self) -> list[str]:
        head = f"{self.ok}/{self.total} ok, {self.failed} failed"
        if self.states:
            head += " (" + ", ".join(f"{n} {s}" for s, n in sorted(self.states.items())) + ")"
        out = [head]
        for reason, nodes in sorted(self.by_reason.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(nodes[:8]) + (f" and {len(nodes) - 8} more" if len(nodes) > 8
                                            else "")
            out.append(f"  {len(nodes)} {reason}: {shown}")
        return out


def summarize(outcomes: Iterable[Outcome]) -> Summary:
    outcomes = list(outcomes)
    by_reason: dict[str, list[str]] = {}
    for o in outcomes:
        if not o.ok:
            by_reason.setdefault(o.reason or "error", []).append(o.node)
    states = Counter(o.state.value for o in outcomes if o.ok)
    ok = sum(1 for o in outcomes if o.ok)
    return Summary(len(outcomes), ok, len(outcomes) - ok, by_reason, dict(states))


def reason_of(exc: BaseException) -> str:
    """A short, stable label for a failure (groups the summary)."""
    if isinstance(exc, AuthError):
        return "wrong credentials"
    if isinstance(exc, NoAnswerError | TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, UnsupportedError):
        return "not supported"
    if isinstance(exc, ConfigError):
        return "bad power settings"
    return "BMC error"


def attempts_left(exc: BaseException, attempt: int, retries: int) -> bool:
    """Whether attempt number ``attempt`` (1-based) may be followed by another one."""
    retryable = getattr(exc, "retryable", isinstance(exc, OSError | TimeoutError))
    return bool(retryable) and attempt <= retries


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 4.0) -> float:
    return min(cap_s, base_s * (2 ** (attempt - 1)))


def parse_operation(text: str) -> Operation:
    try:
        return Operation(text)
    except ValueError:
        names = ", ".join(o.value for o in Operation)
        raise ConfigError(f"unknown power operation {text!r}; use one of {names}") from None


def parse_driver(text: str) -> DriverName:
    try:
        return DriverName(text)
    except ValueError:
        raise ConfigError(f"unknown power driver {text!r}; use ipmi, redfish or qmp") from None


def state_after(operation: Operation) -> PowerState | None:
    """The power state an operation must leave (None: whatever it is)."""
    if operation is Operation.OFF:
        return PowerState.OFF
    if operation in (Operation.ON, Operation.CYCLE, Operation.REBOOT_NETWORK):
        return PowerState.ON
    return None


def order_targets(targets: Sequence[Target]) -> list[Target]:
    """Deduplicated by node, in the order asked."""
    seen: set[int] = set()
    out = []
    for t in targets:
        if t.node_id not in seen:
            seen.add(t.node_id)
            out.append(t)
    return out


class ComeBack(enum.StrEnum):
    BACK = "back"  # UP again since the action
    WAIT = "wait"
    FLAG = "flag"  # not UP within the limit: flag it, with the BMC's last answer


BRINGS_UP = (Operation.ON, Operation.CYCLE, Operation.REBOOT_NETWORK)


def came_back(action_at: float, node_state: str | None, state_since: float | None,
              now: float, limit_s: float) -> ComeBack:
    """Did a node come back (UP) after a power action that should bring it up?"""
    if node_state == "UP" and state_since is not None and state_since >= action_at:
        return ComeBack.BACK
    return ComeBack.FLAG if now - action_at >= limit_s else ComeBack.WAIT
