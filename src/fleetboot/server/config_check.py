"""``fleetboot check``: every configuration mistake Fleetboot can see without booting.

The start-up warnings (boot root, server_address, the architecture table) plus what
needs the inventory: profiles whose kernel or initrd is not under the boot root.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetboot.boot.ipxe import ProfileSpec
from fleetboot.config import Settings
from fleetboot.inventory.models import BootProfile, ProfileKind
from fleetboot.server.startup_checks import startup_warnings


def profile_image_warnings(profiles: Iterable[ProfileSpec],
                           exists: Callable[[str], bool]) -> list[str]:
    """One line per kernel/initrd a profile names that is not a file (URLs are left to
    the network). Pure apart from ``exists``."""
    out = []
    for prof in profiles:
        if prof.kind is not ProfileKind.KERNEL:
            continue
        for role, path in (("kernel", prof.kernel), ("initrd", prof.initrd)):
            if not path or "://" in path:
                continue
            if not exists(path.lstrip("/")):
                out.append(f"profile {prof.name!r} {role} {path} does not exist under the "
                           f"boot root; store it (fleetboot image add FILE) and point the "
                           f"profile at the printed path (fleetboot profile add {prof.name} "
                           f"--{role} PATH)")
    return out


def architecture_url_warnings(settings: Settings,
                              probe: Callable[[str], str | None]) -> list[str]:
    """Table entries naming a URL that does not answer; ``probe`` returns why not (or
    None). URLs with ``{http_host}`` placeholders are Fleetboot's own: not probed."""
    out = []
    for code in sorted(settings.architectures):
        entry = settings.architectures[code]
        for field, name in (("tftp_file", entry.tftp_file), ("http_file", entry.http_file)):
            if not name or "://" not in name or "{" in name:
                continue
            why = probe(name)
            if why is not None:
                out.append(f"architecture {code} ({entry.name}) {field} {name} does not "
                           f"answer ({why}); fix the URL or the server behind it")
    return out


def head_url(url: str, timeout_s: float = 3.0) -> str | None:
    """Why ``url`` does not answer a HEAD with 2xx (None: it does)."""
    if not url.startswith(("http://", "https://")):
        return None  # tftp:// and others: nothing to ask without a client of that kind
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _under(root: Path) -> Callable[[str], bool]:
    resolved = root.resolve()

    def exists(path: str) -> bool:
        target = (resolved / path).resolve()
        return target.is_relative_to(resolved) and target.is_file()  # nothing outside the root

    return exists


def check_configuration(settings: Settings, session: Session,
                        probe: Callable[[str], str | None] = head_url) -> list[str]:
    out = startup_warnings(settings) + architecture_url_warnings(settings, probe)
    root = Path(settings.boot_root)
    if root.is_dir():
        profiles = [ProfileSpec.of(p) for p in
                    session.scalars(select(BootProfile).order_by(BootProfile.name))]
        out += profile_image_warnings(profiles, _under(root))
    return out
