"""One simulated machine booting, phase by phase, like the real thing.

power on -> PXE firmware DHCP -> TFTP of iPXE -> iPXE's DHCP -> iPXE script,
kernel and initrd over HTTP (one persistent connection) -> the OS's DHCP
(another client-id) -> the configuration fetch -> the UP report.

Every phase is timed; retransmissions are counted where they happen. The
first phase that fails ends the node's boot (real firmware would give up or
reboot), and the node is reported as failed in that phase.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

from fleetboot.errors import FleetbootError
from fleetboot.inventory.addr import mac_to_bytes
from fleetboot.storm import dhcpc, dhcpwire, ipxe, tftpc
from fleetboot.storm.httpc import HttpClient, Response
from fleetboot.storm.plan import NodeSpec, StormPlan
from fleetboot.storm.stats import NodeResult, PhaseRecord

T = TypeVar("T")
# iPXE follows `chain --replace` forever; a bound keeps a broken script from looping the
# simulator. A WAIT loop (sleep, chain) needs one round per few seconds of waiting.
MAX_CHAINS = 200


class BootFailed(FleetbootError):
    def __init__(self, message: str, retries: int = 0) -> None:
        super().__init__(message)
        self.retries = retries


@dataclass
class Booted:
    """What the OS knows once it runs: its address and its kernel command line."""

    spec: NodeSpec
    address: str
    script: ipxe.BootScript
    server: str  # the DHCP server that gave the OS its lease


class ConfigAgent(Protocol):
    """How the booted OS gets its configuration and reports UP on a given stack."""

    async def fetch_config(self, http: HttpClient, node: Booted) -> dict[str, Any]: ...

    async def report_up(self, http: HttpClient, node: Booted) -> None: ...


class StaticAgent:
    """Classic stack: a pre-rendered file per node; the UP report is a logged GET."""

    async def fetch_config(self, http: HttpClient, node: Booted) -> dict[str, Any]:
        url = _param(node, "storm.config")
        doc = json_object(await http.request("GET", url, keep_body=True), url)
        if doc.get("hostname") != node.spec.name:
            raise BootFailed(f"{url} is not this node's configuration")
        return doc

    async def report_up(self, http: HttpClient, node: Booted) -> None:
        url = _param(node, "storm.report") + "?state=UP"
        expect_status(await http.request("GET", url), url, (200, 204))


def _param(node: Booted, key: str) -> str:
    value = node.script.param(key)
    if not value:
        raise BootFailed(f"the kernel command line has no {key}=")
    return value


def expect_status(response: Response, url: str, ok: tuple[int, ...] = (200,)) -> Response:
    if response.status not in ok:
        detail = response.body[:120].decode(errors="replace")
        raise BootFailed(f"GET {url}: HTTP {response.status} {detail}".strip())
    return response


def json_object(response: Response, url: str) -> dict[str, Any]:
    expect_status(response, url)
    try:
        doc = json.loads(response.body)
    except ValueError:
        raise BootFailed(f"{url} did not return JSON") from None
    if not isinstance(doc, dict):
        raise BootFailed(f"{url} did not return a JSON object")
    return doc


@dataclass
class Context:
    plan: StormPlan
    link: dhcpc.DhcpLink
    agent: ConfigAgent
    t0: float  # loop time of the storm start
    rng: random.Random


class _Recorder:
    """Runs phases and writes them into the node's result."""

    def __init__(self, ctx: Context, result: NodeResult) -> None:
        self.ctx = ctx
        self.result = result
        self.loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self.loop.time() - self.ctx.t0

    async def phase(self, name: str, step: Callable[[], Awaitable[T]],
                    retries_of: Callable[[T], int] = lambda _: 0,
                    detail_of: Callable[[T], dict[str, Any]] = lambda _: {}) -> T:
        start = self.now()
        try:
            value = await step()
        except (FleetbootError, OSError, TimeoutError) as exc:
            self._failed(name, start, exc, str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug fails this node, visibly, not the whole storm
            self._failed(name, start, exc, f"internal error {type(exc).__name__}: {exc}")
        self.result.phases.append(
            PhaseRecord(name, start, self.now(), retries_of(value), detail_of(value)))
        return value


    def _failed(self, name: str, start: float, exc: Exception, message: str) -> NoReturn:
        retries = int(getattr(exc, "retries", 0))
        self.result.phases.append(PhaseRecord(name, start, self.now(), retries))
        self.result.failed_phase, self.result.error = name, message
        raise BootFailed(message) from None


def _timing(http: HttpClient) -> dict[str, Any]:
    """Where the last request's time went: opening the connection, waiting for the answer."""
    last = http.last
    if last is None:
        return {}
    return {"connect_ms": round(last.connect_s * 1000, 2), "head_ms": round(last.head_s * 1000, 2),
            "status": last.status}


def _lease_detail(lease: dhcpc.Lease) -> dict[str, Any]:
    return {"address": lease.address, "file": lease.file}


async def boot(spec: NodeSpec, ctx: Context) -> NodeResult:
    """Power the node on at its planned offset and boot it to UP (or to its failure)."""
    result = NodeResult(spec.name, spec.mac, spec.start_s)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, ctx.t0 + spec.start_s - loop.time()))
    rec = _Recorder(ctx, result)
    try:
        await _boot(spec, ctx, rec)
        result.up_at = rec.now()
    except BootFailed:
        pass
    return result


async def _boot(spec: NodeSpec, ctx: Context, rec: _Recorder) -> None:
    script = await _firmware_stage(spec, ctx, rec)
    if ctx.plan.timing.os_boot_s > 0:
        await asyncio.sleep(ctx.plan.timing.os_boot_s)
    await _os_stage(spec, ctx, rec, script)


