"""Flavor matching and request parsing (pure; hypothesis)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.passthrough.errors import FlavorError
from fleetboot.passthrough.flavors import (
    DeviceAttrs,
    DeviceRequest,
    Flavor,
    format_requests,
    matching_flavors,
    parse_requests,
    parse_tag,
)

hex4 = st.integers(0, 0xFFFF).map(lambda v: f"{v:04x}")
hex6 = st.integers(0, 0xFFFFFF).map(lambda v: f"{v:06x}")
tag_keys = st.sampled_from(["physical_network", "rack", "trusted"])
tag_values = st.sampled_from(["physnet1", "physnet2", "r1", "yes"])


@st.composite
def devices(draw: st.DrawFn) -> DeviceAttrs:
    bus, slot, fn = draw(st.integers(0, 255)), draw(st.integers(0, 31)), draw(st.integers(0, 7))
    return DeviceAttrs(
        address=f"0000:{bus:02x}:{slot:02x}.{fn}",
        vendor_id=draw(st.sampled_from(["8086", "10de", "15b3"]) | hex4),
        product_id=draw(hex4),
        class_code=draw(st.sampled_from(["020000", "030200", "010802"]) | hex6),
        device_type=draw(st.sampled_from(["pci", "pf", "vf"])),
        driver=draw(st.none() | st.sampled_from(["i40e", "vfio-pci", "nvme"])),
        subsystem_vendor_id=draw(st.none() | hex4),
        subsystem_device_id=draw(st.none() | hex4),
        tags=tuple(sorted(draw(st.dictionaries(tag_keys, tag_values)).items())),
    )


CRITERIA = ("vendor", "product", "class", "driver", "type", "tags", "subsystem", "address")


def flavor_from(dev: DeviceAttrs, use: set[str], class_len: int = 2) -> Flavor:
    """A flavor built from some of ``dev``'s own attributes (so it must match ``dev``)."""
    return Flavor.create(
        "f",
        vendor=dev.vendor_id if "vendor" in use else None,
        products=[dev.product_id] if "product" in use else [],
        class_prefix=dev.class_code[:class_len] if "class" in use else None,
        drivers=[dev.driver] if "driver" in use and dev.driver else [],
        device_type=dev.device_type if "type" in use else None,
        tags=dict(dev.tags) if "tags" in use else {},
        subsystem_vendor=dev.subsystem_vendor_id if "subsystem" in use else None,
        address_globs=[dev.address[:-1] + "*"] if "address" in use else [],
    ) if not _empty(dev, use) else Flavor.create("f", vendor=dev.vendor_id)


def _empty(dev: DeviceAttrs, use: set[str]) -> bool:
    useful = set(use)
    if not dev.driver:
        useful.discard("driver")
    if not dev.tags:
        useful.discard("tags")
    if dev.subsystem_vendor_id is None:
        useful.discard("subsystem")
    return not useful


@given(dev=devices(), use=st.sets(st.sampled_from(CRITERIA)),
       class_len=st.sampled_from([2, 4, 6]))
def test_flavor_built_from_a_device_matches_it(dev: DeviceAttrs, use: set[str],
                                               class_len: int) -> None:
    assert flavor_from(dev, use, class_len).matches(dev)


@given(dev=devices(), use=st.sets(st.sampled_from(CRITERIA), min_size=1), other=devices())
def test_matching_is_the_and_of_the_criteria(dev: DeviceAttrs, use: set[str],
                                             other: DeviceAttrs) -> None:
    flavor = flavor_from(dev, use)
    single = [flavor_from(dev, {c}) for c in use if not _empty(dev, {c})]
    if single:
        assert flavor.matches(other) == all(f.matches(other) for f in single)


@given(dev=devices(), use=st.sets(st.sampled_from(CRITERIA)), more=st.sampled_from(CRITERIA),
       others=st.lists(devices(), max_size=8))
def test_more_criteria_never_match_more(dev: DeviceAttrs, use: set[str], more: str,
                                        others: list[DeviceAttrs]) -> None:
    loose, strict = flavor_from(dev, use), flavor_from(dev, use | {more})
    if _empty(dev, use):
        return  # the fallback flavor is not a subset relation
    for other in others:
        assert not strict.matches(other) or loose.matches(other)


