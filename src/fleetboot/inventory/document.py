"""The inventory YAML document as strict pydantic models.

Parsing is separate from applying: ``parse_document`` turns the text into
typed entries or raises one ``InventoryError`` naming the entry and the key
(``nodes[3] (node01): unknown key 'interface' (did you mean 'interfaces'?)``),
before anything touches the database. Values are checked again by the service
layer, which the CLI uses too, so both refuse the same input.
"""

from __future__ import annotations

import difflib
import typing
from collections import Counter
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetboot.inventory.service import InventoryError

KINDS = ("profiles", "subnets", "nodes")
LISTS = ("profiles", "subnets", "subnets6", "nodes", "flavors", "passthrough_hosts",
         "vm_hosts", "vms")


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProfileEntry(_Entry):
    name: str
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    script: str | None = None


class PoolEntry(_Entry):
    start: str
    end: str


class ReservationEntry(_Entry):
    mac: str
    address: str
    hostname: str | None = None


class Pool6Entry(_Entry):
    start: str
    end: str


class Reservation6Entry(_Entry):
    address: str
    mac: str | None = None
    duid: str | None = None
    hostname: str | None = None


class Subnet6Entry(_Entry):
    """An IPv6 subnet (DHCPv6), exported only when there are any."""

    name: str
    prefix: str
    dns: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)
    valid_seconds: int = 3600
    preferred_seconds: int | None = None
    pools: list[Pool6Entry] = Field(default_factory=list)
    reservations: list[Reservation6Entry] = Field(default_factory=list)


class SubnetEntry(_Entry):
    name: str
    cidr: str
    router: str | None = None
    dns: list[str] = Field(default_factory=list)
    domain: str | None = None
    lease_seconds: int = 3600
    next_server: str | None = None
    mtu: int | None = None
    pools: list[PoolEntry] = Field(default_factory=list)
    reservations: list[ReservationEntry] = Field(default_factory=list)


class InterfaceEntry(_Entry):
    mac: str
    name: str = ""
    boot: bool = False


class NodeEntry(_Entry):
    name: str
    arch: str = "x86_64"
    interfaces: list[InterfaceEntry] = Field(default_factory=list)
    boot: dict[str, str] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    # Configuration sections of this node (``fleetboot config``), validated on import;
    # absent: the node's sections are left as they are.
    config: dict[str, Any] | None = None


class FlavorEntry(_Entry):
    name: str
    spec: dict[str, Any]
    description: str = ""


class HostDeviceEntry(_Entry):
    """A passthrough device as last scanned, with the operator's tags."""

    address: str
    vendor_id: str
    product_id: str
    class_code: str
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    driver: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    device_type: str = "pci"
    pf_address: str | None = None
    sriov_totalvfs: int = 0
    sriov_numvfs: int = 0
    netdevs: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    host_use: str | None = None  # why the host itself needs it (from the last scan)


class HostEntry(_Entry):
    name: str
    sysfs_root: str = "/sys"
    libvirt_uri: str | None = None
    allow: list[dict[str, Any]] = Field(default_factory=list)  # passthrough allowlist rules
    devices: list[HostDeviceEntry] = Field(default_factory=list)


class VmHostEntry(_Entry):
    """A host that runs Fleetboot's VMs (`fleetboot vm host add`)."""

    name: str
    address: str
    netns: str | None = None
    run_dir: str
    image_dir: str


class VmNicEntry(_Entry):
    device: str
    model: str
    mac: str
    backend: str = "user"
    target: str | None = None
    boot: bool = False
    rom: str | None = None


class VmDiskEntry(_Entry):
    device: str
    path: str
    size_bytes: int
    format: str = "qcow2"
    bus: str = "virtio-blk"
    boot: bool = False
    created_image: bool = True


class VmDeviceEntry(_Entry):
    device: str
    kind: str
    props: dict[str, Any] = Field(default_factory=dict)


class VmEntry(_Entry):
    """A VM's definition (what `vm create` pinned), not its running state."""

    name: str
    uuid: str
    family: str
    machine_type: str
    accel: str = "tcg"
    vcpus: int = 1
    memory_mib: int = 256
    firmware: str = "bios"
    uefi_vars: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    netns: str | None = None
    host: str | None = None
    layout: dict[str, Any]
    nics: list[VmNicEntry] = Field(default_factory=list)
    disks: list[VmDiskEntry] = Field(default_factory=list)
    devices: list[VmDeviceEntry] = Field(default_factory=list)


