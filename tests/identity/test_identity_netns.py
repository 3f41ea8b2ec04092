"""Node identity on a shared link, with a real ``fleetboot serve`` and real clients
(busybox udhcpc, arping, curl) in namespaces on one bridge.

Issue 11 item 1: node A takes over node B's leased address (adds it, sends a
gratuitous ARP) and asks for B's script and configuration: refused, and B's own
per-boot token still reads B's secrets afterwards.
Issue 21: in proxy mode (dnsmasq gives the addresses) a machine is identified by
what is seen on the link, and a lease left from before proxy mode identifies
nobody: a stranger given that address gets no node's identity.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetboot.lab import netns
from fleetboot.lab.fleet import FleetbootServer, image_path, parse_timeline
from fleetboot.lab.netns import Lab
from fleetboot.lab.sitedhcp import (
    Machine,
    SiteDhcp,
    have_dnsmasq,
    neighbour_mac,
    stale_lease_database,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

MAC_A, MAC_B, MAC_STRANGER = "52:54:00:11:00:0a", "52:54:00:11:00:0b", "52:54:00:11:00:5e"
SECRET_PATH = "/etc/fleetboot/b-secret"
SECRET_BODY = b"only node b may read this\n"
TOKEN = re.compile(r"fleetboot\.token=(\S+)")


@pytest.fixture
def shared_link() -> Iterator[Lab]:
    if not netns.have_netns():
        pytest.skip("needs root and iproute2 to create network namespaces")
    with Lab.create(subnet="10.79.0", with_bridge=True) as lab:
        lab.client.ip("link", "set", lab.client_if, "down")  # the lab's own client is unused
        yield lab


def _inventory(lab: Lab, images: dict[str, str], pool: bool = True) -> dict[str, Any]:
    net = lab.server_ip.rsplit(".", 1)[0]
    subnet: dict[str, Any] = {"name": "link", "cidr": f"{net}.0/24", "router": lab.server_ip,
                              "lease_seconds": 3600}
    if pool:
        subnet["pools"] = [{"start": f"{net}.100", "end": f"{net}.149"}]
    return {
        "profiles": [{"name": "linux", "kernel": images["vmlinuz"],
                      "initrd": images["initrd.img"], "cmdline": "console=ttyS0"}],
        "subnets": [subnet],
        "nodes": [{"name": name, "arch": "x86_64", "interfaces": [{"mac": mac, "boot": True}],
                   "boot": {"default": "linux"}}
                  for name, mac in (("node-a", MAC_A), ("node-b", MAC_B))],
    }


def _secrets() -> list[list[str]]:
    item = {"path": SECRET_PATH, "content_b64": base64.b64encode(SECRET_BODY).decode(),
            "sha256": hashlib.sha256(SECRET_BODY).hexdigest(), "mode": "0600", "secret": True}
    return [["config", "set", "node-b", "files", json.dumps([item])],
            ["config", "set", "node-b", "accounts",
             json.dumps([{"name": "bob", "ssh_keys": ["ssh-ed25519 AAAAC3Nz bob@b"]}])]]


def _start(lab: Lab, work: Path, config: dict[str, Any] | None = None, pool: bool = True,
           database_url: str | None = None) -> FleetbootServer:
    sources = {}
    for name in ("vmlinuz", "initrd.img"):
        src = work / "src" / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(name.encode() * 64)
        sources[name] = src
    paths = {name: image_path(src, name) for name, src in sources.items()}
    return FleetbootServer.start(lab, work / "server", _inventory(lab, paths, pool),
                                 images=sources, setup=_secrets(), config=config,
                                 database_url=database_url)


def _config(machine: Machine, server: FleetbootServer, source: str,
            token: str | None = None) -> tuple[int, str]:
    headers = [f"X-Fleetboot-Token: {token}"] if token else []
    return machine.curl(server.url + "/v1/self/config", source, headers)


def _metric(server: FleetbootServer, name: str) -> float:
    done = server.lab.server.run(["curl", "-sS", "-m", "10", "-H",
                                  f"Authorization: Bearer {server.admin_token}",
                                  server.url + "/metrics"])
    found = re.search(rf"^\S*{re.escape(name)}\S* (\S+)$", done.stdout, re.M)
    return float(found.group(1)) if found else 0.0


def test_an_address_takeover_gets_neither_script_nor_secrets(shared_link: Lab,
                                                             tmp_path: Path) -> None:
    lab = shared_link
    server = _start(lab, tmp_path)
    a = b = None
    try:
        a, b = Machine.attach(lab, MAC_A, "fba"), Machine.attach(lab, MAC_B, "fbb")
        addr_a, addr_b = a.dhcp(tmp_path), b.dhcp(tmp_path)  # real leases from Fleetboot
        # B boots: its script carries B's per-boot token; B reads its secrets with it.
        status, script = b.curl(server.url + "/boot/script.ipxe")
        assert status == 200 and "node-b" in script, script
        found = TOKEN.search(script)
        assert found is not None, script
        token_b = found.group(1)
        status, body = _config(b, server, addr_b, token_b)
        assert status == 200 and SECRET_PATH in body and "bob" in body, body

        # The attack: A adds B's address, announces it, and asks as B.
        time.sleep(1.2)  # past the neighbour lock time, so the announcement is taken
        a.ns.ip("addr", "add", f"{addr_b}/24", "dev", a.dev)
        a.announce(addr_b)
        status, stolen = a.curl(server.url + "/boot/script.ipxe", addr_b)
        assert neighbour_mac(lab.server, addr_b) == MAC_A  # the link really was taken over
        assert "node-b" not in stolen and "fleetboot.token" not in stolen, stolen
        status, body = _config(a, server, addr_b)
        assert status == 403 and "node-b" not in body and SECRET_PATH not in body, body
        assert MAC_A in body  # the refusal says what the server saw
        status, body = _config(a, server, addr_b, token_b)  # even with B's token
        assert status == 403 and SECRET_PATH not in body
        assert _metric(server, "link_mismatch") >= 3

        # A is still itself from its own address.
        status, own = a.curl(server.url + "/boot/script.ipxe", addr_a)
        assert status == 200 and "node-a" in own and "fleetboot.token" in own

        # A gives the address back; B announces itself: B's token was never revoked.
        a.ns.ip("addr", "del", f"{addr_b}/24", "dev", a.dev)
        time.sleep(1.2)
        b.announce(addr_b)
        assert neighbour_mac(lab.server, addr_b) == MAC_B
        status, body = _config(b, server, addr_b, token_b)
        assert status == 200 and SECRET_PATH in body, body
    finally:
        for machine in (a, b):
            if machine is not None:
                machine.close()
        server.close()


@pytest.fixture
def proxy_link(shared_link: Lab, tmp_path: Path) -> Iterator[tuple[Lab, SiteDhcp]]:
    if not have_dnsmasq():
        pytest.skip("needs dnsmasq (dnsmasq-base)")
    net = shared_link.server_ip.rsplit(".", 1)[0]
    site = SiteDhcp.start(shared_link.server, "br0", f"{net}.150", f"{net}.199",
                          tmp_path / "site", hosts=[(MAC_STRANGER, f"{net}.120")])
    try:
        yield shared_link, site
    finally:
        site.close()


def _all_events(server: FleetbootServer, node: str) -> list[dict[str, Any]]:
    """Every boot's timeline of ``node`` (``fleetboot timeline`` shows one boot)."""
    boots = server.cli("timeline", node, "--json").stdout
    last = max((e["boot"] for e in parse_timeline(boots)), default=1)
    return [e for boot in range(1, last + 1) for e in server.timeline(node, boot)]