async def _firmware_stage(spec: NodeSpec, ctx: Context, rec: _Recorder) -> ipxe.BootScript:
    """PXE DHCP, TFTP of iPXE, iPXE's DHCP, its script, kernel and initrd."""
    fw, timing = ctx.plan.firmware, ctx.plan.timing
    hw = mac_to_bytes(spec.mac)
    pxe = dhcpwire.pxe_personality(hw, fw.arch, fw.pxe_vendor_class, fw.broadcast_flag)
    lease = await rec.phase("pxe_dhcp", lambda: _firmware_lease(ctx, spec, pxe),
                            lambda lz: lz.retries, _lease_detail)
    await rec.phase("tftp", lambda: tftpc.fetch(
        lease.boot_server, lease.file, lease.address, blksize=fw.tftp_blksize,
        tsize_probe=fw.tftp_tsize_probe, schedule=timing.tftp),
        lambda r: r.retries, lambda r: {"size": r.size, "blksize": r.blksize,
                                        "server_duplicates": r.duplicates})
    ipxe_who = dhcpwire.ipxe_personality(hw, fw.arch, fw.ipxe_vendor_class, fw.broadcast_flag)
    ilease = await rec.phase("ipxe_dhcp", lambda: dhcpc.obtain_lease(
        ctx.link, spec.mac, ipxe_who, timing.ipxe_dhcp, timing.ipxe_dhcp, ctx.rng,
        proxy=_proxy(ctx)),
        lambda lz: lz.retries, _lease_detail)
    http = HttpClient(ilease.address, timing.http_idle_s)
    try:
        script = await rec.phase("script", lambda: _fetch_script(http, spec, ilease),
                                 detail_of=lambda _: _timing(http))
        await _load_images(rec, http, script)
    finally:
        http.close()  # the OS takes over: iPXE's connection goes away
    return script


async def _os_stage(spec: NodeSpec, ctx: Context, rec: _Recorder,
                    script: ipxe.BootScript) -> None:
    """The booted OS: its own DHCP, the configuration fetch, the UP report."""
    fw, timing = ctx.plan.firmware, ctx.plan.timing
    os_who = dhcpwire.os_personality(mac_to_bytes(spec.mac), fw.os_vendor_class,
                                     fw.broadcast_flag)
    olease = await rec.phase("os_dhcp", lambda: dhcpc.obtain_lease(
        ctx.link, spec.mac, os_who, timing.os_dhcp, timing.os_dhcp, ctx.rng),
        lambda lz: lz.retries, _lease_detail)
    booted = Booted(spec, olease.address, script, olease.server_id)
    os_http = HttpClient(olease.address, timing.http_idle_s, user_agent="storm-node/1")
    try:
        await rec.phase("config", lambda: ctx.agent.fetch_config(os_http, booted),
                        detail_of=lambda _: _timing(os_http))
        os_http.close()  # a shell client: one connection per request
        await rec.phase("up", lambda: ctx.agent.report_up(os_http, booted),
                        detail_of=lambda _: _timing(os_http))
    finally:
        os_http.close()


async def _firmware_lease(ctx: Context, spec: NodeSpec, who: dhcpwire.Personality) -> dhcpc.Lease:
    timing = ctx.plan.timing
    lease = await dhcpc.obtain_lease(ctx.link, spec.mac, who, timing.pxe_discover,
                                     timing.pxe_request, ctx.rng, proxy=_proxy(ctx))
    if not lease.file:
        raise BootFailed("the ACK names no boot file", lease.retries)
    return lease


def _proxy(ctx: Context) -> bool:
    """Beside a proxyDHCP server the firmware waits for its boot offer too."""
    return ctx.plan.stack.kind == "proxy"


async def _fetch_script(http: HttpClient, spec: NodeSpec, lease: dhcpc.Lease) -> ipxe.BootScript:
    variables = ipxe.node_variables(spec.mac, lease.address, spec.name)
    url = ipxe.expand(lease.file, variables)  # iPXE expands settings in its boot file name
    for _ in range(MAX_CHAINS):
        if not url.startswith("http://"):
            raise BootFailed(f"iPXE was given {url!r}, not an http:// script URL")
        response = expect_status(await http.request("GET", url, keep_body=True), url)
        script = ipxe.parse(response.body.decode(errors="replace"), url, variables)
        if script.local is not None:
            raise BootFailed(f"the script boots the local disk ({script.local})")
        if script.chain is None:
            if script.kernel is None:
                raise BootFailed("the script loads no kernel")
            return script
        if script.sleep_s:
            await asyncio.sleep(script.sleep_s)
        url = script.chain
    raise BootFailed(f"more than {MAX_CHAINS} chained scripts")


async def _load_images(rec: _Recorder, http: HttpClient, script: ipxe.BootScript) -> None:
    assert script.kernel is not None
    kernel = script.kernel
    await rec.phase("kernel", lambda: _download(http, kernel), detail_of=_size)
    initrds = list(script.initrds)
    await rec.phase("initrd", lambda: _download_all(http, initrds), detail_of=_size)


def _size(response: Response | int) -> dict[str, Any]:
    if isinstance(response, Response):
        return {"size": response.size, "head_ms": round(response.head_s * 1000, 2)}
    return {"size": response}


async def _download(http: HttpClient, url: str) -> Response:
    response = expect_status(await http.request("GET", url), url)
    declared = response.headers.get("content-length")
    if declared is not None and int(declared) != response.size:
        raise BootFailed(f"{url}: got {response.size} of {declared} bytes")
    return response


async def _download_all(http: HttpClient, urls: list[str]) -> int:
    total = 0
    for url in urls:
        total += (await _download(http, url)).size
    return total


__all__ = ["BootFailed", "Booted", "ConfigAgent", "Context", "StaticAgent", "boot"]
