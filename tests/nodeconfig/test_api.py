"""The node and admin APIs through ASGI: identity, isolation, ETags, states, timeouts."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from nodeconfig_helpers import Fleet, make_fleet, node_ref, token_of

from fleetboot.inventory.db import Database
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.nodeconfig.states import State
from fleetboot.nodeconfig.timeline import read_timeline
from fleetboot.server.events import BootEvent

ADMIN = {"Authorization": "Bearer admin-secret"}


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    service: NodeConfigService
    fleet: Fleet
    clock: Clock

    def client(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.service.asgi_app(), client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://fleetboot")

    def token(self, name: str) -> str:
        node = self.fleet[name]
        return token_of(self.service.cmdline_hook(node_ref(node), node.mac, node.address))


async def _env(db: Database, **settings: object) -> Env:
    fleet = make_fleet(db)
    clock = Clock()
    service = NodeConfigService(db, fleet.directory(), NodeConfigSettings(**settings),  # type: ignore[arg-type]
                                admin_token="admin-secret", clock=clock)
    await service.start()
    return Env(service, fleet, clock)


@pytest.fixture
async def env(sqlite_db: Database) -> AsyncIterator[Env]:
    e = await _env(sqlite_db)
    yield e
    await e.service.stop()


async def test_a_node_reads_its_whole_document_with_its_token(env: Env) -> None:
    async with env.client(env.fleet["a"].address) as c:
        r = await c.get("/v1/self/config", headers={"X-Fleetboot-Token": env.token("a")})
    assert r.status_code == 200
    doc = r.json()
    assert doc["node"] == "a" and doc["hostname"] == "host-a"
    assert doc["accounts"][0]["name"] == "user-a"
    assert doc["files"][0]["path"] == "/etc/motd"
    assert r.headers["etag"].startswith('"') and r.headers["content-type"] == "application/json"
    # one key per line, so a shell client can cut it without a JSON parser
    assert r.text.splitlines()[0] == '{"version":1,' and len(r.text.splitlines()) == len(doc)


async def test_without_the_token_secrets_are_left_out(env: Env) -> None:
    async with env.client(env.fleet["a"].address) as c:
        r = await c.get("/v1/self/config")
        accounts = await c.get("/v1/self/config/accounts")
        hostname = await c.get("/v1/self/config/hostname")
    assert r.status_code == 200 and "accounts" not in r.json()
    assert r.json()["redacted"] == ["accounts", "tunnels"] and "ssh-ed25519" not in r.text
    assert accounts.status_code == 401 and "token" in accounts.json()["error"]
    assert hostname.status_code == 200 and hostname.json() == "host-a"


async def test_sections_alone_for_old_scripts(env: Env) -> None:
    token = env.token("a")
    async with env.client(env.fleet["a"].address) as c:
        r = await c.get("/v1/self/config/accounts", headers={"X-Fleetboot-Token": token})
        missing = await c.get("/v1/self/config/rpms", headers={"X-Fleetboot-Token": token})
    assert r.status_code == 200 and r.json()[0]["name"] == "user-a"
    assert missing.status_code == 404 and "sections are" in missing.json()["error"]


async def test_a_cannot_read_b_by_spoofing_the_address(env: Env) -> None:
    token_a = env.token("a")
    env.token("b")
    async with env.client(env.fleet["b"].address) as c:  # A sends from B's address
        with_own_token = await c.get("/v1/self/config", headers={"X-Fleetboot-Token": token_a})
        secret = await c.get("/v1/self/config/accounts", headers={"X-Fleetboot-Token": token_a})
        bare = await c.get("/v1/self/config")
    assert with_own_token.status_code == 401 and secret.status_code == 401
    # Without a token the address alone yields only B's public part: never a secret.
    assert "user-b" not in bare.text and "ssh-ed25519" not in bare.text


async def test_a_cannot_read_b_by_naming_its_mac_or_host(env: Env) -> None:
    token_a, b = env.token("a"), env.fleet["b"]
    async with env.client(env.fleet["a"].address) as c:
        r = await c.get(f"/v1/self/config?mac={b.mac}&node=b", headers={
            "X-Fleetboot-Token": token_a, "X-Fleetboot-Mac": b.mac, "Host": "b",
            "X-Fleetboot-Node": "b"})
    assert r.status_code == 200 and r.json()["node"] == "a" and "user-b" not in r.text


async def test_a_cannot_read_b_with_a_guessed_or_stolen_token(env: Env) -> None:
    token_b = env.token("b")
    from fleetboot.nodeconfig.tokens import token_hash

    guesses = ["", "0" * 32, secrets.token_urlsafe(24), token_hash(token_b), token_b + "x",
               token_b[:-1], "x" * 5000, token_b.upper()]
    async with env.client(env.fleet["a"].address) as c:
        for guess in guesses:
            r = await c.get("/v1/self/config/accounts", headers={"X-Fleetboot-Token": guess})
            assert r.status_code == 401, guess
        # B's real token, stolen, does not work from A's address either
        r = await c.get("/v1/self/config", headers={"X-Fleetboot-Token": token_b})
        assert r.status_code == 401
    assert env.service.responder.denied["token"] == len(guesses) + 1


@pytest.mark.parametrize("header", [
    ("X-Forwarded-For", "127.0.0.11"), ("Forwarded", "for=127.0.0.11"),
    ("X-Real-IP", "127.0.0.11"), ("x-forwarded-for", "127.0.0.10"), ("Via", "1.1 proxy"),
])
async def test_proxy_headers_are_refused_even_with_a_valid_token(env: Env, header: tuple[str, str],
                                                                 ) -> None:
    token_b = env.token("b")
    async with env.client(env.fleet["b"].address) as c:
        r = await c.get("/v1/self/config", headers={header[0]: header[1],
                                                    "X-Fleetboot-Token": token_b})
        state = await c.post("/v1/self/state", content="state=UP",
                             headers={header[0]: header[1], "X-Fleetboot-Token": token_b})
    assert r.status_code == 403 and "proxy" in r.json()["error"]
    assert state.status_code == 403


async def test_addresses_without_a_lease_or_node_are_refused(env: Env) -> None:
    env.service.directory.mapping["127.0.0.99"] = "52:54:00:99:99:99"  # type: ignore[attr-defined]
    async with env.client("127.0.0.98") as c:
        no_lease = await c.get("/v1/self/config")
    async with env.client("127.0.0.99") as c:
        no_node = await c.get("/v1/self/config")
    assert no_lease.status_code == 403 and "no current lease" in no_lease.json()["error"]
    assert no_node.status_code == 403 and "not an interface" in no_node.json()["error"]


async def test_etag_304_and_a_change_gives_a_new_etag(env: Env) -> None:
    token = env.token("a")
    headers = {"X-Fleetboot-Token": token}
    async with env.client(env.fleet["a"].address) as c:
        first = await c.get("/v1/self/config", headers=headers)
        etag = first.headers["etag"]
        same = await c.get("/v1/self/config", headers={**headers, "If-None-Match": etag})
        weak = await c.get("/v1/self/config", headers={**headers, "If-None-Match": f"W/{etag}"})
        head = await c.head("/v1/self/config", headers=headers)
        b_before = (await env.client(env.fleet["b"].address).get("/v1/self/config")).headers[
            "etag"]
        put = await c.put("/v1/admin/nodes/a/config/mounts", headers=ADMIN,
                          content=json.dumps([{"source": "srv:/data", "target": "/data"}]))
        changed = await c.get("/v1/self/config", headers={**headers, "If-None-Match": etag})
    assert first.status_code == 200 and same.status_code == 304 and same.content == b""
    assert same.headers["etag"] == etag and weak.status_code == 304
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
    assert put.status_code == 200 and put.json()["value"][0]["options"] == "defaults"
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["mounts"][0]["target"] == "/data"
    b_after = (await env.client(env.fleet["b"].address).get("/v1/self/config")).headers["etag"]
    assert b_after == b_before  # unchanged documents keep their ETag across re-renders


async def test_a_bad_section_value_is_explained(env: Env) -> None:
    async with env.client("127.0.0.1") as c:
        r = await c.put("/v1/admin/nodes/a/config/files", headers=ADMIN,
                        content=json.dumps([{"path": "relative"}]))
        ghost = await c.put("/v1/admin/nodes/ghost/config/files", headers=ADMIN, content="[]")
    assert r.status_code == 400 and "absolute path" in r.json()["error"]
    assert ghost.status_code == 404


async def test_admin_api_needs_the_admin_token(env: Env, sqlite_db: Database) -> None:
    async with env.client("127.0.0.1") as c:
        assert (await c.get("/v1/admin/nodes")).status_code == 401
        assert (await c.get("/v1/admin/nodes", headers={"Authorization": "Bearer no"})
                ).status_code == 401
        assert (await c.put("/v1/admin/nodes/a/config/hostname", content='"x"')
                ).status_code == 401
        assert (await c.get("/v1/admin/nodes", headers=ADMIN)).status_code == 200
    # A node's per-boot token is no admin credential.
    async with env.client(env.fleet["a"].address) as c:
        r = await c.get("/v1/admin/nodes", headers={"Authorization": f"Bearer {env.token('a')}"})
        assert r.status_code == 401
    env.service.admin_token = None
    async with env.client("127.0.0.1") as c:
        r = await c.get("/v1/admin/nodes", headers=ADMIN)
    assert r.status_code == 403 and "disabled" in r.json()["error"]


def _boot_events(env: Env, name: str) -> None:
    """What DHCP and HTTP report while a node network-boots into its kernel."""
    n, t = env.fleet[name], env.clock.now
    sink = env.service.sink
    pxe = {"vendor_class": "PXEClient:Arch:00000:UNDI:002001", "user_class": "iPXE"}
    sink(BootEvent(t, "dhcp", "DISCOVER", n.mac, None, pxe))
    sink(BootEvent(t + 4, "dhcp", "DISCOVER", n.mac, None, {**pxe, "retransmit": 1}))
    sink(BootEvent(t + 4.1, "dhcp", "ACK", n.mac, n.address, pxe))
    sink(BootEvent(t + 4.5, "http", "script", n.mac, n.address, {"action": "profile"}))
    sink(BootEvent(t + 5, "http", "file", n.mac, n.address,
                   {"path": "vmlinuz", "role": "kernel", "size": 5_000_000, "duration_s": 1.5}))
    sink(BootEvent(t + 9, "dhcp", "DISCOVER", n.mac, None, {"vendor_class": "udhcp 1.35.0"}))


async def test_state_report_up_and_the_boot_timeline(env: Env) -> None:
    a = env.fleet["a"]
    token = env.token("a")
    _boot_events(env, "a")
    env.service.process_pending()
    assert env.service.statuses[a.id].state is State.BOOTING
    env.clock.now += 10
    async with env.client(a.address) as c:
        await c.get("/v1/self/client.sh")
        env.service.process_pending()
        assert env.service.statuses[a.id].state is State.BOOTING  # on the timeline only
        await c.get("/v1/self/config", headers={"X-Fleetboot-Token": token})
        env.service.process_pending()
        assert env.service.statuses[a.id].state is State.CONFIGURING
        env.clock.now += 2
        r = await c.post("/v1/self/state", content="state=UP&message=ready",
                         headers={"X-Fleetboot-Token": token,
                                  "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 202
        nodes = (await c.get("/v1/admin/nodes", headers=ADMIN)).json()
        timeline = (await c.get("/v1/admin/nodes/a/timeline", headers=ADMIN)).json()
    st = env.service.statuses[a.id]
    assert st.state is State.UP and st.last_boot_s == pytest.approx(12.0)
    assert {"name": "a", "state": "UP"}.items() <= nodes[0].items()
    kinds = [(e["source"], e["kind"]) for e in timeline["events"]]
    assert kinds == [("dhcp", "DISCOVER"), ("dhcp", "DISCOVER"), ("dhcp", "ACK"),
                     ("http", "script"), ("http", "file"), ("dhcp", "DISCOVER"),
                     ("config", "client"), ("config", "config"), ("node", "state")]
    assert [e["state"] for e in timeline["events"]][-2:] == ["CONFIGURING", "UP"]
    assert timeline["boot"] == 1


async def test_state_reports_need_the_token_and_a_known_state(env: Env) -> None:
    a = env.fleet["a"]
    async with env.client(a.address) as c:
        no_token = await c.post("/v1/self/state", content="state=UP")
        token = {"X-Fleetboot-Token": env.token("a")}
        bad = await c.post("/v1/self/state", content="state=DANCING", headers=token)
        booting = await c.post("/v1/self/state", content="state=PXEBOOTING", headers=token)
        as_json = await c.post("/v1/self/state", json={"state": "failed", "message": "disk"},
                               headers=token)
    assert no_token.status_code == 401
    assert bad.status_code == 400 and "state=UP" in bad.json()["error"]
    assert booting.status_code == 400
    assert as_json.status_code == 202
    env.service.process_pending()
    assert env.service.statuses[a.id].state is State.FAILED
    assert env.service.statuses[a.id].message == "disk"


async def test_a_node_that_never_reports_up_is_flagged(env: Env) -> None:
    a, b = env.fleet["a"], env.fleet["b"]
    _boot_events(env, "a")
    _boot_events(env, "b")
    env.service.process_pending()
    env.service.report(b.id, b.address, "UP", "")
    env.service.process_pending()
    env.clock.now += 10_000  # far past every timeout
    flagged = env.service.check_timeouts(env.clock.now)
    assert flagged == [a.id]
    st = env.service.statuses[a.id]
    assert st.stuck and st.state is State.BOOTING and "stuck in BOOTING" in st.message
    assert not env.service.statuses[b.id].stuck
    assert env.service.check_timeouts(env.clock.now + 1) == []  # flagged once
    await env.service.settle()
    with env.service.db.session() as s:
        events = read_timeline(s, a.id)
    assert events[-1].kind == "timeout" and events[-1].detail["state"] == "BOOTING"
    async with env.client("127.0.0.1") as c:
        node = (await c.get("/v1/admin/nodes/a", headers=ADMIN)).json()
    assert node["stuck"] is True


async def test_the_previous_boots_token_dies_after_its_grace(env: Env) -> None:
    a = env.fleet["a"]
    old, new = env.token("a"), env.token("a")
    async with env.client(a.address) as c:
        assert (await c.get("/v1/self/config/accounts", headers={"X-Fleetboot-Token": old})
                ).status_code == 200  # a firmware that fetched its script twice still boots
        env.clock.now += env.service.settings.token_grace_s + 1
        assert (await c.get("/v1/self/config/accounts", headers={"X-Fleetboot-Token": old})
                ).status_code == 401
        assert (await c.get("/v1/self/config/accounts", headers={"X-Fleetboot-Token": new})
                ).status_code == 200


async def test_tokens_survive_a_restart(sqlite_db: Database) -> None:
    e = await _env(sqlite_db)
    token = e.token("a")
    await e.service.stop()
    again = NodeConfigService(sqlite_db, e.fleet.directory(), admin_token="admin-secret",
                              clock=e.clock)
    await again.start()
    try:
        e2 = Env(again, e.fleet, e.clock)
        async with e2.client(e.fleet["a"].address) as c:
            r = await c.get("/v1/self/config/accounts", headers={"X-Fleetboot-Token": token})
        assert r.status_code == 200
    finally:
        await again.stop()


async def test_required_token_mode_serves_nothing_without_it(sqlite_db: Database) -> None:
    e = await _env(sqlite_db, require_token=True)
    try:
        async with e.client(e.fleet["a"].address) as c:
            assert (await c.get("/v1/self/config")).status_code == 401
            assert (await c.get("/v1/self/config", headers={"X-Fleetboot-Token": e.token("a")})
                    ).status_code == 200
    finally:
        await e.service.stop()


async def test_the_shell_client_is_served(env: Env) -> None:
    async with env.client("127.0.0.1") as c:
        r = await c.get("/v1/self/client.sh")
    assert r.status_code == 200 and r.text.startswith("#!/bin/sh")


def test_the_cmdline_hook_gives_url_token_and_client(sqlite_db: Database) -> None:
    fleet = make_fleet(sqlite_db)
    service = NodeConfigService(sqlite_db, fleet.directory(),
                                NodeConfigSettings(base_url="http://10.0.0.1:8080/"))
    args = service.cmdline_hook(node_ref(fleet["a"]), fleet["a"].mac, fleet["a"].address)
    parts = dict(a.split("=", 1) for a in args.split())
    assert parts["fleetboot.url"] == "http://10.0.0.1:8080"
    assert parts["fleetboot.hook"] == "http://10.0.0.1:8080/v1/self/client.sh"
    assert len(parts["fleetboot.token"]) >= 32
    assert service.cmdline_hook(None, None, "10.0.0.9") == ""  # unknown machines get no token


async def test_the_document_on_postgres_and_sqlite(db: Database) -> None:
    e = await _env(db)
    try:
        async with e.client(e.fleet["b"].address) as c:
            r = await c.get("/v1/self/config", headers={"X-Fleetboot-Token": e.token("b")})
        assert r.status_code == 200 and r.json()["accounts"][0]["name"] == "user-b"
    finally:
        await e.service.stop()
