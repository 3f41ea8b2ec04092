"""PCI flavors: named matchers over device attributes, and device requests (pure).

A flavor names a group of *equivalent* devices by what they are (vendor and
product ids, class, driver, SR-IOV role, operator tags such as
``physical_network``), not by where they sit. Every criterion given must hold
(AND); a list of alternatives inside one criterion is an OR. A device may match
several flavors; claims make sure it is handed out once.

Address globs are accepted because some sites need them, but they are warned
against: "the card in this slot is equivalent to the cards in the same slot on
other machines" rarely holds (see seeds/003).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetboot.passthrough.errors import FlavorError

DEVICE_TYPES = ("pci", "pf", "vf")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_TAG_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_HEX = re.compile(r"^[0-9a-f]+$")
_GLOB = re.compile(r"^[0-9a-f:.*?\[\]!-]+$")
ADDRESS_GLOB_WARNING = (
    "matches by PCI address: devices in the same slot on different hosts are rarely "
    "equivalent; prefer vendor/product ids, class, driver or tags"
)

Tags = tuple[tuple[str, str], ...]


def freeze_tags(tags: Mapping[str, str] | Iterable[tuple[str, str]]) -> Tags:
    items = tags.items() if isinstance(tags, Mapping) else tags
    return tuple(sorted((str(k), str(v)) for k, v in items))


@dataclass(frozen=True)
class DeviceAttrs:
    """What flavors match against: a device's identity plus its effective operator tags
    (a VF inherits its PF's tags; its own tags win)."""

    address: str
    vendor_id: str
    product_id: str
    class_code: str
    device_type: str = "pci"
    driver: str | None = None
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    tags: Tags = ()

    def tag(self, key: str) -> str | None:
        return dict(self.tags).get(key)


# ---------------------------------------------------------------- validation


def validate_name(name: str, what: str = "flavor") -> str:
    if not _NAME.match(name):
        raise FlavorError(f"{what} name {name!r} is invalid: use 1-63 characters of a-z, 0-9, "
                          "'.', '_' or '-', starting with a letter or digit")
    return name


def _hex(value: str, width: int, what: str) -> str:
    text = value.strip().lower().removeprefix("0x")
    if not text or len(text) > width or not _HEX.match(text):
        raise FlavorError(f"{what} {value!r} is not a hex id of up to {width} digits "
                          f"(like {'8086' if width == 4 else '0200'})")
    return text.zfill(width)


def _class_prefix(value: str) -> str:
    text = value.strip().lower().removeprefix("0x")
    if not text or len(text) > 6 or len(text) % 2 or not _HEX.match(text):
        raise FlavorError(f"class {value!r} must be 2, 4 or 6 hex digits: class (02), class "
                          "and subclass (0200) or all three bytes (020000)")
    return text


def validate_tag(key: str, value: str) -> tuple[str, str]:
    if not _TAG_KEY.match(key):
        raise FlavorError(f"tag key {key!r} is invalid: use a-z, 0-9, '.', '_' or '-'")
    if not value or value != value.strip() or "," in value or "=" in value:
        raise FlavorError(f"tag {key}={value!r}: the value must be non-empty, without "
                          "surrounding spaces, ',' or '='")
    return key, value


def parse_tag(text: str) -> tuple[str, str]:
    """``physical_network=physnet1`` -> ``("physical_network", "physnet1")``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise FlavorError(f"tag {text!r} must be written key=value, like physical_network=physnet1")
    return validate_tag(key.strip(), value.strip())


def _glob(value: str) -> str:
    text = value.strip().lower()
    if not text or not _GLOB.match(text):
        raise FlavorError(f"address glob {value!r} may only hold hex digits, ':', '.', and "
                          "glob characters (*, ?, [...]), like 0000:3b:*.0")
    return text


# ---------------------------------------------------------------- flavors


@dataclass(frozen=True)
class Flavor:
    """A named matcher; ``None``/empty criteria are not checked."""

    name: str
    vendor_id: str | None = None
    product_ids: tuple[str, ...] = ()
    subsystem_vendor_id: str | None = None
    subsystem_device_ids: tuple[str, ...] = ()
    class_prefix: str | None = None
    drivers: tuple[str, ...] = ()
    device_type: str | None = None
    tags: Tags = ()
    address_globs: tuple[str, ...] = ()
    description: str = ""

    @classmethod
    def create(
        cls,
        name: str,
        *,
        vendor: str | None = None,
        products: Sequence[str] = (),
        subsystem_vendor: str | None = None,
        subsystem_devices: Sequence[str] = (),
        class_prefix: str | None = None,
        drivers: Sequence[str] = (),
        device_type: str | None = None,
        tags: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        address_globs: Sequence[str] = (),
        description: str = "",
    ) -> Flavor:
        """Validate and normalise user input (hex case, ``0x`` prefixes, tag order)."""
        if device_type is not None and device_type not in DEVICE_TYPES:
            raise FlavorError(f"device type {device_type!r} is not one of "
                              f"{', '.join(DEVICE_TYPES)} (pf/vf: SR-IOV physical/virtual "
                              "function, pci: neither)")
        for driver in drivers:
            if not driver or any(c.isspace() or c == "/" for c in driver):
                raise FlavorError(f"driver {driver!r} is not a kernel driver name")
        flavor = cls(
            name=validate_name(name),
            vendor_id=_hex(vendor, 4, "vendor id") if vendor else None,
            product_ids=tuple(sorted({_hex(p, 4, "product id") for p in products})),
            subsystem_vendor_id=(_hex(subsystem_vendor, 4, "subsystem vendor id")
                                 if subsystem_vendor else None),
            subsystem_device_ids=tuple(sorted({_hex(p, 4, "subsystem device id")
                                               for p in subsystem_devices})),
            class_prefix=_class_prefix(class_prefix) if class_prefix else None,
            drivers=tuple(sorted(set(drivers))),
            device_type=device_type,
            tags=freeze_tags(validate_tag(k, v) for k, v in freeze_tags(tags)),
            address_globs=tuple(sorted({_glob(g) for g in address_globs})),
            description=description,
        )
        if flavor.is_empty():
            raise FlavorError(f"flavor {name!r} has no criteria and would match every device; "
                              "give at least a vendor, product, class, driver, type or tag")
        return flavor

    def is_empty(self) -> bool:
        return not (self.vendor_id or self.product_ids or self.subsystem_vendor_id
                    or self.subsystem_device_ids or self.class_prefix or self.drivers
                    or self.device_type or self.tags or self.address_globs)

    def matches(self, dev: DeviceAttrs) -> bool:
        return (
            _equal(self.vendor_id, dev.vendor_id)
            and _among(self.product_ids, dev.product_id)
            and _equal(self.subsystem_vendor_id, dev.subsystem_vendor_id)
            and _among(self.subsystem_device_ids, dev.subsystem_device_id)
            and (not self.class_prefix or dev.class_code.startswith(self.class_prefix))
            and _among(self.drivers, dev.driver)
            and _equal(self.device_type, dev.device_type)
            and all(dev.tag(key) == value for key, value in self.tags)
            and (not self.address_globs
                 or any(fnmatch.fnmatchcase(dev.address, g) for g in self.address_globs))
        )

    def warnings(self) -> list[str]:
        return [f"flavor {self.name!r} {ADDRESS_GLOB_WARNING}"] if self.address_globs else []

    def describe(self) -> str:
        """One line of criteria, e.g. ``vendor=8086 product=154c type=vf physical_network=x``."""
        parts = []
        if self.vendor_id:
            parts.append(f"vendor={self.vendor_id}")
        if self.product_ids:
            parts.append(f"product={'|'.join(self.product_ids)}")
        if self.subsystem_vendor_id:
            parts.append(f"subsystem_vendor={self.subsystem_vendor_id}")
        if self.subsystem_device_ids:
            parts.append(f"subsystem_device={'|'.join(self.subsystem_device_ids)}")
        if self.class_prefix:
            parts.append(f"class={self.class_prefix}*")
        if self.drivers:
            parts.append(f"driver={'|'.join(self.drivers)}")
        if self.device_type:
            parts.append(f"type={self.device_type}")
        parts += [f"{k}={v}" for k, v in self.tags]
        if self.address_globs:
            parts.append(f"address={'|'.join(self.address_globs)}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON); :meth:`from_dict` validates it again."""
        return {
            "vendor": self.vendor_id,
            "products": list(self.product_ids),
            "subsystem_vendor": self.subsystem_vendor_id,
            "subsystem_devices": list(self.subsystem_device_ids),
            "class": self.class_prefix,
            "drivers": list(self.drivers),
            "type": self.device_type,
            "tags": dict(self.tags),
            "address_globs": list(self.address_globs),
        }

    @classmethod
    def from_dict(cls, name: str, spec: Mapping[str, Any], description: str = "") -> Flavor:
        known = {"vendor", "products", "subsystem_vendor", "subsystem_devices", "class",
                 "drivers", "type", "tags", "address_globs"}
        unknown = set(spec) - known
        if unknown:
            raise FlavorError(f"flavor {name!r}: unknown criteria {sorted(unknown)}; "
                              f"known: {sorted(known)}")
        return cls.create(
            name,
            vendor=spec.get("vendor"),
            products=spec.get("products") or (),
            subsystem_vendor=spec.get("subsystem_vendor"),
            subsystem_devices=spec.get("subsystem_devices") or (),
            class_prefix=spec.get("class"),
            drivers=spec.get("drivers") or (),
            device_type=spec.get("type"),
            tags=spec.get("tags") or {},
            address_globs=spec.get("address_globs") or (),
            description=description,
        )


def _equal(wanted: str | None, actual: str | None) -> bool:
    return wanted is None or wanted == actual


def _among(wanted: tuple[str, ...], actual: str | None) -> bool:
    return not wanted or actual in wanted


def matching_flavors(dev: DeviceAttrs, flavors: Iterable[Flavor]) -> frozenset[str]:
    return frozenset(f.name for f in flavors if f.matches(dev))


# ---------------------------------------------------------------- requests

_REQUEST = re.compile(
    "^\\s*(?:(?P<count>\\d+)\\s*(?:[x\u00d7*]\\s+|[\u00d7*]))?(?P<flavors>[^\\s]+)\\s*$"
)


@dataclass(frozen=True)
class DeviceRequest:
    """``count`` devices, each matching *all* of ``flavors`` (usually one)."""

    count: int
    flavors: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.count} x {'+'.join(self.flavors)}"


def parse_requests(text: str | Sequence[str]) -> list[DeviceRequest]:
    """``"2 x gpu-a100, 1 x sriov-physnet1"`` -> requests. ``a+b`` means "matching a and b"."""
    items = [text] if isinstance(text, str) else list(text)
    parts = [p for item in items for p in item.split(",") if p.strip()]
    if not parts:
        raise FlavorError("no device requested; write requests like '2 x gpu-a100, 1 x sriov-net'")
    return [_parse_one(p) for p in parts]


def _parse_one(part: str) -> DeviceRequest:
    match = _REQUEST.match(part)
    if match is None:
        raise FlavorError(f"request {part.strip()!r} is not like '2 x gpu-a100' or 'sriov-net'")
    count = int(match["count"]) if match["count"] else 1
    if not 1 <= count <= 64:
        raise FlavorError(f"request {part.strip()!r}: the count must be 1 to 64")
    names = match["flavors"].split("+")
    for name in names:
        validate_name(name)
    if len(set(names)) != len(names):
        raise FlavorError(f"request {part.strip()!r} names a flavor twice")
    return DeviceRequest(count, tuple(names))


def format_requests(requests: Iterable[DeviceRequest]) -> str:
    return ", ".join(str(r) for r in requests)
