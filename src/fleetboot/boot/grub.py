"""Per-node GRUB configurations rendered from a boot decision. Pure: values in, text out.

GRUB is the second boot program beside iPXE: Secure Boot firmware runs only signed
programs (Debian's shim, then Debian's signed network GRUB, ``grubnetx64.efi``), and
Debian ships no iPXE for ARM64 but ships ``grubnetaa64.efi``. A network GRUB asks
its TFTP server for exactly one file, ``grub/grub.cfg`` (``prefix=(tftp,SERVER)/grub``),
so Fleetboot renders that file per requester from the same decision, profile and
per-boot arguments (token, configuration URL) as the iPXE script.

Files under the boot root are fetched over TFTP (``(tftp,SERVER)/path``): GRUB's TFTP
is what its network image was started with, and it works the same on every
architecture. A profile kernel given as a full ``http://`` URL is fetched with
GRUB's HTTP module (``(http,HOST:PORT)/path``).

Every configuration ends in a state that cannot strand the node at a ``grub>``
prompt: a failed download or boot waits and reloads the configuration, which asks
the server again (the iPXE script's WAIT).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from fleetboot.boot.ipxe import ProfileSpec, ScriptError, Who
from fleetboot.inventory.models import BootAction, ProfileKind

CONFIG_FILE = "grub/grub.cfg"  # the one name a network GRUB asks for

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def quoted(text: str) -> str:
    """A single-quoted GRUB word: nothing inside is expanded or splits a command."""
    clean = _UNSAFE.sub(" ", text)
    return "'" + clean.replace("'", "'\\''") + "'"


def _words(text: str) -> str:
    """Kernel arguments as separate quoted words (GRUB would expand ``$`` and ``;``)."""
    return " ".join(quoted(w) for w in _UNSAFE.sub(" ", text).split())


@dataclass(frozen=True)
class GrubPaths:
    """Where GRUB fetches files: the TFTP server (the boot root) by address, or (None)
    the device GRUB read this configuration from (``$root``, its TFTP server)."""

    tftp_server: str | None = None

    def file(self, path: str) -> str:
        if "://" in path:
            url = urlsplit(path)
            if url.scheme not in ("http", "tftp") or not url.hostname:
                raise ScriptError(f"GRUB cannot fetch {path!r}: use a path under the boot "
                                  "root or an http:// or tftp:// URL")
            host = url.hostname + (f":{url.port}" if url.port else "")
            return quoted(f"({url.scheme},{host}){url.path or '/'}")
        if self.tftp_server is None:
            # Double quotes: GRUB expands $root; the path itself cannot hold a quote.
            return '"($root)/' + path.lstrip("/").replace('"', "").replace("$", "") + '"'
        return quoted(f"(tftp,{self.tftp_server})/{path.lstrip('/')}")


def _header(who: Who, what: str) -> list[str]:
    mac = f" ({who.mac})" if who.mac and who.node else ""
    return [f"# Fleetboot: {_UNSAFE.sub(' ', who.label())}{mac}: {_UNSAFE.sub(' ', what)}",
            "set timeout=0"]


def _retry(wait_seconds: int, message: str) -> list[str]:
    # configfile re-reads grub/grub.cfg from the server: the next decision.
    note = f"Fleetboot: {message} - asking again in {wait_seconds} s"
    return [f"echo {quoted(note)}",
            f"sleep {wait_seconds}",
            'configfile "$prefix/grub.cfg"']


def _kernel_lines(profile: ProfileSpec, paths: GrubPaths, extra_args: str) -> list[str]:
    if profile.kind is not ProfileKind.KERNEL:
        raise ScriptError(f"profile {profile.name!r} is an iPXE script; GRUB boots kernel "
                          "profiles only (give the node a kernel profile or iPXE)")
    if not profile.kernel:
        raise ScriptError(f"profile {profile.name!r} has no kernel")
    args = _words(f"{profile.cmdline} {extra_args}")
    lines = [f"echo {quoted('Fleetboot: booting profile ' + profile.name)}",
             f"linux {paths.file(profile.kernel)} {args}".rstrip()]
    if profile.initrd:
        lines.append(f"initrd {paths.file(profile.initrd)}")
    lines.append("boot")
    return lines


def render_profile(profile: ProfileSpec, paths: GrubPaths, who: Who, *, wait_seconds: int,
                   extra_args: str = "", why: str = "") -> str:
    lines = _header(who, f"profile {profile.name} {why}".strip())
    # GRUB goes on after a failed command; reaching the end means nothing booted.
    lines += _kernel_lines(profile, paths, extra_args)
    lines += _retry(wait_seconds, f"booting profile {profile.name} failed")
    return "\n".join(lines) + "\n"


def render_local(who: Who, why: str = "") -> str:
    # `exit` hands control back to the firmware's boot manager, which goes on with the
    # next boot option (the disk when the NIC is first), as the iPXE script's `exit 1`.
    lines = _header(who, f"local disk {why}".strip())
    lines += [f"echo {quoted('Fleetboot: booting from the local disk')}", "exit 1"]
    return "\n".join(lines) + "\n"


def render_wait(who: Who, *, wait_seconds: int, why: str = "",
                message: str | None = None) -> str:
    lines = _header(who, f"wait {why}".strip())
    lines += _retry(wait_seconds, message or f"nothing to boot yet for {who.label()}")
    return "\n".join(lines) + "\n"


def render_choice(action: BootAction, profile: ProfileSpec | None, rule: str, paths: GrubPaths,
                  who: Who, *, wait_seconds: int, extra_args: str = "") -> str:
    """The GRUB configuration for a boot action (and its profile) chosen by ``rule``
    (the counterpart of :func:`fleetboot.boot.ipxe.render_choice`)."""
    why = f"(decided by {rule})"
    if action is BootAction.PROFILE:
        if profile is None:
            raise ScriptError(f"{who.label()}: boot action 'profile' without a profile")
        return render_profile(profile, paths, who, wait_seconds=wait_seconds,
                              extra_args=extra_args, why=why)
    if action is BootAction.LOCAL:
        return render_local(who, why)
    return render_wait(who, wait_seconds=wait_seconds, why=why)
