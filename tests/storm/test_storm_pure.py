"""The storm simulator's pure cores: plan, statistics, framing, iPXE scripts, HTTP parsing."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import DhcpPacket, decode, encode
from fleetboot.storm import dhcpwire, frames, ipxe
from fleetboot.storm.httpc import HttpError, ResponseParser
from fleetboot.storm.plan import (
    Network,
    PlanError,
    StormPlan,
    Timing,
    make_plan,
    node_mac,
    start_offsets,
)
from fleetboot.storm.stacks import kernel_counters
from fleetboot.storm.stats import NodeResult, PhaseRecord, percentile, result_line, summarize

# --- plan ------------------------------------------------------------------------------------


@given(st.integers(1, 400), st.floats(0, 120), st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_plan_nodes_are_distinct_and_inside_the_node_network(n: int, window: float,
                                                             seed: int) -> None:
    plan = make_plan(n, window, seed)
    assert len({x.mac for x in plan.nodes}) == n
    assert len({x.address for x in plan.nodes}) == n
    net = ipaddress.ip_network(plan.network.node_net)
    assert all(ipaddress.ip_address(x.address) in net for x in plan.nodes)
    assert all(0 <= x.start_s <= window for x in plan.nodes)


def test_zero_window_starts_everyone_at_once() -> None:
    assert set(start_offsets(50, 0, 7)) == {0.0}


def test_plan_round_trips_through_json_data() -> None:
    plan = make_plan(5, 2.5, 3, timing=Timing(pxe_discover=(1.0, 2.0)))
    assert StormPlan.from_dict(plan.to_dict()) == plan
    assert StormPlan.from_dict(plan.for_stack("classic", 80).to_dict()).stack.http_port == 80


@pytest.mark.parametrize("bad", [{}, {"n": 1}, {"n": 1, "window_s": 0, "seed": 1, "nodes": [],
                                                "timing": {"bogus": 1}}])
def test_bad_plan_data_is_a_plan_error(bad: dict[str, object]) -> None:
    with pytest.raises(PlanError):
        StormPlan.from_dict(bad)


def test_plan_rejects_impossible_networks() -> None:
    with pytest.raises(PlanError):
        make_plan(300, network=Network(node_net="10.77.128.0/24"))
    with pytest.raises(PlanError):
        make_plan(3, network=Network(node_net="10.99.0.0/24"))
    with pytest.raises(PlanError):
        make_plan(0)


@given(st.integers(0, 2**32 - 1))
def test_node_macs_are_unicast_and_locally_administered(index: int) -> None:
    first = int(node_mac(index)[:2], 16)
    assert first & 1 == 0 and first & 2 == 2


# --- statistics --------------------------------------------------------------------------------


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200),
       st.floats(0, 100))
def test_percentile_is_an_observed_value_and_monotone(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p in values
    assert percentile(values, 0) <= p <= percentile(values, 100) == max(values)
    assert percentile(values, min(100.0, q + 10)) >= p


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _node(name: str, phases: list[tuple[str, float, float, int]], up: float | None,
          failed: str | None = None) -> NodeResult:
    recs = [PhaseRecord(p, a, b, r) for p, a, b, r in phases]
    return NodeResult(name, "02:fb:00:00:00:01", 0.0, recs, up, failed,
                      "boom" if failed else None)


def test_summary_counts_failures_retries_and_storm_time() -> None:
    ok = _node("a", [("pxe_dhcp", 0, 0.1, 0), ("tftp", 0.1, 0.5, 2)], 0.5)
    bad = _node("b", [("pxe_dhcp", 0, 60, 3)], None, "pxe_dhcp")
    s = summarize([ok, bad], extra_retries=4)
    assert (s.n, s.up, s.failed, s.retries) == (2, 1, 1, 9)
    assert s.storm_s == 60
    by = {p.name: p for p in s.phases}
    assert by["pxe_dhcp"].count == 1 and by["pxe_dhcp"].failed == 1
    assert by["tftp"].retries == 2 and math.isclose(by["tftp"].p50, 0.4)
    assert s.errors == (("pxe_dhcp: boom", 1),)
    assert NodeResult.from_dict(bad.to_dict()) == bad


def test_result_line_has_every_key() -> None:
    s = summarize([_node("a", [("up", 0, 1.25, 0)], 1.25)])
    line = result_line(1, {"fleetboot": s})
    assert line == ("RESULT storm n=1 fleetboot_s=1.25 fleetboot_failed=0 fleetboot_retries=0 "
                    "classic_s=nan classic_failed=-1 classic_retries=-1")


# --- frames ---------------------------------------------------------------------------------

_ip = st.ip_addresses(v=4).map(str)


@given(st.binary(min_size=6, max_size=6), _ip, _ip, st.integers(0, 65535),
       st.integers(0, 65535), st.binary(max_size=1400))
def test_udp_frames_round_trip_with_valid_checksums(mac: bytes, src: str, dst: str, sport: int,
                                                    dport: int, payload: bytes) -> None:
    frame = frames.udp_frame(mac, frames.BROADCAST_MAC, src, dst, sport, dport, payload, 7)
    got = frames.parse_udp_frame(frame)
    assert got == frames.UdpDatagram(mac, frames.BROADCAST_MAC, src, dst, sport, dport, payload)
    assert frames.checksum(frame[14:34]) == 0  # the IP header checksum verifies


@given(st.binary(max_size=200))
def test_parsing_random_bytes_never_raises(data: bytes) -> None:
    frames.parse_udp_frame(data)


def test_truncated_frames_are_rejected() -> None:
    frame = frames.udp_frame(b"\1" * 6, frames.BROADCAST_MAC, "0.0.0.0", "255.255.255.255",
                             68, 67, b"x" * 300)
    assert frames.parse_udp_frame(frame[:-10]) is None
    assert frames.parse_udp_frame(frame[:30]) is None


def test_bpf_program_is_whole_instructions() -> None:
    assert len(frames.dhcp_client_filter()) == 8 * frames.bpf_instruction_count()


# --- iPXE scripts ----------------------------------------------------------------------------

FLEETBOOT_LIKE = """#!ipxe
# Fleetboot: node n1 (52:54:00:00:00:01): profile storm
echo Fleetboot: booting profile storm
kernel http://10.0.0.1:8080/boot/files/vmlinuz initrd=initrd fb.token=abc || goto failed
initrd --name initrd http://10.0.0.1:8080/boot/files/initrd.img || goto failed
boot || goto failed
:failed
echo Fleetboot: booting failed; asking again in 10 s
sleep 10
chain --replace --autofree http://10.0.0.1:8080/boot/script.ipxe || goto failed
"""


def test_a_profile_script_gives_kernel_initrd_and_cmdline() -> None:
    script = ipxe.parse(FLEETBOOT_LIKE, "http://10.0.0.1:8080/boot/script.ipxe", {})
    assert script.kernel == "http://10.0.0.1:8080/boot/files/vmlinuz"
    assert script.initrds == ["http://10.0.0.1:8080/boot/files/initrd.img"]
    assert script.param("fb.token") == "abc" and script.param("nope") is None
    assert script.chain is None and script.local is None


def test_variables_relative_urls_chain_and_local_boot() -> None:
    variables = ipxe.node_variables("02:fb:00:00:00:01", "10.77.128.1", "n1")
    script = ipxe.parse("#!ipxe\nset base files\nkernel ${base}/k cfg=${mac:hexhyp} ip=${net0/ip}"
                        "\ninitrd i\nboot\n", "http://s/dir/boot.ipxe", variables)
    assert script.kernel == "http://s/dir/files/k"
    assert script.cmdline == "cfg=02-fb-00-00-00-01 ip=10.77.128.1"
    assert script.initrds == ["http://s/dir/i"]
    assert ipxe.parse("#!ipxe\nchain --autofree next.ipxe\n", "http://s/a/b", {}).chain == \
        "http://s/a/next.ipxe"
    assert ipxe.parse("#!ipxe\nsanboot --drive 0x80\n", "http://s/", {}).local == "sanboot"
    waiting = ipxe.parse("#!ipxe\n:wait\necho later\nsleep 3\nchain --replace --autofree "
                         "script.ipxe || goto wait\n", "http://s/boot/script.ipxe", {})
    assert waiting.chain == "http://s/boot/script.ipxe" and waiting.sleep_s == 3.0
    with pytest.raises(ipxe.ScriptError):
        ipxe.parse("kernel x\n", "http://s/", {})
    with pytest.raises(ipxe.ScriptError):
        ipxe.parse("#!ipxe\nkernel\n", "http://s/", {})


@given(st.text(max_size=300))
def test_scripts_parse_or_raise_script_error(text: str) -> None:
    with contextlib.suppress(ipxe.ScriptError):
        ipxe.parse("#!ipxe\n" + text, "http://s/x", {"mac": "aa"})


# --- HTTP response parsing -----------------------------------------------------------------


def _feed_in_pieces(raw: bytes, cuts: list[int], keep: bool = True) -> tuple[object, int]:
    parser = ResponseParser(keep_body=keep)
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    used_total = 0
    for a, b in itertools.pairwise(points):
        piece = raw[a:b]
        while piece:
            response, used = parser.feed(piece)
            used_total += used
            piece = piece[used:]
            if response is not None:
                return response, used_total
            if used == 0:
                break
    return None, used_total


@given(st.binary(max_size=3000), st.lists(st.integers(0, 10_000), max_size=8),
       st.booleans())
def test_sized_and_chunked_bodies_survive_any_split(body: bytes, cuts: list[int],
                                                    chunked: bool) -> None:
    if chunked:
        pieces = [body[i:i + 700] for i in range(0, len(body), 700)]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded
    else:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    response, used = _feed_in_pieces(raw, cuts)
    assert response is not None and used == len(raw)
    assert response.body == body and response.size == len(body)  # type: ignore[attr-defined]


def test_discarded_bodies_are_counted_only() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    response, _ = _feed_in_pieces(raw, [3, 40], keep=False)
    assert response.size == 5 and response.body == b"" and response.will_close  # type: ignore[attr-defined]


def test_no_length_reads_until_close_and_204_has_no_body() -> None:
    parser = ResponseParser(keep_body=True)
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\nabc")[0] is None
    assert parser.eof().body == b"abc"
    response, _ = ResponseParser().feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert response is not None and response.status == 204


@pytest.mark.parametrize("raw", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_responses_are_http_errors(raw: bytes) -> None:
    with pytest.raises(HttpError):
        ResponseParser().feed(raw)


def test_truncated_body_is_an_error_at_eof() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(HttpError):
        parser.eof()


@given(st.binary(max_size=500))
def test_random_bytes_give_a_response_or_an_http_error(raw: bytes) -> None:
    with contextlib.suppress(HttpError):
        ResponseParser().feed(raw)


# --- kernel counters -----------------------------------------------------------------------


def test_kernel_counters_are_read_from_proc_text() -> None:
    text = ("Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n"
            "Udp: 10 0 3 9 2\n"
            "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n"
            "TcpExt: 0 5 6\n")
    assert kernel_counters(text) == {"Udp.InDatagrams": 10, "Udp.NoPorts": 0, "Udp.InErrors": 3,
                                     "Udp.OutDatagrams": 9, "Udp.RcvbufErrors": 2,
                                     "TcpExt.SyncookiesSent": 0, "TcpExt.ListenOverflows": 5,
                                     "TcpExt.ListenDrops": 6}


# --- DHCP messages (through the project's codec) -----------------------------------------


def test_client_messages_carry_what_real_firmware_sends() -> None:
    hw = bytes.fromhex("02fb00000001")
    pxe = dhcpwire.pxe_personality(hw, 7, "PXEClient:Arch:00007:UNDI:003000", True)
    msg = decode(dhcpwire.discover(0x1234, hw, 3, pxe))
    assert (msg.xid, msg.secs, msg.mac, msg.message_type) == (0x1234, 3, hw, o.DISCOVER)
    assert msg.flags & o.BROADCAST_FLAG
    assert msg.options[o.CLIENT_ARCH] == b"\x00\x07"
    assert msg.options[o.VENDOR_CLASS].startswith(o.PXE_CLIENT)
    ipxe_who = dhcpwire.ipxe_personality(hw, 7, "PXEClient:Arch:00007:UNDI:003010", True)
    os_who = dhcpwire.os_personality(hw, "udhcp 1.35.0", False)
    ids = {dict(w.options).get(o.CLIENT_ID) for w in (pxe, ipxe_who, os_who)}
    assert len(ids) == 3  # the OS asks with another client-id than the firmware

    reply = DhcpPacket(op=o.BOOTREPLY, xid=0x1234, yiaddr=o.ip_int("10.77.128.1"),
                       siaddr=o.ip_int("10.77.0.1"), chaddr=hw.ljust(16, b"\0"),
                       options={o.MESSAGE_TYPE: bytes([o.OFFER]),
                                o.SERVER_ID: o.ip_bytes(o.ip_int("10.77.0.1")),
                                o.BOOTFILE_NAME: b"snponly.efi"})
    offer = dhcpwire.read_reply(encode(reply))
    assert offer is not None
    assert (offer.yiaddr, offer.server_id, offer.file) == ("10.77.128.1", "10.77.0.1",
                                                            "snponly.efi")
    req = decode(dhcpwire.request(0x1234, hw, 4, os_who, offer))
    assert req.message_type == o.REQUEST and not req.flags & o.BROADCAST_FLAG
    assert req.options[o.REQUESTED_ADDRESS] == bytes([10, 77, 128, 1])
    assert req.options[o.SERVER_ID] == bytes([10, 77, 0, 1])
    # A request (op 1) is not a reply; garbage is nothing.
    assert dhcpwire.read_reply(dhcpwire.discover(1, hw, 0, pxe)) is None


@given(st.binary(max_size=600))
def test_reading_random_replies_never_raises(data: bytes) -> None:
    dhcpwire.read_reply(data)


def test_settings_for_the_fleetboot_stack_are_yaml_values() -> None:
    from fleetboot.storm.fleetboot_stack import parse_settings
    from fleetboot.storm.stacks import StackError

    assert parse_settings(["admission.max_booting=300", "http.access_log=true", "a.b= x "]) == {
        "admission.max_booting": 300, "http.access_log": True, "a.b": "x"}
    with pytest.raises(StackError, match="KEY=VALUE"):
        parse_settings(["admission.max_booting"])


def test_settings_override_the_stacks_own_configuration(tmp_path: Path) -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from fleetboot.config import Settings
    from fleetboot.storm.fleetboot_stack import FleetbootStack
    from fleetboot.storm.plan import make_plan
    from fleetboot.storm.stacks import StormFiles

    files = StormFiles(tmp_path / "b", tmp_path / "k", tmp_path / "i")
    stack = FleetbootStack(make_plan(3), files, tmp_path,
                           overrides={"admission.max_booting": 2, "http.port": 9090})
    settings = stack.settings(cast(Any, SimpleNamespace(bridge="br-storm")))
    assert settings["admission"] == {"max_booting": 2}
    assert settings["http"] == {"port": 9090}
    assert settings["dhcp"] == {"interfaces": ["br-storm"]}
    Settings.model_validate(settings)  # what `fleetboot serve` will read
