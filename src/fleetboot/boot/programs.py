"""Boot programs the architecture table may name, and where Debian ships them. Pure.

The architecture table (DHCP option 93 -> first boot program) names files under the
boot root. A name that points at nothing strands every client of that architecture
at its firmware, so start-up and ``fleetboot check`` compare the table with the
boot root and, for a missing file, say which Debian package ships it and where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class ShippedProgram:
    """A boot program as a Debian package installs it."""

    package: str
    source: str  # the file the package installs; copy it to the table's name

    def hint(self, name: str) -> str:
        return (f"install Debian's {self.package} and copy {self.source} to "
                f"<boot root>/{name}")


# Keyed by the file name (not the directory): "arm64/grubnetaa64.efi" is found as
# "grubnetaa64.efi". Signed images are copied without their ".signed" suffix.
SHIPPED: Mapping[str, ShippedProgram] = {
    "undionly.kpxe": ShippedProgram("ipxe", "/usr/lib/ipxe/undionly.kpxe"),
    "snponly.efi": ShippedProgram("ipxe", "/usr/lib/ipxe/snponly.efi"),
    "ipxe.efi": ShippedProgram("ipxe", "/usr/lib/ipxe/ipxe.efi"),
    "ipxe.pxe": ShippedProgram("ipxe", "/usr/lib/ipxe/ipxe.pxe"),
    "shimx64.efi": ShippedProgram("shim-signed", "/usr/lib/shim/shimx64.efi.signed"),
    "grubx64.efi": ShippedProgram(
        "grub-efi-amd64-signed", "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
    "grubnetx64.efi": ShippedProgram(
        "grub-efi-amd64-signed", "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
    "shimaa64.efi": ShippedProgram("shim-signed:arm64", "/usr/lib/shim/shimaa64.efi.signed"),
    "grubaa64.efi": ShippedProgram(
        "grub-efi-arm64-signed:arm64", "/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"),
    "grubnetaa64.efi": ShippedProgram(
        "grub-efi-arm64-signed:arm64", "/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"),
}


def shipped(name: str) -> ShippedProgram | None:
    """The Debian package that ships the boot program ``name`` (a boot-root path)."""
    return SHIPPED.get(PurePosixPath(name).name)


def _is_url(name: str) -> bool:
    return "://" in name


def _missing(code: int, arch_name: str, field: str, name: str) -> str:
    where = f"architecture {code} ({arch_name}) {field} {name!r}"
    program = shipped(name)
    if program is None:
        return (f"{where} does not exist under the boot root and no Debian package ships a "
                "file of that name; put the boot program there or point the entry at one "
                "that exists (architectures in fleetboot.yaml)")
    return f"{where} does not exist under the boot root; {program.hint(name)}"


def architecture_warnings(table: Mapping[int, tuple[str, str | None, str | None]],
                          exists: Callable[[str], bool]) -> list[str]:
    """One line per table entry that points at a missing file.

    ``table`` maps the option-93 code to (name, tftp_file, http_file); ``exists``
    says whether a path under the boot root is a file. URLs (``http://...``) and
    names with ``{http_host}`` placeholders are left to the network: they are not
    files here. Pure apart from ``exists``.
    """
    out = []
    for code in sorted(table):
        arch_name, tftp_file, http_file = table[code]
        for field, name in (("tftp_file", tftp_file), ("http_file", http_file)):
            if not name or _is_url(name) or "{" in name:
                continue
            if not exists(name.lstrip("/")):
                out.append(_missing(code, arch_name, field, name))
    return out
