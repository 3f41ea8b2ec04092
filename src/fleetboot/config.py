"""Fleetboot's configuration file (YAML), validated with pydantic.

One section per concern. Every field has a default that works for the embedded
set-up (SQLite in the working directory), so a missing file is a valid
configuration. Paths are resolved relative to the configuration file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetboot.errors import FleetbootError

DEFAULT_CONFIG_PATHS = ("fleetboot.yaml", "/etc/fleetboot/fleetboot.yaml")
_MAC_PREFIX = re.compile(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){0,5}")


class ConfigError(FleetbootError):
    pass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchBoot(_Section):
    """What a client architecture (DHCP option 93, IANA registry) boots first."""

    name: str
    tftp_file: str | None = None  # for PXE firmware: a file name under the boot root
    http_file: str | None = None  # for UEFI HTTP boot: a path under /boot/files/


def default_arch_table() -> dict[int, ArchBoot]:
    # IANA "Processor Architecture Types" for option 93; editable in the config file.
    return {
        0: ArchBoot(name="x86 BIOS", tftp_file="undionly.kpxe"),
        6: ArchBoot(name="x86 UEFI", tftp_file="snponly.efi"),
        7: ArchBoot(name="x86-64 UEFI", tftp_file="snponly.efi"),
        9: ArchBoot(name="x86-64 UEFI (EBC)", tftp_file="snponly.efi"),
        # ARM64: Debian ships no iPXE for it; its network GRUB (grub-efi-arm64-signed)
        # runs the same per-node grub.cfg. No package ships an ARM32 UEFI network boot
        # program, so code 10 is left out (add it here once you have one).
        11: ArchBoot(name="ARM64 UEFI", tftp_file="arm64/grubnetaa64.efi"),
        15: ArchBoot(name="x86 UEFI HTTP", http_file="ipxe.efi"),
        16: ArchBoot(name="x86-64 UEFI HTTP", http_file="ipxe.efi"),
        19: ArchBoot(name="ARM64 UEFI HTTP", http_file="arm64/grubnetaa64.efi"),
    }


class DatabaseSettings(_Section):
    url: str = "sqlite:///fleetboot.db"


class DhcpConfig(_Section):
    enabled: bool = True
    interfaces: list[str] = Field(default_factory=list)  # empty: all
    port: int = 67
    proxy: bool = False  # proxyDHCP (67 + 4011) beside another DHCP server
    unknown_clients: Literal["serve", "ignore"] = "serve"
    # A node's other NICs: an address without a boot file, no answer at all, or an
    # address for the OS but no answer to firmware (ignore_boot).
    non_boot_interfaces: Literal["address", "ignore", "ignore_boot"] = "address"
    journal_window_ms: float = 5.0  # lease group-commit window
    tx_pace_per_s: float = 30000.0  # reply pacing after a burst; 0 turns it off


class Dhcp6Config(_Section):
    """DHCPv6 (with boot file URLs) and router advertisements; off unless enabled."""

    enabled: bool = False
    interfaces: list[str] = Field(default_factory=list)  # empty: all with a global address
    server_address: str | None = None  # our IPv6 address in boot URLs; default: per link
    rapid_commit: bool = True
    # Off where another router advertises the link: two routers' RAs conflict.
    router_advertisements: bool = False
    ra_interval_s: float = 30.0
    ra_router_lifetime_s: int = 0  # 0: we are not a default router
    ra_autonomous: bool = False  # also let hosts form SLAAC addresses
    dual_stack: bool = True  # TFTP and HTTP also listen on [::] (separate IPv6-only sockets)
    boot_file_params: list[str] = Field(default_factory=list)  # DHCPv6 option 60


class TftpQuirkConfig(_Section):
    """Narrower TFTP settings for firmware that breaks on options or large blocks.

    Matched by ``network`` (an address or CIDR) and/or ``mac_prefix``
    ("52:54:00"); with both, both must match. The first matching quirk wins.
    """

    network: str | None = None
    mac_prefix: str | None = None
    disable_options: bool = False  # answer as RFC 1350 only: 512-byte blocks, no OACK
    max_blksize: int | None = Field(default=None, ge=8, le=65464)
    max_windowsize: int | None = Field(default=None, ge=1, le=65535)
    description: str = ""

    @model_validator(mode="after")
    def _matches_someone(self) -> TftpQuirkConfig:
        if self.network is None and self.mac_prefix is None:
            raise ValueError("a quirk needs `network` (e.g. 10.0.5.0/24) or `mac_prefix` "
                             "(e.g. 52:54:00) to say which clients it is for")
        if self.network is not None:
            try:
                ipaddress.ip_network(self.network, strict=False)
            except ValueError:
                raise ValueError(f"quirk network {self.network!r} is not an address or "
                                 "CIDR like 10.0.5.0/24") from None
        if self.mac_prefix is not None and not _MAC_PREFIX.fullmatch(self.mac_prefix):
            raise ValueError(f"quirk mac_prefix {self.mac_prefix!r} is not hex octets "
                             "separated by colons, like 52:54:00")
        return self


class TftpConfig(_Section):
    enabled: bool = True
    port: int = 69
    max_blksize: int = Field(default=1468, ge=8, le=65464)  # also clamped to the path MTU
    max_windowsize: int = Field(default=64, ge=1, le=65535)  # RFC 7440; 1 = lock-step
    options_enabled: bool = True  # False: RFC 1350 only, for every client
    timeout_s: float = Field(default=1.0, gt=0)  # first retransmission; doubles per retry
    max_timeout_s: float = Field(default=8.0, gt=0)
    retries: int = Field(default=5, ge=0)
    max_sessions: int = Field(default=4096, ge=1)
    quirks: list[TftpQuirkConfig] = Field(default_factory=list)


class HttpConfig(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 8080
    # Base of the URLs put in iPXE scripts; default http://<server_address>:<port>.
    public_url: str | None = None
    # WAIT: how long a node sleeps before asking for its script again.
    wait_seconds: int = Field(default=10, ge=1, le=3600)
    # Machines not in the inventory: wait (ask again) or boot their local disk...
    unknown_action: Literal["wait", "local"] = "wait"
    # ...or, if this lists profile names, choose from a menu of them.
    unknown_menu: list[str] = Field(default_factory=list)
    menu_timeout_s: int = Field(default=30, ge=0, le=3600)
    menu_default: str = "wait"  # "wait", "local" or one of unknown_menu
    # Send static files with sendfile(2) when the event loop can (asyncio's can).
    zero_copy: bool = True
    keep_alive_s: float = 15.0
    access_log: bool = False
    # Request heads (server/httpguard.py): longer lines get 414/431, a longer head or
    # more headers 431, and a head not complete header_timeout_s after its first byte 408.
    max_header_line_bytes: int = Field(default=8 << 10, ge=256, le=1 << 20)
    max_header_bytes: int = Field(default=64 << 10, ge=1024, le=16 << 20)
    max_headers: int = Field(default=100, ge=8, le=10_000)
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    # A request body not complete this long after its head: the connection is closed.
    body_timeout_s: float = Field(default=60.0, gt=0, le=86400)


class AdmissionConfig(_Section):
    """Graceful overload: finish the boots in progress before starting new ones.

    A boot is in progress from its iPXE script (a profile boot) until the node
    reports UP/FAILED/OFF or ``boot_timeout_s`` passes. Beyond ``max_booting``
    a node gets a WAIT script (sleep ``wait_s`` plus up to ``wait_jitter_s``,
    then ask again); nodes that waited longest are admitted first. Large files
    (``large_file_bytes`` and up) are sent at most ``max_transfers`` at a time;
    the rest wait in a queue of at most ``max_queued_transfers`` for up to
    ``queue_timeout_s`` (then, or when the queue is full: 503 with
    ``Retry-After: retry_after_s``, which iPXE obeys). One peer address has at most
    ``max_transfers_per_client`` of those running or waiting, and a transfer slower
    than ``min_transfer_rate_kib_s`` over ``transfer_rate_window_s`` is cut off.
    0 means no limit.
    """

    max_booting: int = Field(default=0, ge=0)
    boot_timeout_s: float = Field(default=600.0, gt=0)
    wait_s: int = Field(default=5, ge=1, le=3600)
    wait_jitter_s: int = Field(default=5, ge=0, le=3600)
    # Measured with the storm bench (n=1000): 32 keeps request latency low; 0: no limit.
    max_transfers: int = Field(default=32, ge=0)
    large_file_bytes: int = Field(default=1 << 20, ge=0)
    max_queued_transfers: int = Field(default=4096, ge=0)
    queue_timeout_s: float = Field(default=25.0, gt=0)
    retry_after_s: int = Field(default=5, ge=1, le=3600)
    # One peer address holds at most this many transfers (running or waiting); 0: no limit.
    max_transfers_per_client: int = Field(default=8, ge=0)
    # A transfer holding a slot that moves less than this over a window is cut off and its
    # slot freed (slow readers must not keep slots from everybody else); 0: no floor.
    min_transfer_rate_kib_s: float = Field(default=32.0, ge=0)
    transfer_rate_window_s: float = Field(default=10.0, gt=0, le=3600)
    # ...and its address gets no large transfer for this long (503 + Retry-After); 0: none.
    slow_client_penalty_s: float = Field(default=60.0, ge=0, le=86400)


class SecurityConfig(_Section):
    # The admin token may be given inline or (better) in a file readable by root only.
    admin_token: str | None = None
    admin_token_file: str | None = None


class VmConfig(_Section):
    """KVM VMs (``fleetboot vm``). Relative paths are relative to this file.

    ``FLEETBOOT_VM_RUN_DIR`` / ``FLEETBOOT_VM_IMAGE_DIR`` (and ``fleetboot vm
    --run-dir``) override ``run_dir`` / ``image_dir`` for one command.
    """

    # QMP sockets, pidfiles and per-VM locks. Keep it short: a unix socket path
    # must fit in 108 bytes. Every command on a VM must use the same run_dir.
    run_dir: str = "/run/fleetboot/vm"
    # Disk images Fleetboot creates and UEFI variable stores; default <state_dir>/vm-images.
    image_dir: str | None = None
    qemu: str = "qemu-system-x86_64"  # a name looked up in PATH, or a path
    qemu_img: str = "qemu-img"
    # How long to wait for the guest to release an unplugged device (then the slot stays
    # held until QEMU reports it gone), for a live migration, for QEMU to start and
    # answer on QMP, and for the firmware to number q35's root ports after a start.
    unplug_timeout_s: float = Field(default=10.0, gt=0)
    migrate_timeout_s: float = Field(default=120.0, gt=0)
    start_timeout_s: float = Field(default=60.0, gt=0)
    enumerate_timeout_s: float = Field(default=20.0, gt=0)
    # Firmware of new VMs unless `vm create --firmware` says otherwise: bios (SeaBIOS)
    # or uefi (OVMF, package ovmf). Existing VMs keep the firmware they were created with.
    firmware: Literal["bios", "uefi"] = "bios"
    # OVMF's code and the variable-store template each UEFI VM copies; None: the files
    # of Debian's ovmf package (the 4 MiB builds without Secure Boot).
    ovmf_code: str | None = None
    ovmf_vars: str | None = None


class Settings(_Section):
    """The whole configuration. ``server_address`` is what nodes are told to reach."""

    server_address: str = "127.0.0.1"
    boot_root: str = "bootroot"
    state_dir: str = "."
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    dhcp: DhcpConfig = Field(default_factory=DhcpConfig)
    dhcp6: Dhcp6Config = Field(default_factory=Dhcp6Config)
    tftp: TftpConfig = Field(default_factory=TftpConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    vm: VmConfig = Field(default_factory=VmConfig)
    architectures: dict[int, ArchBoot] = Field(default_factory=default_arch_table)

    def resolve_paths(self, base: Path) -> Settings:
        def absolute(p: str) -> str:
            return str((base / p).resolve()) if not os.path.isabs(p) else p

        copy = self.model_copy(deep=True)
        copy.boot_root = absolute(self.boot_root)
        copy.state_dir = absolute(self.state_dir)
        copy.vm.run_dir = absolute(self.vm.run_dir)
        for name in ("image_dir", "ovmf_code", "ovmf_vars"):
            if getattr(self.vm, name) is not None:
                setattr(copy.vm, name, absolute(getattr(self.vm, name)))
        for field in ("qemu", "qemu_img"):  # a bare name is looked up in PATH
            if "/" in getattr(self.vm, field):
                setattr(copy.vm, field, absolute(getattr(self.vm, field)))
        if copy.database.url.startswith("sqlite:///") and not copy.database.url.startswith(
            "sqlite:////"
        ):
            copy.database.url = "sqlite:///" + absolute(copy.database.url[len("sqlite:///") :])
        return copy


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load ``path`` (or the first default path that exists; none: defaults).

    ``FLEETBOOT_DB`` overrides the database URL, so one-off commands can point
    at another inventory without editing the file.
    """
    chosen = Path(path) if path else next(
        (Path(p) for p in DEFAULT_CONFIG_PATHS if Path(p).exists()), None
    )
    data: dict[str, Any] = {}
    if chosen is not None:
        if not chosen.exists():
            raise ConfigError(f"configuration file {chosen} does not exist; "
                              "create it or leave --config out to use the defaults")
        try:
            data = yaml.safe_load(chosen.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{chosen} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{chosen} must hold a mapping of sections at the top level")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{chosen or 'configuration'}: {_explain(exc)}") from None
    if env_db := os.environ.get("FLEETBOOT_DB"):
        settings.database.url = env_db
    return settings.resolve_paths(chosen.parent if chosen else Path.cwd())


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def admin_token(settings: Settings) -> str | None:
    sec = settings.security
    if sec.admin_token_file:
        try:
            return Path(sec.admin_token_file).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read security.admin_token_file: {exc}") from None
    return sec.admin_token
