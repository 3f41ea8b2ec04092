"""Per-node iPXE scripts rendered from a boot decision. Pure: values in, text out.

Every script a node gets ends in a state that cannot strand it at an iPXE
prompt: when a download or ``boot`` fails, the script sleeps and chains the
node's script URL again (the testbed's WAIT), so fixing the inventory is
enough to get a stuck node going.

Local-disk boot differs by firmware, so the script asks iPXE which one it runs on:

* **BIOS** (``${platform}`` = ``pcbios``): ``sanboot --no-describe --drive 0x80``
  hands INT 13h drive 0x80 (the first hard disk) to its MBR directly; it works
  wherever the NIC sits in the boot order. If there is no bootable disk,
  ``exit 1`` returns to the BIOS, which tries its next boot device.
* **UEFI** (``efi``): ``sanboot --drive 0x80`` only reaches drives iPXE itself
  attached (iSCSI, HTTP SAN), not the local disk, so the script ends iPXE with
  ``exit 1``: the error makes the firmware's boot manager go on with the next
  boot option, which is the disk when the NIC is first in the boot order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from fleetboot.boot.decision import BootDecision
from fleetboot.errors import FleetbootError
from fleetboot.inventory.models import BootAction, BootProfile, ProfileKind

SCRIPT_PATH = "/boot/script.ipxe"
FILES_PATH = "/boot/files/"
# The iPXE image name the kernel's EFI stub looks for (``initrd=`` on its command line).
INITRD_NAME = "initrd"

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ScriptError(FleetbootError):
    pass


@dataclass(frozen=True)
class ProfileSpec:
    """The parts of a boot profile a script needs (detached from the database)."""

    name: str
    kind: ProfileKind
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    script: str | None = None

    @classmethod
    def of(cls, profile: BootProfile) -> ProfileSpec:
        return cls(profile.name, profile.kind, profile.kernel, profile.initrd,
                   profile.cmdline or "", profile.script)


@dataclass(frozen=True)
class Urls:
    """Where nodes reach the HTTP server, e.g. ``http://10.0.0.1:8080``."""

    base: str

    @property
    def script(self) -> str:
        return self.base.rstrip("/") + SCRIPT_PATH

    def file(self, path: str) -> str:
        """A profile's kernel/initrd: a full URL as given, else a path under the boot root."""
        if _URL.match(path):
            return path
        return self.base.rstrip("/") + FILES_PATH + quote(path.lstrip("/"), safe="/-._~+")


@dataclass(frozen=True)
class Who:
    """Whom a script is for; shown in its header and messages."""

    node: str | None
    mac: str | None
    address: str

    def label(self) -> str:
        if self.node:
            return f"node {self.node}"
        return f"unknown machine {self.mac or self.address}"


# iPXE splits a line into words and treats these words as command separators.
_TERMINATORS = frozenset({"||", "&&", ";"})


def one_line(text: str) -> str:
    """Text safe inside one iPXE command: no newline (a new command) and no
    separator words (``||``, ``&&``, ``;``), which iPXE would run as control flow."""
    words = _CONTROL.sub(" ", text).split()
    return " ".join(w for w in words if w not in _TERMINATORS)


# --- the pieces ---------------------------------------------------------------------------


def _retry(urls: Urls, label: str, wait_seconds: int, message: str) -> list[str]:
    # `chain --replace` frees this script first, so an endless WAIT loop uses no memory.
    return [
        f":{label}",
        f"echo Fleetboot: {one_line(message)} - asking again in {wait_seconds} s",
        f"sleep {wait_seconds}",
        f"chain --replace --autofree {urls.script} || goto {label}",
    ]


def _kernel_lines(profile: ProfileSpec, urls: Urls, extra_args: str, fail: str) -> list[str]:
    if not profile.kernel:
        raise ScriptError(f"profile {profile.name!r} has no kernel")
    args = []
    if profile.initrd:
        args.append(f"initrd={INITRD_NAME}")  # EFI stub kernels find the initrd by this name
    args += [one_line(profile.cmdline), one_line(extra_args)]
    cmdline = " ".join(a for a in args if a)
    lines = [f"echo Fleetboot: booting profile {one_line(profile.name)}",
             f"kernel {urls.file(profile.kernel)} {cmdline}".rstrip() + f" || goto {fail}"]
    if profile.initrd:
        lines.append(f"initrd --name {INITRD_NAME} {urls.file(profile.initrd)} || goto {fail}")
    lines.append(f"boot || goto {fail}")
    return lines


def _local_lines(fail: str) -> list[str]:
    return [
        "echo Fleetboot: booting from the local disk",
        "iseq ${platform} efi && goto local_efi ||",
        f"sanboot --no-describe --drive 0x80 || goto {fail}",
        ":local_efi",
        "exit 1",
    ]