def test_proxy_mode_identifies_by_the_link_and_ignores_stale_leases(
        proxy_link: tuple[Lab, SiteDhcp], tmp_path: Path) -> None:
    lab, site = proxy_link
    net = lab.server_ip.rsplit(".", 1)[0]
    stale = f"{net}.120"  # dnsmasq gives this one to the stranger
    server = _start(lab, tmp_path, config={"dhcp": {"proxy": True}}, pool=False,
                    database_url=stale_lease_database(tmp_path / "server", stale, MAC_B))
    b = stranger = None
    try:
        assert "ignoring 1 leases" in server.log_tail()
        b, stranger = Machine.attach(lab, MAC_B, "fbb"), Machine.attach(lab, MAC_STRANGER, "fbs")
        addr_b = b.dhcp(tmp_path)
        # The site server gave it, not Fleetboot (dnsmasq's log may lag its packet a little).
        deadline = time.monotonic() + 5
        while not site.acked(MAC_B) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert site.acked(MAC_B) == [addr_b]
        status, script = b.curl(server.url + f"/boot/script.ipxe?mac={MAC_B}")
        assert status == 200 and "node-b" in script and "fleetboot.token" in script, script
        token_b = TOKEN.search(script).group(1)  # type: ignore[union-attr]
        status, body = _config(b, server, addr_b, token_b)
        assert status == 200 and SECRET_PATH in body, body
        # A URL claiming another MAC than the link shows is refused.
        status, claimed = b.curl(server.url + f"/boot/script.ipxe?mac={MAC_A}")
        assert "node-b" not in claimed and "fleetboot.token" not in claimed

        # The stranger gets the address node-b held in Fleetboot's old lease table.
        assert stranger.dhcp(tmp_path) == stale
        status, script = stranger.curl(server.url + "/boot/script.ipxe")
        assert status == 200 and "node-b" not in script and "fleetboot.token" not in script
        status, body = _config(stranger, server, stale)
        assert status == 403 and "node-b" not in body, body
        # The timeline shows the site server's part: its ACK seen on the link, and from whom.
        events = _all_events(server, "node-b")
        seen = [e for e in events if e["source"] == "dhcp" and e["kind"] == "ACK"
                and e["detail"].get("dir") == "seen"]
        assert seen and seen[0]["address"] == addr_b, events
        assert seen[0]["detail"]["server"] == lab.server_ip
        requests = [e for e in events if e["kind"] == "REQUEST"]
        assert requests and requests[0]["detail"].get("server_id") == lab.server_ip
    finally:
        for machine in (b, stranger):
            if machine is not None:
                machine.close()
        server.close()
