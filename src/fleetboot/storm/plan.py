"""The plan of a boot storm: who boots, when, and how its firmware behaves. Pure.

A plan is plain data so that the orchestrator can hand it to the simulator
process (which runs inside the client namespace) as JSON, and so that two
stacks are stormed by exactly the same nodes at exactly the same offsets.

Retransmission schedules are tuples of timeouts: the client sends, waits
``schedule[0]`` seconds for an answer, sends again, waits ``schedule[1]``, and
so on; when the last wait ends without an answer the node has failed. Every
send after the first is a retransmission, counted as a retry.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from fleetboot.errors import FleetbootError

KiB = 1024
MiB = 1024 * KiB

StackKind = Literal["fleetboot", "classic", "proxy"]
STACKS: tuple[StackKind, ...] = ("classic", "fleetboot")  # what a storm runs by default
# "proxy": the site's classic DHCP (dnsmasq, addresses only) + Fleetboot as proxyDHCP.
ALL_STACKS: tuple[StackKind, ...] = (*STACKS, "proxy")

# The phases of one boot, in order; results, tables and the picture use these names.
PHASES = (
    "pxe_dhcp",  # firmware DISCOVER/OFFER/REQUEST/ACK (+ proxyDHCP on 4011 where used)
    "tftp",  # the boot program (iPXE): tsize probe, then the blksize transfer
    "ipxe_dhcp",  # iPXE's own DHCP, user class iPXE: gets the script URL
    "script",  # the iPXE script over HTTP
    "kernel",
    "initrd",
    "os_dhcp",  # the booted OS's DHCP client (another client-id)
    "config",  # the node's configuration fetch
    "up",  # the UP report
)


class PlanError(FleetbootError):
    pass


@dataclass(frozen=True)
class Timing:
    """Retransmission schedules (seconds) of the simulated firmware and OS."""

    # PXE ROM: 4 sends, 60 s in all (seed 002); the same for its REQUEST.
    pxe_discover: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    pxe_request: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    pxe_proxy: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    # edk2's MTFTP: 4 s per try, 6 tries (PXEBC_MTFTP_TIMEOUT/RETRIES).
    tftp: tuple[float, ...] = (4.0,) * 6
    # iPXE: 1 s doubling up to its 10 s ceiling, then it gives up (15 s).
    ipxe_dhcp: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    # busybox udhcpc defaults: -t 3 -T 3.
    os_dhcp: tuple[float, ...] = (3.0, 3.0, 3.0)
    # An HTTP transfer that makes no progress for this long has failed.
    http_idle_s: float = 30.0
    # Seconds between the initrd arriving and the OS starting its DHCP client.
    os_boot_s: float = 0.0


@dataclass(frozen=True)
class Firmware:
    """What the simulated machines say about themselves."""

    arch: int = 7  # option 93: x86-64 UEFI, whose TFTP does the tsize probe
    pxe_vendor_class: str = "PXEClient:Arch:00007:UNDI:003000"
    ipxe_vendor_class: str = "PXEClient:Arch:00007:UNDI:003010"
    os_vendor_class: str = "udhcp 1.35.0"
    tftp_blksize: int = 1456  # the seed's PXE ROM asks for 1456
    tftp_tsize_probe: bool = True  # RRQ tsize, ERROR 8, RRQ blksize (edk2)
    broadcast_flag: bool = True


@dataclass(frozen=True)
class Payload:
    """Sizes of the files every node loads."""

    bootfile: int = 100 * KiB  # an iPXE-sized program
    kernel: int = 4 * MiB
    initrd: int = 4 * MiB


@dataclass(frozen=True)
class Network:
    """Addresses of the storm network; nodes take addresses from ``node_net``."""

    server_ip: str = "10.77.0.1"
    client_ip: str = "10.77.0.2"
    prefix: int = 16
    node_net: str = "10.77.128.0/17"

    @property
    def cidr(self) -> str:
        return str(ipaddress.ip_network(f"{self.server_ip}/{self.prefix}", strict=False))

    @property
    def netmask(self) -> str:
        return str(ipaddress.ip_network(self.cidr).netmask)


@dataclass(frozen=True)
class NodeSpec:
    index: int
    name: str
    mac: str
    address: str  # the node's reserved address (both stacks hand out the same one)
    start_s: float  # offset of its power-on from the storm start


@dataclass(frozen=True)
class StackEndpoints:
    """Where the simulated OS finds its configuration on the stack under test."""

    kind: StackKind = "fleetboot"
    http_port: int = 8080


@dataclass(frozen=True)
class StormPlan:
    n: int
    window_s: float
    seed: int
    nodes: tuple[NodeSpec, ...]
    timing: Timing = field(default_factory=Timing)
    firmware: Firmware = field(default_factory=Firmware)
    payload: Payload = field(default_factory=Payload)
    network: Network = field(default_factory=Network)
    stack: StackEndpoints = field(default_factory=StackEndpoints)

    def for_stack(self, kind: StackKind, http_port: int) -> StormPlan:
        return replace(self, stack=StackEndpoints(kind, http_port))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StormPlan:
        try:
            return StormPlan(
                n=int(data["n"]), window_s=float(data["window_s"]), seed=int(data["seed"]),
                nodes=tuple(NodeSpec(**n) for n in data["nodes"]),
                timing=_build(Timing, data.get("timing", {})),
                firmware=_build(Firmware, data.get("firmware", {})),
                payload=_build(Payload, data.get("payload", {})),
                network=_build(Network, data.get("network", {})),
                stack=_build(StackEndpoints, data.get("stack", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"not a storm plan: {exc}") from None


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    """A frozen dataclass from JSON, turning lists back into tuples."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def node_mac(index: int) -> str:
    """A locally administered unicast MAC per node index (02:fb:..)."""
    if not 0 <= index < 1 << 32:
        raise PlanError(f"node index {index} out of range")
    raw = bytes([0x02, 0xFB]) + index.to_bytes(4, "big")
    return ":".join(f"{b:02x}" for b in raw)