class InventoryDocument(_Entry):
    # "omitted": secret configuration (accounts, tunnels, files with secret
    # items) was left out, and an import leaves those sections as they are.
    secrets: Literal["omitted", "included"] = "included"
    profiles: list[ProfileEntry] = Field(default_factory=list)
    subnets: list[SubnetEntry] = Field(default_factory=list)
    subnets6: list[Subnet6Entry] = Field(default_factory=list)
    nodes: list[NodeEntry] = Field(default_factory=list)
    defaults: dict[str, Any] | None = None  # fleet-wide configuration; absent: left alone
    flavors: list[FlavorEntry] = Field(default_factory=list)
    passthrough_hosts: list[HostEntry] = Field(default_factory=list)
    vm_hosts: list[VmHostEntry] = Field(default_factory=list)
    vms: list[VmEntry] = Field(default_factory=list)


def parse_document(text: str) -> InventoryDocument:
    """Parse and validate the whole document; every error names its entry."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"not valid YAML: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InventoryError("the inventory document must be a mapping with profiles, "
                             "subnets and nodes lists")
    for kind in LISTS:
        if kind in raw and raw[kind] is not None and not isinstance(raw[kind], list):
            raise InventoryError(f"{kind} must be a list of entries (each starting with "
                                 f"'- name: ...'), not a {type(raw[kind]).__name__}")
    body = {k: v for k, v in raw.items() if v is not None}
    try:
        doc = InventoryDocument.model_validate(body)
    except ValidationError as exc:
        raise InventoryError(_explain(exc, raw)) from None
    _check_unique(doc)
    return doc


def _check_unique(doc: InventoryDocument) -> None:
    for kind in LISTS:
        names = Counter(e.name for e in getattr(doc, kind))
        twice = sorted(n for n, c in names.items() if c > 1)
        if twice:
            raise InventoryError(f"{kind}: {', '.join(twice)} appear(s) more than once; "
                                 "keep one entry per name")
    owners: dict[str, str] = {}
    for index, node in enumerate(doc.nodes):
        for iface in node.interfaces:
            mac = iface.mac.lower().replace("-", ":")
            if mac in owners:
                raise InventoryError(f"nodes[{index}] ({node.name}): MAC {iface.mac} is also "
                                     f"an interface of {owners[mac]}; a MAC belongs to one node")
            owners[mac] = node.name


def _explain(exc: ValidationError, raw: dict[str, Any]) -> str:
    """The first error as ``where: what`` (one line), naming the entry by index and name."""
    # A typo shows as an unknown key and a missing one: name the typo first.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = list(err["loc"])
    where, model, node = _locate(loc, raw)
    key = loc[-1] if loc else ""
    if err["type"] == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
        return f"{where or 'the document'}: unknown key {key!r}{hint}"
    if err["type"] == "missing":
        return f"{where}: missing key {key!r}"
    if err["type"] == "string_type" and isinstance(node, int) and key in ("mac", "address"):
        return (f"{where}.{key}: write it in quotes ('52:54:00:12:34:56'): unquoted, YAML "
                f"reads it as the number {node}")
    got = f" (got {node!r})" if not isinstance(node, dict | list) else ""
    if isinstance(key, int):  # the entry itself is wrong, e.g. a bare name
        return f"{where}[{key}]: {err['msg'].lower()}, like '- name: ...'"
    return f"{where}.{key}: {err['msg'].lower()}{got}" if where else f"{key}: {err['msg']}"


def _entry_model(model: type[BaseModel] | None, key: Any) -> type[BaseModel] | None:
    """The model of the entries of list field ``key`` of ``model`` (None: not a model list)."""
    field = model.model_fields.get(str(key)) if model is not None else None
    args = typing.get_args(field.annotation) if field is not None else ()
    inner = args[0] if args else None
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _locate(loc: list[Any], raw: Any) -> tuple[str, type[BaseModel] | None, Any]:
    """Walk the error location: the entry path as text (``nodes[3] (node01)``), the model
    of the innermost entry, and the offending value."""
    parts: list[str] = []
    model: type[BaseModel] | None = InventoryDocument
    parent: type[BaseModel] | None = None
    node = raw
    for step in loc[:-1]:
        node = node[step] if isinstance(node, dict | list) else None
        if isinstance(step, int) and parts:
            name = node.get("name") if isinstance(node, dict) else None
            parts[-1] += f"[{step}]" + (f" ({name})" if isinstance(name, str) else "")
            model = parent
        else:
            parts.append(str(step))
            parent, model = _entry_model(model, step), None
    last = loc[-1] if loc else None
    value = node.get(last) if isinstance(node, dict) and last is not None else None
    return ".".join(parts), model, value
