"""What a simulated iPXE does with the script it is given. Pure.

Only the commands a boot script needs are understood: ``kernel``/``chain``
with a URL and arguments, ``initrd``/``module``/``imgfetch``, ``imgargs``,
``set``, ``boot``, ``sleep`` (before a ``chain``: a WAIT script asks again
later), and the ways to give up on a network boot (``exit``, ``sanboot``).
Everything else (``echo``, ``dhcp``, labels) is ignored. Variables such as
``${mac}`` or ``${net0/ip}`` are expanded from the node's settings, URLs
relative to the script's own URL are resolved like iPXE does, and
``cmd || fallback`` runs ``cmd`` only.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urljoin

from fleetboot.errors import FleetbootError

_VAR = re.compile(r"\$\{([^}]*)\}")
# Options of iPXE image commands that take a value.
_VALUED_FLAGS = {"--name", "-n", "--timeout", "-t"}
_IMAGE_COMMANDS = {"kernel", "chain", "imgexec", "initrd", "module", "imgfetch", "imgload"}
_LOCAL_BOOT = {"exit", "sanboot", "poweroff", "reboot", "shell"}


class ScriptError(FleetbootError):
    pass


@dataclass
class BootScript:
    """What the script asks iPXE to boot."""

    kernel: str | None = None  # absolute URL
    cmdline: str = ""
    initrds: list[str] = field(default_factory=list)  # absolute URLs, in order
    chain: str | None = None  # another script to fetch and run instead
    local: str | None = None  # the command that ends the network boot (exit, sanboot, ...)
    sleep_s: float = 0.0  # seconds iPXE sleeps before it follows ``chain``

    def param(self, key: str) -> str | None:
        """The value of ``key=value`` on the kernel command line (last one wins)."""
        found = None
        for word in self.cmdline.split():
            name, eq, value = word.partition("=")
            if eq and name == key:
                found = value
        return found


def expand(text: str, variables: dict[str, str]) -> str:
    """Expand ``${name}`` and ``${name:type}``; unknown names become empty, as in iPXE."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        base, _, kind = name.partition(":")
        value = variables.get(base, "")
        if kind == "hexhyp":
            return value.replace(":", "-")
        if kind == "hexraw":
            return value.replace(":", "")
        return value

    return _VAR.sub(one, text)


def node_variables(mac: str, ip: str, hostname: str = "") -> dict[str, str]:
    values = {"mac": mac, "ip": ip, "hostname": hostname}
    for key, value in list(values.items()):
        values[f"net0/{key}"] = value
        values[f"netX/{key}"] = value
    return values


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError as exc:
        raise ScriptError(f"cannot read script line {line!r}: {exc}") from None


def _strip_flags(words: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in _VALUED_FLAGS:
            skip = True
        elif word.startswith("-") and not out:
            continue  # a flag before the URL (--autofree, --replace, --name=x)
        else:
            out.append(word)
    return out


def parse(text: str, base_url: str, variables: dict[str, str]) -> BootScript:
    """Run the script far enough to know what would be booted."""
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or not lines[0].startswith("#!ipxe"):
        raise ScriptError("not an iPXE script (the first line must be #!ipxe)")
    script = BootScript()
    env = dict(variables)
    for raw in lines[1:]:
        line = raw.split("||", 1)[0].split("&&", 1)[0].strip()
        if not line or line.startswith(("#", ":")):
            continue
        words = _words(expand(line, env))
        if not words:
            continue
        command, args = words[0], words[1:]
        if command == "set" and args:
            env[args[0]] = " ".join(args[1:])
        elif command in _IMAGE_COMMANDS:
            _image(script, command, _strip_flags(args), base_url)
        elif command == "sleep":
            script.sleep_s += _seconds(args)
        elif command == "imgargs" and len(args) >= 1:
            script.cmdline = " ".join(args[1:])
        elif command in _LOCAL_BOOT:
            script.local = command
            break
        elif command == "boot":
            break
        if script.chain is not None:
            break
    return script


def _seconds(args: list[str]) -> float:
    try:
        return max(0.0, float(args[0])) if args else 0.0
    except ValueError:
        raise ScriptError(f"sleep needs a number of seconds, not {args[0]!r}") from None


def _image(script: BootScript, command: str, args: list[str], base_url: str) -> None:
    if not args:
        raise ScriptError(f"{command} without a URL")
    url = urljoin(base_url, args[0])
    if command in {"kernel", "imgexec"} or (command == "chain" and script.kernel is not None):
        script.kernel, script.cmdline = url, " ".join(args[1:])
    elif command == "chain":
        script.chain = url
    elif command == "imgload":
        script.kernel = url
    else:
        script.initrds.append(url)
