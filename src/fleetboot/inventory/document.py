"""The inventory YAML document as strict pydantic models.

Parsing is separate from applying: ``parse_document`` turns the text into
typed entries or raises one ``InventoryError`` naming the entry and the key
(``nodes[3] (node01): unknown key 'interface' (did you mean 'interfaces'?)``),
before anything touches the database. Values are checked again by the service
layer, which the CLI uses too, so both refuse the same input.
"""

from __future__ import annotations

import difflib
from collections import Counter
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetboot.inventory.service import InventoryError

KINDS = ("profiles", "subnets", "nodes")


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


class InventoryDocument(_Entry):
    profiles: list[ProfileEntry] = Field(default_factory=list)
    subnets: list[SubnetEntry] = Field(default_factory=list)
    nodes: list[NodeEntry] = Field(default_factory=list)
    # Sections other concerns export (node configuration, fleet defaults, VMs,
    # hosts, flavors): kept as data here, validated by their own importers.
    extras: dict[str, Any] = Field(default_factory=dict)


def parse_document(text: str, extra_sections: tuple[str, ...] = ()) -> InventoryDocument:
    """Parse and validate the whole document; every error names its entry."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"not valid YAML: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise InventoryError("the inventory document must be a mapping with profiles, "
                             "subnets and nodes lists")
    for kind in KINDS:
        if kind in raw and raw[kind] is not None and not isinstance(raw[kind], list):
            raise InventoryError(f"{kind} must be a list of entries (each starting with "
                                 f"'- name: ...'), not a {type(raw[kind]).__name__}")
    body = {k: v for k, v in raw.items() if k not in extra_sections}
    body = {k: (v if v is not None else []) for k, v in body.items()}
    body["extras"] = {k: raw[k] for k in extra_sections if k in raw}
    try:
        doc = InventoryDocument.model_validate(body)
    except ValidationError as exc:
        raise InventoryError(_explain(exc, raw, extra_sections)) from None
    _check_unique(doc)
    return doc


def _check_unique(doc: InventoryDocument) -> None:
    for kind in KINDS:
        names = Counter(e.name for e in getattr(doc, kind))
        twice = sorted(n for n, c in names.items() if c > 1)
        if twice:
            raise InventoryError(f"{kind}: {', '.join(twice)} appear(s) more than once; "
                                 "keep one entry per name")
    owners: dict[str, str] = {}
    for node in doc.nodes:
        for iface in node.interfaces:
            mac = iface.mac.lower().replace("-", ":")
            if mac in owners:
                raise InventoryError(f"nodes ({node.name}): MAC {iface.mac} is also an "
                                     f"interface of {owners[mac]}; a MAC belongs to one node")
            owners[mac] = node.name


def _explain(exc: ValidationError, raw: dict[str, Any],
             extra_sections: tuple[str, ...]) -> str:
    """The first error as ``where: what`` (one line), naming the entry by index and name."""
    # A typo shows as an unknown key and a missing one: name the typo first.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = list(err["loc"])
    where, model, node = _locate(loc, raw)
    key = loc[-1] if loc else ""
    if err["type"] == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        if model is InventoryDocument:
            known = [*KINDS, *extra_sections]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
        return f"{where or 'the document'}: unknown key {key!r}{hint}"
    if err["type"] == "missing":
        return f"{where}: missing key {key!r}"
    got = f" (got {node!r})" if not isinstance(node, dict | list) else ""
    return f"{where}.{key}: {err['msg'].lower()}{got}" if where else f"{key}: {err['msg']}"


_ENTRY_MODELS: dict[str, type[BaseModel]] = {
    "profiles": ProfileEntry, "subnets": SubnetEntry, "nodes": NodeEntry,
    "pools": PoolEntry, "reservations": ReservationEntry, "interfaces": InterfaceEntry,
}


def _locate(loc: list[Any], raw: Any) -> tuple[str, type[BaseModel] | None, Any]:
    """Walk the error location: the entry path as text (``nodes[3] (node01)``), the model
    of the innermost entry, and the offending value."""
    parts: list[str] = []
    model: type[BaseModel] | None = InventoryDocument
    node = raw
    for i, step in enumerate(loc[:-1]):
        node = node[step] if isinstance(node, dict | list) else None
        if isinstance(step, int):
            name = node.get("name") if isinstance(node, dict) else None
            parts[-1] += f"[{step}]" + (f" ({name})" if isinstance(name, str) else "")
            model = _ENTRY_MODELS.get(str(loc[i - 1]))
        else:
            parts.append(str(step))
            model = None
    last = loc[-1] if loc else None
    value = node.get(last) if isinstance(node, dict) and last is not None else None
    return ".".join(parts), model, value
