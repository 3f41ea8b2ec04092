"""A node's whole configuration document, assembled and rendered to bytes. Pure.

The document is JSON with one top-level key per line::

    {"version":1,
    "node":"n17",
    "hostname":"n17",
    ...
    "attributes":{"rack":"r3"}}

It is valid JSON for any client, and a POSIX shell client without a JSON
parser can still cut it into sections with ``sed``/``awk`` (a JSON string
never contains a raw newline). Keys inside sections are sorted, so equal
input always gives equal bytes and the ETag (a hash of the bytes) only moves
when the content does.

Two variants are rendered per node: ``full`` (for requests carrying the
node's per-boot token) and ``public`` (without the secret sections and
files marked secret), plus each section on its own for
``/v1/self/config/<section>``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetboot.nodeconfig.sections import SECRET_SECTIONS, SECTIONS

DOCUMENT_VERSION = 1
_REDACTED = sorted(SECRET_SECTIONS)


@dataclass(frozen=True)
class NicFacts:
    """One NIC as the inventory knows it, with its reservation's subnet facts if any."""

    mac: str
    name: str = ""
    boot: bool = False
    address: str | None = None  # reserved address
    prefix: int | None = None
    router: str | None = None
    mtu: int | None = None
    domain: str | None = None
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeFacts:
    """Everything the inventory says about one node, detached from the database."""

    node_id: int
    name: str
    nics: tuple[NicFacts, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    sections: Mapping[str, Any] = field(default_factory=dict)  # the node's own sections


@dataclass(frozen=True)
class FleetFacts:
    """What every node's document shares: default sections and the fleet's hosts."""

    defaults: Mapping[str, Any] = field(default_factory=dict)
    hosts: tuple[Mapping[str, Any], ...] = ()


def dumps(value: Any) -> bytes:
    """Compact, sorted, UTF-8 JSON: stable bytes for stable ETags."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode()


def etag_of(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=12).hexdigest()


# --- assembling the document (values) ----------------------------------------------------


def _own_or_default(node: NodeFacts, fleet: FleetFacts, section: str) -> Any:
    if section in node.sections:
        return node.sections[section]
    return fleet.defaults.get(section)


def _nic_doc(nic: NicFacts) -> dict[str, Any]:
    doc: dict[str, Any] = {"mac": nic.mac, "boot": nic.boot, "dhcp": True,
                           "addresses": [], "routes": []}
    if nic.name:
        doc["name"] = nic.name
    if nic.address and nic.prefix is not None:
        doc["addresses"] = [f"{nic.address}/{nic.prefix}"]
    if nic.router:
        doc["routes"] = [{"destination": "default", "gateway": nic.router}]
    if nic.mtu:
        doc["mtu"] = nic.mtu
    return doc


def _matches(entry: Mapping[str, Any], nic: Mapping[str, Any]) -> bool:
    if entry.get("mac"):
        return bool(entry["mac"] == nic["mac"])
    return bool(entry.get("name")) and entry.get("name") == nic.get("name")


def interfaces(node: NodeFacts, configured: Sequence[Mapping[str, Any]] | None) -> list[Any]:
    """The inventory's NICs overlaid with the configured entries (matched by mac or name).

    A configured entry replaces what it names (addresses, routes, mtu, dhcp);
    entries matching no NIC (VLANs, bonds) are appended as they are.
    """
    nics = [_nic_doc(n) for n in node.nics]
    extra = []
    for entry in configured or ():
        target = next((n for n in nics if _matches(entry, n)), None)
        if target is None:
            extra.append(dict(entry))
        else:
            target.update({k: v for k, v in entry.items() if k not in ("mac",)})
    return nics + extra


def _domain(node: NodeFacts, fleet: FleetFacts) -> str | None:
    chosen = _own_or_default(node, fleet, "domain")
    if chosen:
        return str(chosen)
    boot = next((n for n in node.nics if n.boot), None)
    return boot.domain if boot and boot.domain else None


def _attributes(node: NodeFacts, fleet: FleetFacts) -> dict[str, Any]:
    merged: dict[str, Any] = dict(fleet.defaults.get("attributes") or {})
    merged.update(node.attributes)
    merged.update(node.sections.get("attributes") or {})
    return merged


_NONE: tuple[()] = ()  # one shared empty value, so every node's empty section is one object


def build_document(node: NodeFacts, fleet: FleetFacts) -> dict[str, Any]:
    """The full document as a dict, keys in the order they are rendered.

    Values are shared with ``fleet`` and ``node`` (never copied) so a default
    used by thousands of nodes is one object, serialised once; nothing may
    mutate the result.
    """
    doc: dict[str, Any] = {"version": DOCUMENT_VERSION, "node": node.name}
    for section in SECTIONS:
        if section == "hostname":
            doc[section] = _own_or_default(node, fleet, section) or node.name
        elif section == "domain":
            doc[section] = _domain(node, fleet)
        elif section == "interfaces":
            doc[section] = interfaces(node, _own_or_default(node, fleet, section))
        elif section == "hosts":
            own = _own_or_default(node, fleet, section)
            doc[section] = [*fleet.hosts, *(own or ())] if fleet.hosts else (own or _NONE)
        elif section == "attributes":
            doc[section] = _attributes(node, fleet)
        elif section == "startup":
            doc[section] = _own_or_default(node, fleet, section)
        else:
            doc[section] = _own_or_default(node, fleet, section) or _NONE
    return doc


def public_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document without secrets: what a request without the per-boot token gets."""
    out = {k: v for k, v in doc.items() if k not in SECRET_SECTIONS}
    files = doc.get("files") or _NONE
    secret_files = [f for f in files if f.get("secret")]
    if secret_files:
        out["files"] = [f for f in files if not f.get("secret")]
        # Name each file left out too ("files:<path>"), so the list says all that is
        # missing; the content stays out. Sorted: the document's bytes stay stable.
        out["redacted"] = sorted([*_REDACTED, *(f"files:{f.get('path', '?')}"
                                                for f in secret_files)])
    else:
        out["redacted"] = _REDACTED
    return out


def fleet_hosts(pairs: Sequence[tuple[str, str]], domain_of: Mapping[str, str] | None = None,
                ) -> tuple[dict[str, Any], ...]:
    """``/etc/hosts`` entries for (name, address) pairs, sorted by address, one per address."""
    by_addr: dict[str, list[str]] = {}
    for name, address in pairs:
        names = by_addr.setdefault(address, [])
        fqdn = f"{name}.{domain_of[address]}" if domain_of and address in domain_of else None
        for n in (fqdn, name):
            if n and n not in names:
                names.append(n)
    ordered = sorted(by_addr, key=ipaddress.ip_address)
    return tuple({"address": a, "names": by_addr[a]} for a in ordered)


# --- rendering (bytes) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    """Bytes ready to send and their ETag (without quotes)."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Rendered:
        return cls(body, etag_of(body))


class SectionBytes:
    """Serialises section values once per distinct value within one reload.

    Fleet defaults are shared by thousands of nodes: containers are cached by
    identity (the value is kept alive so its id stays unique), scalars by value.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, bytes]] = {}
        self._by_value: dict[tuple[type, Any], bytes] = {}

    def raw(self, value: Any) -> bytes:
        if isinstance(value, (list, dict, tuple)):
            hit = self._by_id.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
            raw = dumps(value)
            self._by_id[id(value)] = (value, raw)
            return raw
        key = (type(value), value)
        found = self._by_value.get(key)
        if found is None:
            found = self._by_value[key] = dumps(value)
        return found


_KEYS = {k: dumps(k) + b":" for k in ("version", "node", *SECTIONS, "redacted")}


def render_lines(parts: Sequence[tuple[str, bytes]]) -> bytes:
    """``{"k":v,\\n"k2":v2}\\n`` from pre-rendered values, one key per line."""
    lines = [(_KEYS.get(key) or dumps(key) + b":") + raw for key, raw in parts]
    return b"{" + b",\n".join(lines) + b"}\n"


@dataclass(frozen=True)
class NodeDocuments:
    """Everything served to one node: both documents, and each section alone on demand."""

    node_id: int
    name: str
    full: Rendered
    public: Rendered
    raw: Mapping[str, bytes]  # every value of the full document, serialised
    public_raw: Mapping[str, bytes]  # the public document's (no secret sections)
    _alone: dict[tuple[str, bool], Rendered] = field(default_factory=dict, compare=False,
                                                     repr=False)
    # Prepared HTTP replies, keyed by the server (section, trusted, status): built once.
    replies: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def section(self, name: str, trusted: bool) -> Rendered | None:
        """One section alone (``/v1/self/config/<name>``); None if absent from the variant.

        Rendered on first use: old scripts asking for sections are the rare case.
        """
        key = (name, trusted)
        hit = self._alone.get(key)
        if hit is None:
            raw = (self.raw if trusted else self.public_raw).get(name)
            if raw is None:
                return None
            hit = self._alone[key] = Rendered.of(raw + b"\n")
        return hit

    @property
    def sections(self) -> dict[str, Rendered]:
        return {k: r for k in SECTIONS if (r := self.section(k, True)) is not None}

    @property
    def public_sections(self) -> dict[str, Rendered]:
        return {k: r for k in SECTIONS if (r := self.section(k, False)) is not None}


def render_node(node: NodeFacts, fleet: FleetFacts, cache: SectionBytes | None = None,
                ) -> NodeDocuments:
    cache = cache or SectionBytes()
    doc = build_document(node, fleet)
    raw = {k: cache.raw(v) for k, v in doc.items()}
    public = public_view(doc)
    public_raw = {k: raw[k] if v is doc.get(k) else cache.raw(v) for k, v in public.items()}
    return NodeDocuments(node.node_id, node.name, Rendered.of(render_lines(list(raw.items()))),
                         Rendered.of(render_lines(list(public_raw.items()))), raw, public_raw)