@given(dev=devices(), vendor=hex4)
def test_a_different_vendor_does_not_match(dev: DeviceAttrs, vendor: str) -> None:
    flavor = Flavor.create("f", vendor=dev.vendor_id)
    assert flavor.matches(dataclasses.replace(dev, vendor_id=vendor)) == (vendor == dev.vendor_id)


@given(dev=devices(), value=tag_values)
def test_tag_must_equal(dev: DeviceAttrs, value: str) -> None:
    flavor = Flavor.create("f", tags={"physical_network": value})
    assert flavor.matches(dev) == (dev.tag("physical_network") == value)


@given(dev=devices())
def test_a_device_may_match_several_flavors(dev: DeviceAttrs) -> None:
    by_vendor = Flavor.create("by-vendor", vendor=dev.vendor_id)
    by_class = Flavor.create("by-class", class_prefix=dev.class_code[:2])
    other = Flavor.create("other", vendor="ffff" if dev.vendor_id != "ffff" else "fffe")
    assert matching_flavors(dev, [by_vendor, by_class, other]) == {"by-vendor", "by-class"}


@given(dev=devices(), use=st.sets(st.sampled_from(CRITERIA)))
def test_stored_form_roundtrips(dev: DeviceAttrs, use: set[str]) -> None:
    flavor = flavor_from(dev, use)
    assert Flavor.from_dict(flavor.name, flavor.to_dict()) == flavor


def test_normalisation() -> None:
    flavor = Flavor.create("gpu", vendor="0x10DE", products=["20B0", "0x20b0"], class_prefix="0x03")
    assert (flavor.vendor_id, flavor.product_ids, flavor.class_prefix) == ("10de", ("20b0",), "03")


def test_address_globs_are_warned_against() -> None:
    flavor = Flavor.create("slot3", address_globs=["0000:3b:*"])
    assert flavor.warnings() and "rarely equivalent" in flavor.warnings()[0]
    assert Flavor.create("ok", vendor="8086").warnings() == []


@pytest.mark.parametrize("kwargs, message", [
    ({}, "no criteria"),
    ({"vendor": "xyz"}, "hex id"),
    ({"vendor": "123456"}, "hex id"),
    ({"class_prefix": "020"}, "2, 4 or 6"),
    ({"device_type": "gpu"}, "device type"),
    ({"tags": {"Bad Key": "x"}}, "tag key"),
    ({"tags": {"k": "a,b"}}, "value"),
    ({"address_globs": ["rm -rf"]}, "address glob"),
    ({"drivers": ["a b"]}, "driver"),
])
def test_bad_flavors_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FlavorError, match=message):
        Flavor.create("f", **kwargs)  # type: ignore[arg-type]


def test_bad_names() -> None:
    for name in ("", "Upper", "-x", "a b", "a+b", "x" * 64):
        with pytest.raises(FlavorError, match="name"):
            Flavor.create(name, vendor="8086")


def test_from_dict_rejects_unknown_criteria() -> None:
    with pytest.raises(FlavorError, match="unknown criteria"):
        Flavor.from_dict("f", {"vendor": "8086", "colour": "red"})


def test_parse_requests() -> None:
    assert parse_requests("2 x gpu-a100, 1 x sriov-physnet1") == [
        DeviceRequest(2, ("gpu-a100",)), DeviceRequest(1, ("sriov-physnet1",))]
    assert parse_requests(["3\u00d7gpu", "net", "2 * a+b", "4x c"]) == [
        DeviceRequest(3, ("gpu",)), DeviceRequest(1, ("net",)), DeviceRequest(2, ("a", "b")),
        DeviceRequest(4, ("c",))]


@pytest.mark.parametrize("text", ["", " , ", "0 x gpu", "65 x gpu", "2 x", "2 x a+a",
                                  "2 x Gpu", "2 x a b", "4 c"])
def test_bad_requests(text: str) -> None:
    with pytest.raises(FlavorError):
        parse_requests(text)


names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)


@given(st.lists(st.builds(DeviceRequest, st.integers(1, 64),
                          st.lists(names, min_size=1, max_size=3, unique=True).map(tuple)),
                min_size=1, max_size=5))
def test_requests_roundtrip(requests: list[DeviceRequest]) -> None:
    assert parse_requests(format_requests(requests)) == requests


def test_parse_tag() -> None:
    assert parse_tag("physical_network=physnet1") == ("physical_network", "physnet1")
    with pytest.raises(FlavorError, match="key=value"):
        parse_tag("physnet1")
