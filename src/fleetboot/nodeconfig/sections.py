"""The sections of a node's configuration document and their validation. Pure.

Each section replaces one or more of the testbed's separate configuration
requests (seed 002: accounts, ifconfig, mounts, hostnames, routing,
startupcmd, tarballs, rpms, tunnels, trafgens, ...). Operators set sections
per node or as a fleet-wide default; ``validate_section`` turns what they typed
into the normalised JSON value that is stored and served, or raises a
``NodeConfigError`` that says what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetboot.inventory.addr import normalize_mac
from fleetboot.nodeconfig.errors import NodeConfigError

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")
_URL = re.compile(r"^(https?|ftp|nfs)://\S+$")


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_hostname(value: str) -> str:
    if len(value) > 253 or not all(_LABEL.match(part) for part in value.split(".")):
        raise ValueError(f"{value!r} is not a host name (letters, digits, '-', dot-separated)")
    return value


def _check_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_interface(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an address with prefix, like 10.0.0.5/24") from None


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _check_sha256(value: str) -> str:
    value = value.lower()
    if not _SHA256.match(value):
        raise ValueError("sha256 must be 64 hexadecimal digits (the output of sha256sum)")
    return value


def _check_url(value: str) -> str:
    if not _URL.match(value):
        raise ValueError(f"{value!r} is not an http://, https://, ftp:// or nfs:// URL")
    return value


def _check_path(value: str) -> str:
    if not value.startswith("/") or "\0" in value or any(p == ".." for p in value.split("/")):
        raise ValueError(f"{value!r} must be an absolute path without '..'")
    return value


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


# Field types: one checked meaning each, used by every section that has one.
Hostname = Annotated[str, AfterValidator(_check_hostname)]
Cidr = Annotated[str, AfterValidator(_check_cidr)]
IpAddress = Annotated[str, AfterValidator(_check_ip)]
Sha256 = Annotated[str, AfterValidator(_check_sha256)]
Url = Annotated[str, AfterValidator(_check_url)]
AbsolutePath = Annotated[str, AfterValidator(_check_path)]
# Optional ones: an empty string means "not set", as YAML users write it.
OptionalIp = Annotated[IpAddress | None, BeforeValidator(_blank_is_none)]
OptionalCidr = Annotated[Cidr | None, BeforeValidator(_blank_is_none)]
OptionalSha256 = Annotated[Sha256 | None, BeforeValidator(_blank_is_none)]
OptionalUrl = Annotated[Url | None, BeforeValidator(_blank_is_none)]


class Route(_Item):
    destination: str = "default"
    gateway: OptionalIp = None
    interface: str | None = None
    metric: int | None = Field(None, ge=0)

    @field_validator("destination")
    @classmethod
    def _dest(cls, v: str) -> str:
        if v == "default":
            return v
        try:
            return str(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ValueError(f"route destination {v!r}: use 'default' or a network "
                             "like 10.1.0.0/16") from None


class InterfaceConfig(_Item):
    """Addresses, routes and MTU of one NIC, matched by ``name`` or ``mac``."""

    name: str | None = None
    mac: str | None = None
    dhcp: bool = False
    addresses: list[Cidr] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    mtu: int | None = Field(None, ge=576, le=65535)

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return normalize_mac(v) if v is not None else None

    @model_validator(mode="after")
    def _named(self) -> InterfaceConfig:
        if not self.name and not self.mac:
            raise ValueError("an interface needs a name (eth0) or a mac to say which NIC it is")
        return self


class Account(_Item):
    name: str
    uid: int | None = Field(None, ge=0)
    gid: int | None = Field(None, ge=0)
    groups: list[str] = Field(default_factory=list)
    ssh_keys: list[str] = Field(default_factory=list)
    shell: str = "/bin/sh"
    home: str | None = None
    password_hash: str | None = None
    sudo: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"account name {v!r}: lowercase letters, digits, _ . - "
                             "(at most 32)")
        return v

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if "\n" in key or len(key.split()) < 2:
                raise ValueError("each SSH key is one line like 'ssh-ed25519 AAAA... comment'")
        return v


class Mount(_Item):
    source: str
    target: AbsolutePath
    type: str = "nfs"
    options: str = "defaults"


class HostEntry(_Item):
    address: IpAddress
    names: list[Hostname] = Field(min_length=1)


class Startup(_Item):
    command: str
    user: str = "root"
    timeout_s: int | None = Field(None, ge=1)


class FileItem(_Item):
    """A file to install: inline (``content_b64``) or fetched (``url`` + ``sha256``)."""

    path: AbsolutePath
    url: OptionalUrl = None
    sha256: OptionalSha256 = None
    content_b64: str | None = None
    mode: str = "0644"
    owner: str | None = None
    secret: bool = False  # served only to requests carrying the per-boot token

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3,4}", v):
            raise ValueError(f"mode {v!r}: an octal mode like 0644")
        return v if v.startswith("0") else "0" + v

    @model_validator(mode="after")
    def _source(self) -> FileItem:
        if (self.url is None) == (self.content_b64 is None):
            raise ValueError(f"file {self.path}: give either url (with sha256) or content_b64")
        if self.url is not None and self.sha256 is None:
            raise ValueError(f"file {self.path}: a url needs its sha256 so the node can check it")
        return self


class Tarball(_Item):
    url: Url
    sha256: Sha256
    dest: AbsolutePath = "/"


class Package(_Item):
    name: str
    url: Url
    sha256: Sha256


class Tunnel(_Item):
    """A tunnel. ``key``: the GRE key, the VXLAN id, or WireGuard's private key;
    ``port``: VXLAN's UDP port or WireGuard's listen/peer port."""

    name: str
    type: Literal["gre", "gretap", "vxlan", "ipip", "wireguard"] = "gre"
    remote: IpAddress
    local: OptionalIp = None
    key: str | None = None
    address: OptionalCidr = None
    mtu: int | None = Field(None, ge=576, le=65535)
    port: int | None = Field(None, ge=1, le=65535)
    peer_public_key: str | None = None  # WireGuard: the remote end's public key

    @field_validator("name")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", v):
            raise ValueError(f"tunnel name {v!r}: an interface name of 1-15 letters, "
                             "digits, _ . -")
        return v

    @field_validator("key", "peer_public_key")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9+/=._-]{1,64}", v):
            raise ValueError("a tunnel key is one word (a number, or a base64 WireGuard key)")
        return v

    @model_validator(mode="after")
    def _wireguard(self) -> Tunnel:
        if self.type == "wireguard" and not (self.key and self.peer_public_key):
            raise ValueError(f"tunnel {self.name}: wireguard needs key (this end's private "
                             "key) and peer_public_key")
        if self.type == "vxlan" and self.key is not None and not self.key.isdigit():
            raise ValueError(f"tunnel {self.name}: a vxlan key is the VNI, a number")
        return self


class Shaping(_Item):
    """Traffic shaping on one interface (the testbed's delay nodes, done with tc netem)."""

    interface: str
    delay_ms: float = Field(0, ge=0)
    jitter_ms: float = Field(0, ge=0)
    loss_pct: float = Field(0, ge=0, le=100)
    rate_kbit: int | None = Field(None, ge=1)


class Required(_Item):
    """Sections whose failure fails the boot (others are reported and the boot goes on)."""

    sections: list[str]

    @field_validator("sections")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [name for name in v if name not in _SPECS or name in _NOT_APPLIED]
        if unknown:
            raise ValueError(f"cannot require {', '.join(unknown)}: name sections the node "
                             f"applies ({', '.join(APPLIED)})")
        return sorted(set(v))


class _Hostname(_Item):
    value: Hostname


# Section name -> (model of one item or of the whole value, is a list, description).
_SPECS: dict[str, tuple[type[BaseModel] | None, bool, str]] = {
    "hostname": (_Hostname, False, "the host name (default: the node's name)"),
    "domain": (_Hostname, False, "the DNS domain (default: the subnet's)"),
    "interfaces": (InterfaceConfig, True, "per-NIC addresses, routes and MTU"),
    "accounts": (Account, True, "user accounts with SSH keys and groups (secret)"),
    "mounts": (Mount, True, "file systems to mount"),
    "hosts": (HostEntry, True, "extra /etc/hosts entries (the fleet's are added)"),
    "routes": (Route, True, "static routes"),
    "startup": (Startup, False, "the command to run once the node is configured"),
    "files": (FileItem, True, "files to install (inline or URL + sha256)"),
    "tarballs": (Tarball, True, "tarballs to unpack (URL + sha256)"),
    "packages": (Package, True, "packages to install (URL + sha256)"),
    "tunnels": (Tunnel, True, "tunnels to set up (secret: they carry keys)"),
    "shaping": (Shaping, True, "traffic shaping per interface"),
    "attributes": (None, False, "free-form attributes (merged over the node's own)"),
    "required": (Required, False, "sections whose failure fails the boot (FAILED)"),
}
# Sections that are data for the node, not something its agent applies.
_NOT_APPLIED = frozenset({"domain", "attributes", "required"})
# What the node agent applies, in this order (fleetboot-client.sh keeps the same list).
APPLIED: tuple[str, ...] = ("hostname", "interfaces", "routes", "hosts", "accounts", "files",
                            "mounts", "tunnels", "shaping", "tarballs", "packages", "startup")

SECTIONS: tuple[str, ...] = tuple(_SPECS)
# Served only to requests that carry the node's per-boot token (like IMDSv2).
SECRET_SECTIONS: frozenset[str] = frozenset({"accounts", "tunnels"})


def describe() -> dict[str, str]:
    """Section name -> one-line description, for `fleetboot config sections`."""
    return {name: spec[2] for name, spec in _SPECS.items()}


def _explain(where: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "value")
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{where}: " + "; ".join(parts)


def _validate_item(model: type[BaseModel], item: Any, where: str) -> dict[str, Any]:
    try:
        return _dump(model.model_validate(item))
    except ValidationError as exc:
        raise NodeConfigError(_explain(where, exc)) from None


def validate_section(section: str, value: Any) -> Any:
    """The normalised JSON value of ``section`` (defaults filled in, unknown keys refused)."""
    if section not in _SPECS:
        raise NodeConfigError(f"unknown section {section!r}; sections are: {', '.join(SECTIONS)}")
    model, is_list, _ = _SPECS[section]
    if model is None:
        if not isinstance(value, dict):
            raise NodeConfigError("section attributes must be a mapping of names to values")
        return value
    if model is _Hostname:
        return _validate_item(_Hostname, {"value": value}, f"section {section}")["value"]
    if model is Required:
        return _validate_item(Required, {"sections": value}, f"section {section}")["sections"]
    if not is_list:
        return _validate_item(model, value, f"section {section}")
    if not isinstance(value, list):
        raise NodeConfigError(f"section {section} must be a list of entries")
    return [_validate_item(model, item, f"section {section}, entry {i + 1}")
            for i, item in enumerate(value)]


def _dump(item: BaseModel) -> dict[str, Any]:
    # None fields are left out so documents stay small and stable.
    return item.model_dump(mode="json", exclude_none=True)