def node_name(index: int) -> str:
    return f"storm-{index + 1:05d}"


def node_addresses(node_net: str, n: int) -> list[str]:
    """The first ``n`` usable host addresses of ``node_net``."""
    net = ipaddress.ip_network(node_net)
    if net.num_addresses - 2 < n:
        raise PlanError(f"{node_net} has room for {net.num_addresses - 2} nodes, not {n}; "
                        "give a larger node network")
    first = int(net.network_address) + 1
    return [str(ipaddress.IPv4Address(first + i)) for i in range(n)]


def start_offsets(n: int, window_s: float, seed: int) -> list[float]:
    """Power-on offsets spread uniformly over the window (0: all at once)."""
    if window_s < 0:
        raise PlanError("the start window cannot be negative")
    if window_s == 0:
        return [0.0] * n
    rng = random.Random(seed)
    return [round(rng.uniform(0.0, window_s), 6) for _ in range(n)]


def make_plan(
    n: int,
    window_s: float = 0.0,
    seed: int = 1,
    *,
    timing: Timing | None = None,
    firmware: Firmware | None = None,
    payload: Payload | None = None,
    network: Network | None = None,
) -> StormPlan:
    if n < 1:
        raise PlanError("a storm needs at least one node")
    net = network or Network()
    _check_network(net)
    addresses = node_addresses(net.node_net, n)
    offsets = start_offsets(n, window_s, seed)
    nodes = tuple(
        NodeSpec(i, node_name(i), node_mac(i), addresses[i], offsets[i]) for i in range(n)
    )
    return StormPlan(n, window_s, seed, nodes, timing or Timing(), firmware or Firmware(),
                     payload or Payload(), net)


def _check_network(net: Network) -> None:
    try:
        subnet = ipaddress.ip_network(net.cidr)
        nodes = ipaddress.ip_network(net.node_net)
        server, client = ipaddress.ip_address(net.server_ip), ipaddress.ip_address(net.client_ip)
    except ValueError as exc:
        raise PlanError(f"bad storm network: {exc}") from None
    if not nodes.subnet_of(subnet):  # type: ignore[arg-type]
        raise PlanError(f"node network {nodes} must lie inside {subnet}")
    if server in nodes or client in nodes:
        raise PlanError(f"server and client addresses must lie outside {nodes}")
