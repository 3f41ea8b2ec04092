"""Serve ``grub/grub.cfg`` per requester, from the decision the iPXE script takes.

A network GRUB asks for ``grub/grub.cfg`` (over TFTP, or ``/boot/files/grub/grub.cfg``
over HTTP). The boot-file source knows the requester's MAC from its lease, so the
file is rendered for that node: :meth:`ScriptService.script` takes the decision
(precedence, one-shot consumption, admission control, the per-boot token and
configuration URL from the node-config hook) exactly as for ``script.ipxe``, and
:mod:`fleetboot.boot.grub` writes it in GRUB's language.
"""

from __future__ import annotations

import ipaddress
import logging

from fleetboot.boot import grub
from fleetboot.boot.files import BootFileSource, BootPathRefused, RequestContext
from fleetboot.boot.ipxe import ScriptError, Who
from fleetboot.config import Settings
from fleetboot.server.scripts import ScriptRefused, ScriptService, ServedScript

log = logging.getLogger("fleetboot.server.grubcfg")


def grub_paths(settings: Settings) -> grub.GrubPaths:
    """Boot-root files over TFTP from ``server_address``; if that is the wildcard, from
    the server GRUB read its configuration from."""
    try:
        wildcard = ipaddress.ip_address(settings.server_address).is_unspecified
    except ValueError:
        wildcard = False
    return grub.GrubPaths(None if wildcard else settings.server_address)


def render_served(served: ServedScript, paths: grub.GrubPaths, wait_seconds: int) -> str:
    """The GRUB configuration for what the script service decided. Pure."""
    decided = served.decided
    if decided is None:  # a menu for unknown machines: GRUB gets no menu, it waits
        who = Who(None, None, "")
        return grub.render_wait(who, wait_seconds=wait_seconds,
                                message="this machine is not in the inventory (add it with "
                                        "fleetboot node add)")
    try:
        return grub.render_choice(decided.action, decided.profile, decided.rule, paths,
                                  decided.who, wait_seconds=decided.wait_seconds,
                                  extra_args=decided.extra_args)
    except ScriptError as exc:  # e.g. an iPXE-script profile: wait, and say why
        return grub.render_wait(decided.who, wait_seconds=decided.wait_seconds,
                                message=str(exc))


class GrubConfigs:
    """The boot-file provider for ``grub/grub.cfg``."""

    def __init__(self, scripts: ScriptService, settings: Settings) -> None:
        self.scripts = scripts
        self.settings = settings
        self.paths = grub_paths(settings)

    async def provide(self, name: str, ctx: RequestContext) -> bytes:
        try:
            served = await self.scripts.script(ctx.client_mac, ctx.client_ip)
        except ScriptRefused as exc:
            raise BootPathRefused(str(exc)) from None  # TFTP error 2 / HTTP 403
        return render_served(served, self.paths, self.settings.http.wait_seconds).encode()


def register_grub_configs(source: BootFileSource, scripts: ScriptService,
                          settings: Settings) -> None:
    """Serve ``grub/grub.cfg`` from ``source`` (TFTP and HTTP ``/boot/files/``)."""
    if any(p.pattern == grub.CONFIG_FILE for p in source.providers):
        return
    # ttl 0: the script service shares and reuses renders itself.
    source.add_provider(grub.CONFIG_FILE, GrubConfigs(scripts, settings).provide, ttl=0)
