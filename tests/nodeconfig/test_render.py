"""Sections, documents and their bytes (pure): validation, layout, ETags, secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.nodeconfig.errors import NodeConfigError
from fleetboot.nodeconfig.render import (
    FleetFacts,
    NicFacts,
    NodeFacts,
    SectionBytes,
    fleet_hosts,
    interfaces,
    render_node,
)
from fleetboot.nodeconfig.sections import SECRET_SECTIONS, SECTIONS, validate_section
from fleetboot.nodeconfig.waterfall import duration_of, waterfall

NIC = NicFacts("52:54:00:00:00:01", "eth0", True, "10.0.0.5", 24, "10.0.0.1", 9000, "lab")


def node(**sections: Any) -> NodeFacts:
    return NodeFacts(7, "n7", (NIC, NicFacts("52:54:00:00:00:02", "eth1")), {"rack": "r1"},
                     sections)


def test_the_document_has_every_section_one_per_line() -> None:
    docs = render_node(node(), FleetFacts())
    doc = json.loads(docs.full.body)
    assert list(doc) == ["version", "node", *SECTIONS]
    lines = docs.full.body.decode().splitlines()
    assert len(lines) == len(doc) and lines[-1].endswith("}")
    assert doc["hostname"] == "n7" and doc["domain"] == "lab"
    eth0 = doc["interfaces"][0]
    assert eth0["addresses"] == ["10.0.0.5/24"] and eth0["mtu"] == 9000
    assert eth0["routes"] == [{"destination": "default", "gateway": "10.0.0.1"}]
    assert doc["attributes"] == {"rack": "r1"}


def test_defaults_apply_unless_the_node_has_its_own() -> None:
    fleet = FleetFacts({"mounts": [{"source": "a:/x", "target": "/x"}],
                        "attributes": {"site": "s1", "rack": "default"}})
    plain = json.loads(render_node(node(), fleet).full.body)
    own = json.loads(render_node(node(mounts=[], attributes={"role": "db"}), fleet).full.body)
    assert plain["mounts"][0]["source"] == "a:/x" and own["mounts"] == []
    assert own["attributes"] == {"site": "s1", "rack": "r1", "role": "db"}


def test_configured_interfaces_overlay_the_inventory() -> None:
    out = interfaces(node(), [{"name": "eth1", "addresses": ["192.168.5.2/24"], "mtu": 1400},
                              {"name": "vlan10", "addresses": ["10.10.0.2/24"]}])
    assert [i.get("name") for i in out] == ["eth0", "eth1", "vlan10"]
    assert out[1]["addresses"] == ["192.168.5.2/24"] and out[1]["mtu"] == 1400
    assert out[1]["mac"] == "52:54:00:00:00:02"


def test_the_public_variant_drops_secrets() -> None:
    files = [{"path": "/etc/a", "content_b64": "YQ==", "secret": True},
             {"path": "/etc/b", "content_b64": "Yg==", "secret": False}]
    docs = render_node(node(accounts=[{"name": "x", "ssh_keys": ["ssh-rsa AAA k"]}],
                            files=files), FleetFacts())
    public = json.loads(docs.public.body)
    assert not SECRET_SECTIONS & set(public)
    # Issue 11 item 2: the secret file left out is named too, not only the sections.
    assert public["redacted"] == sorted([*SECRET_SECTIONS, "files:/etc/a"])
    assert [f["path"] for f in public["files"]] == ["/etc/b"]
    assert "accounts" not in docs.public_sections and "accounts" in docs.sections
    assert json.loads(docs.public_sections["files"].body) == public["files"]


def test_etags_follow_the_content_only() -> None:
    one = render_node(node(), FleetFacts())
    same = render_node(node(), FleetFacts(), SectionBytes())
    other = render_node(node(hostname="renamed"), FleetFacts())
    assert one.full.etag == same.full.etag and one.full.body == same.full.body
    assert other.full.etag != one.full.etag
    assert other.sections["mounts"].etag == one.sections["mounts"].etag


def test_fleet_hosts() -> None:
    hosts = fleet_hosts([("b", "10.0.0.10"), ("a", "10.0.0.9"), ("a2", "10.0.0.9")],
                        {"10.0.0.9": "lab"})
    assert hosts == ({"address": "10.0.0.9", "names": ["a.lab", "a", "a2.lab", "a2"]},
                     {"address": "10.0.0.10", "names": ["b"]})


@given(st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3), max_leaves=8),
    max_size=5))
def test_any_attributes_render_to_valid_json_one_key_per_line(attrs: dict[str, Any]) -> None:
    docs = render_node(NodeFacts(1, "n", (), attrs), FleetFacts())
    assert json.loads(docs.full.body)["attributes"] == attrs
    assert len(docs.full.body.split(b"\n")) == len(SECTIONS) + 3  # + version, node, final ""


@pytest.mark.parametrize(("section", "value", "message"), [
    ("accounts", [{"name": "Root User"}], "account name"),
    ("accounts", [{"name": "ok", "ssh_keys": ["notakey"]}], "SSH key"),
    ("files", [{"path": "/etc/x", "url": "http://h/x"}], "sha256"),
    ("files", [{"path": "/etc/x"}], "either url"),
    ("files", [{"path": "/../etc", "content_b64": ""}], "absolute path"),
    ("tarballs", [{"url": "http://h/t.tgz", "sha256": "abc"}], "64 hexadecimal"),
    ("interfaces", [{"addresses": ["10.0.0.1/24"]}], "a name"),
    ("interfaces", [{"name": "eth0", "addresses": ["10.0.0.300/24"]}], "address with prefix"),
    ("routes", [{"destination": "nowhere"}], "route destination"),
    ("hostname", "bad_name!", "not a host name"),
    ("startup", {"command": "x", "extra": 1}, "extra"),
    ("mounts", {"source": "x"}, "list of entries"),
    ("attributes", [1], "mapping"),
    ("rpms", [], "unknown section"),
])
def test_bad_sections_are_explained(section: str, value: Any, message: str) -> None:
    with pytest.raises(NodeConfigError, match=message):
        validate_section(section, value)


def test_sections_are_normalised() -> None:
    assert validate_section("files", [{"path": "/x", "content_b64": "", "mode": "755"}]) == [
        {"path": "/x", "content_b64": "", "mode": "0755", "secret": False}]
    assert validate_section("interfaces", [{"mac": "52-54-00-AA-BB-CC"}])[0]["mac"] == (
        "52:54:00:aa:bb:cc")
    assert validate_section("routes", [{"destination": "10.1.2.3/16"}])[0]["destination"] == (
        "10.1.0.0/16")


class _E:
    def __init__(self, at: float, kind: str, **detail: Any) -> None:
        self.at, self.source, self.kind, self.state, self.detail = at, "dhcp", kind, None, detail


def test_the_waterfall_shows_gaps_retransmissions_and_durations() -> None:
    rows = waterfall([_E(0, "DISCOVER"), _E(4, "DISCOVER", retransmit=1),
                      _E(4.2, "file", path="vmlinuz", duration_s=2.0, size=5 << 20)], width=20)
    assert [r.label for r in rows] == ["DISCOVER", "… 4.0 s with no event", "DISCOVER",
                                       "file vmlinuz"]
    assert rows[2].alarm and "retransmission #1" in rows[2].note
    assert rows[3].bar.count("█") == 6 and "5.0 MiB" in rows[3].note
    assert waterfall([]) == []


def test_the_waterfall_names_the_site_dhcp_server_in_proxy_mode() -> None:
    """Issue 21: which server answered what (the site server's ACK seen on the link)."""
    rows = waterfall([_E(0, "REQUEST", dir="rx", server_id="10.0.0.254"),
                      _E(0.1, "ACK", dir="seen", server="10.0.0.254")])
    assert "to server 10.0.0.254" in rows[0].note
    assert "from site server 10.0.0.254" in rows[1].note


@given(st.lists(st.tuples(st.floats(0, 1e5), st.floats(0, 100)), min_size=1, max_size=30),
       st.integers(5, 80))
def test_waterfall_bars_fit_and_rows_are_in_time_order(events: list[tuple[float, float]],
                                                       width: int) -> None:
    rows = waterfall([_E(at, "x", duration_s=d) for at, d in events], width=width)
    bars = [r for r in rows if not r.gap]
    assert len(bars) == len(events)
    assert all(len(r.bar) == width for r in bars)
    assert [r.offset_s for r in bars] == sorted(r.offset_s for r in bars)
    assert duration_of({"duration_ms": 1500}) == 1.5 and duration_of({"duration_s": -1}) == 0
