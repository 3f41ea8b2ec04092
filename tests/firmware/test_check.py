"""The architecture table is checked (issue 17, item 5): at start-up and by
``fleetboot check``, a boot program missing from the boot root is named together
with the Debian package that ships it; ``fleetboot check`` also names a missing boot
root, a server_address this host lacks and profiles whose kernel/initrd is gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleetboot.boot.ipxe import ProfileSpec
from fleetboot.boot.programs import SHIPPED, architecture_warnings, shipped
from fleetboot.cli.main import app
from fleetboot.config import ArchBoot, Settings, default_arch_table
from fleetboot.inventory.models import ProfileKind
from fleetboot.protocols.dhcp.settings import default_architectures
from fleetboot.server.config_check import (
    architecture_url_warnings,
    head_url,
    profile_image_warnings,
)
from fleetboot.server.startup_checks import startup_warnings

Entry = tuple[str, str | None, str | None]


def _table(**entries: tuple[str | None, str | None]) -> dict[int, Entry]:
    return {int(k[1:]): (f"arch {k}", t, h) for k, (t, h) in entries.items()}


def test_a_missing_program_names_file_and_package() -> None:
    warnings = architecture_warnings(_table(a11=("arm64/grubnetaa64.efi", None)),
                                     lambda _: False)
    assert len(warnings) == 1
    assert "architecture 11" in warnings[0] and "'arm64/grubnetaa64.efi'" in warnings[0]
    assert "grub-efi-arm64-signed:arm64" in warnings[0]
    assert "/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed" in warnings[0]


def test_an_unknown_program_says_no_package_ships_it() -> None:
    [line] = architecture_warnings(_table(a11=("arm64/snponly2.efi", None)), lambda _: False)
    assert "no Debian package ships" in line


def test_present_files_and_urls_are_fine() -> None:
    table = _table(a7=("snponly.efi", None), a16=(None, "http://10.0.0.1/ipxe.efi"),
                   a19=(None, "http://{http_host}:{http_port}/x.efi"))
    assert architecture_warnings(table, lambda name: name == "snponly.efi") == []


@given(st.dictionaries(st.integers(0, 40),
                       st.tuples(st.text(max_size=5), st.one_of(st.none(), st.text(max_size=20)),
                                 st.one_of(st.none(), st.text(max_size=20)))))
def test_every_missing_file_gets_exactly_one_line(table: dict) -> None:  # type: ignore[type-arg]
    names = [n for (_, t, h) in table.values() for n in (t, h)
             if n and "://" not in n and "{" not in n]
    assert len(architecture_warnings(table, lambda _: False)) == len(names)
    assert architecture_warnings(table, lambda _: True) == []


def test_every_default_program_is_shipped_by_a_debian_package() -> None:
    """No default entry (ARM64 included) points at a file nobody ships."""
    for table in (default_arch_table(), default_architectures()):
        for code, entry in table.items():
            for name in (entry.tftp_file, entry.http_file):
                if name:
                    assert shipped(name) is not None, (code, name)
    assert default_arch_table()[11].tftp_file == "arm64/grubnetaa64.efi"


def test_the_shipped_x86_programs_are_where_the_table_says() -> None:
    """The packages this machine has installed put the files where SHIPPED says."""
    for name in ("undionly.kpxe", "snponly.efi", "ipxe.efi", "shimx64.efi", "grubx64.efi"):
        source = Path(SHIPPED[name].source)
        if not source.exists():
            pytest.skip(f"{SHIPPED[name].package} not installed")
        assert source.is_file(), source


def test_startup_warns_about_the_missing_arm64_program(tmp_path: Path) -> None:
    for name in ("undionly.kpxe", "snponly.efi", "ipxe.efi"):
        (tmp_path / name).write_bytes(b"x")
    warnings = startup_warnings(Settings(server_address="0.0.0.0", boot_root=str(tmp_path)))
    assert len(warnings) == 2  # arch 11 (PXE) and 19 (HTTP) both name arm64/grubnetaa64.efi
    assert all("arm64/grubnetaa64.efi" in w and "grub-efi-arm64-signed" in w
               for w in warnings)


def test_profile_images_missing_from_the_boot_root() -> None:
    profiles = [ProfileSpec("good", ProfileKind.KERNEL, "images/a/vmlinuz", "images/a/initrd"),
                ProfileSpec("gone", ProfileKind.KERNEL, "images/b/vmlinuz", "images/b/initrd"),
                ProfileSpec("url", ProfileKind.KERNEL, "http://x/vmlinuz"),
                ProfileSpec("script", ProfileKind.IPXE, script="#!ipxe\nexit")]
    warnings = profile_image_warnings(profiles, lambda p: p.startswith("images/a/"))
    assert len(warnings) == 2
    assert all("profile 'gone'" in w for w in warnings)
    assert "kernel images/b/vmlinuz" in warnings[0] and "initrd images/b/initrd" in warnings[1]


def _run(tmp_path: Path, config: dict) -> tuple[int, str]:  # type: ignore[type-arg]
    path = tmp_path / "fleetboot.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["--config", str(path), "check"])
    return result.exit_code, " ".join(result.output.split())


def test_check_command_reports_every_mistake(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETBOOT_DB", raising=False)
    root = tmp_path / "root"
    root.mkdir()
    kernel = root / "vmlinuz"
    kernel.write_bytes(b"k")
    base = {"boot_root": str(root), "database": {"url": f"sqlite:///{tmp_path}/db.sqlite"},
            "architectures": {7: {"name": "x86-64 UEFI", "tftp_file": "snponly.efi"},
                              11: {"name": "ARM64 UEFI", "tftp_file": "arm64/grubnetaa64.efi"}}}
    path = tmp_path / "fleetboot.yaml"
    path.write_text(yaml.safe_dump(base))
    added = CliRunner().invoke(app, ["--config", str(path), "profile", "add", "p1",
                                     "--kernel", "vmlinuz"])
    assert added.exit_code == 0, added.output
    kernel.unlink()
    code, out = _run(tmp_path, base)
    assert code == 1
    assert "'snponly.efi' does not exist" in out and "ipxe" in out
    assert "'arm64/grubnetaa64.efi'" in out and "grub-efi-arm64-signed" in out
    assert "profile 'p1' kernel vmlinuz does not exist" in out
    if Path("/usr/lib/ipxe/snponly.efi").is_file():
        shutil.copy("/usr/lib/ipxe/snponly.efi", root / "snponly.efi")
        (root / "arm64").mkdir()
        (root / "arm64" / "grubnetaa64.efi").write_bytes(b"g")
        kernel.write_bytes(b"k")
        code, out = _run(tmp_path, base)
        assert (code, out) == (0, "configuration OK")
    code, out = _run(tmp_path, {**base, "boot_root": str(tmp_path / "nowhere"),
                                "server_address": "192.0.2.77"})
    assert code == 1 and "does not exist" in out


def test_check_asks_urls_in_the_table(tmp_path: Path) -> None:
    """A real HTTP server on loopback: the URL it serves passes, a 404 and a closed
    port are named."""
    import http.server
    import threading

    (tmp_path / "ipxe.efi").write_bytes(b"x")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(tmp_path), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        settings = Settings(boot_root=str(tmp_path), architectures={
            16: ArchBoot(name="ok", http_file=f"{base}/ipxe.efi"),
            19: ArchBoot(name="gone", http_file=f"{base}/arm64/none.efi"),
            15: ArchBoot(name="mine", http_file="http://{http_host}:{http_port}/x.efi"),
            7: ArchBoot(name="closed", tftp_file="http://127.0.0.1:1/x.efi")})
        warnings = architecture_url_warnings(settings, head_url)
    finally:
        server.shutdown()
        server.server_close()
    assert len(warnings) == 2
    assert warnings[0].startswith("architecture 7 (closed)") and "does not answer" in warnings[0]
    assert "architecture 19 (gone)" in warnings[1] and "HTTP 404" in warnings[1]