def _local_fail_lines(fail: str) -> list[str]:
    # Neither sanboot nor the firmware could boot a disk: hand back to the firmware.
    return [f":{fail}", "echo Fleetboot: no bootable local disk - returning to the firmware",
            "exit 1"]


def _header(who: Who, what: str) -> list[str]:
    mac = f" ({who.mac})" if who.mac and who.node else ""
    return ["#!ipxe", f"# Fleetboot: {one_line(who.label())}{mac}: {one_line(what)}"]


def _custom_script(profile: ProfileSpec, extra_args: str) -> str:
    """A profile's own iPXE script; the hook's arguments are offered as ${fleetboot-args}."""
    text = (profile.script or "").replace("\r\n", "\n")
    first, _, rest = text.partition("\n")
    if not first.strip().startswith("#!ipxe"):
        rest = text
    setting = f"set fleetboot-args {one_line(extra_args)}" if extra_args.strip() else ""
    return "\n".join(x for x in ("#!ipxe", setting, rest.rstrip("\n")) if x) + "\n"


# --- whole scripts --------------------------------------------------------------------------


def render_profile(profile: ProfileSpec, urls: Urls, who: Who, *, wait_seconds: int,
                   extra_args: str = "", why: str = "") -> str:
    if profile.kind is ProfileKind.IPXE:
        return _custom_script(profile, extra_args)
    lines = _header(who, f"profile {profile.name} {why}".strip())
    lines += _kernel_lines(profile, urls, extra_args, "failed")
    lines += _retry(urls, "failed", wait_seconds, f"booting profile {profile.name} failed")
    return "\n".join(lines) + "\n"


def render_local(who: Who, why: str = "") -> str:
    lines = _header(who, f"local disk {why}".strip())
    lines += _local_lines("local_failed") + _local_fail_lines("local_failed")
    return "\n".join(lines) + "\n"


def render_wait(urls: Urls, who: Who, *, wait_seconds: int, why: str = "",
                message: str | None = None) -> str:
    """Sleep ``wait_seconds`` and ask again; ``message`` replaces the default console line."""
    lines = _header(who, f"wait {why}".strip())
    lines += _retry(urls, "wait", wait_seconds,
                    message or f"nothing to boot yet for {who.label()}")
    return "\n".join(lines) + "\n"


def render_choice(action: BootAction, profile: ProfileSpec | None, rule: str, urls: Urls,
                  who: Who, *, wait_seconds: int, extra_args: str = "") -> str:
    """The script for a boot action (and its profile) chosen by ``rule``."""
    why = f"(decided by {rule})"
    if action is BootAction.PROFILE:
        if profile is None:
            raise ScriptError(f"{who.label()}: boot action 'profile' without a profile")
        return render_profile(profile, urls, who, wait_seconds=wait_seconds,
                              extra_args=extra_args, why=why)
    if action is BootAction.LOCAL:
        return render_local(who, why)
    return render_wait(urls, who, wait_seconds=wait_seconds, why=why)


def render_decision(decision: BootDecision, urls: Urls, who: Who, *, wait_seconds: int,
                    extra_args: str = "") -> str:
    """The script for a node's boot decision (ORM objects; see :func:`render_choice`)."""
    profile = ProfileSpec.of(decision.profile) if decision.profile is not None else None
    return render_choice(decision.action, profile, decision.rule, urls, who,
                         wait_seconds=wait_seconds, extra_args=extra_args)


def render_menu(entries: Sequence[ProfileSpec], urls: Urls, who: Who, *, wait_seconds: int,
                timeout_s: int, default: str = "wait") -> str:
    """A menu for a machine not in the inventory: the listed profiles, local disk, wait.

    ``default`` ("wait", "local" or a profile name) is chosen after ``timeout_s``
    (0: wait for a key press forever). iPXE-script profiles are chained from
    the boot root only by kernel profiles, so the menu offers kernel profiles.
    """
    items = [(f"p{i}", e) for i, e in enumerate(entries) if e.kind is ProfileKind.KERNEL]
    names = {e.name: key for key, e in items}
    default_key = names.get(default, default if default in ("local", "wait") else "wait")
    lines = _header(who, "menu for unknown machines")
    lines += [f"menu Fleetboot: {one_line(who.label())} is not in the inventory",
              "item --gap Boot profiles:"]
    lines += [f"item {key} {one_line(e.name)}" for key, e in items]
    lines += ["item --gap Other:", "item local Boot from the local disk",
              "item wait Ask the server again",
              f"choose --default {default_key} --timeout {timeout_s * 1000} target"
              " && goto ${target} || goto wait"]
    for key, entry in items:
        lines += [f":{key}", *_kernel_lines(entry, urls, "", "failed")]
    lines += [":local", *_local_lines("local_failed"), *_local_fail_lines("local_failed")]
    lines += _retry(urls, "failed", wait_seconds, "booting the chosen profile failed")
    lines += _retry(urls, "wait", wait_seconds, f"nothing chosen for {who.label()}")
    return "\n".join(lines) + "\n"
