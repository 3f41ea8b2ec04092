"""The management API through a real HTTP client against a running server, on
SQLite and PostgreSQL: CRUD, validation errors, pagination and filters, tokens,
roles, the audit log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_helpers import Server, running

from fleetboot.inventory.db import Database


@pytest.fixture
async def server(db: Database, tmp_path: Path) -> AsyncIterator[Server]:
    async with running(db, tmp_path) as srv:
        yield srv


async def _fleet(c, n: int = 3) -> None:  # type: ignore[no-untyped-def]
    r = await c.post("/subnets", json={"name": "lab", "cidr": "10.9.0.0/24",
                                       "router": "10.9.0.1",
                                       "pools": [{"start": "10.9.0.100", "end": "10.9.0.199"}]})
    assert r.status_code == 201, r.text
    r = await c.post("/profiles", json={"name": "rescue", "kernel": "vmlinuz",
                                        "initrd": "initrd.img", "cmdline": "console=ttyS0"})
    assert r.status_code == 201, r.text
    for i in range(n):
        r = await c.post("/nodes", json={
            "name": f"n{i:02d}", "interfaces": [{"mac": f"52:54:00:00:00:{i:02x}"},
                                                {"mac": f"52:54:00:00:01:{i:02x}", "boot": True}]})
        assert r.status_code == 201, r.text


async def test_crud_of_subnets_nodes_profiles_and_boot_levels(server: Server) -> None:
    async with server.client() as c:
        await _fleet(c)
        node = (await c.get("/nodes/n01")).json()
        assert [i["boot"] for i in node["interfaces"]] == [False, True]
        assert node["state"] == "OFF"

        r = await c.put("/nodes/n01/boot/next", json={"action": "profile", "profile": "rescue"})
        assert r.status_code == 200, r.text
        assert r.json()["boot"]["next"] == {"action": "profile", "profile": "rescue"}
        why = (await c.get("/nodes/n01/why")).json()
        assert why["profile"] == "rescue" and why["one_shot"] is True
        assert why["rule"] == "one-shot next boot"
        assert (await c.delete("/nodes/n01/boot/next")).status_code == 200
        assert (await c.get("/nodes/n01/why")).json()["rule"] == "node default"

        r = await c.patch("/nodes/n01", json={"boot_interface": "52:54:00:00:00:01",
                                              "arch": "aarch64"})
        assert r.status_code == 200, r.text
        assert r.json()["arch"] == "aarch64"
        assert [i["boot"] for i in r.json()["interfaces"]] == [True, False]
        r = await c.post("/nodes/n01/interfaces", json={"mac": "52-54-00-00-02-01"})
        assert r.status_code == 201 and len(r.json()["interfaces"]) == 3
        r = await c.delete("/nodes/n01/interfaces/52:54:00:00:02:01")
        assert len(r.json()["interfaces"]) == 2

        r = await c.post("/subnets/lab/reservations", json={"mac": "52:54:00:00:01:02",
                                                            "address": "10.9.0.12"})
        assert r.status_code == 201, r.text
        assert r.json()["reservations"][0]["address"] == "10.9.0.12"
        assert (await c.delete("/reservations/52:54:00:00:01:02")).status_code == 200
        pools = (await c.get("/pools")).json()
        assert pools == [{"subnet": "lab", "cidr": "10.9.0.0/24", "start": "10.9.0.100",
                          "end": "10.9.0.199", "size": 100, "leased": 0, "percent": 0.0}]

        assert (await c.delete("/nodes/n02")).json() == {"deleted": "n02"}
        assert (await c.get("/nodes/n02")).status_code == 404
        assert [p["name"] for p in (await c.get("/profiles")).json()] == ["rescue"]


async def test_errors_are_json_and_say_what_to_fix(server: Server) -> None:
    async with server.client() as c:
        await _fleet(c, 1)
        r = await c.post("/nodes", json={"name": "n00",
                                         "interfaces": [{"mac": "52:54:00:aa:00:01"}]})
        assert r.status_code == 400
        assert r.json() == {"error": "node 'n00' exists; use `fleetboot node edit n00`"}
        r = await c.post("/nodes", json={"name": "x", "interfaces": [{"mac": "not-a-mac"}]})
        assert r.status_code == 400 and "not-a-mac" in r.json()["error"]
        r = await c.post("/nodes", json={"name": "", "interfaces": []})
        assert r.status_code == 422
        assert "name: String should have at least 1 character" in r.json()["error"]
        r = await c.get("/nodes/nope")
        assert r.status_code == 404 and "fleetboot node list" in r.json()["error"]
        r = await c.post("/subnets", json={"name": "other", "cidr": "10.9.0.0/25"})
        assert r.status_code == 400 and "overlaps subnet 'lab'" in r.json()["error"]
        r = await c.put("/nodes/n00/boot/sometimes", json={"action": "local"})
        assert r.status_code == 422
        r = await c.get("/nodes", params={"state": "DANCING"})
        assert r.status_code == 400 and "states are" in r.json()["error"]


async def test_pagination_and_filters(server: Server) -> None:
    async with server.client() as c:
        await _fleet(c, 12)
        await server.follow_inventory()  # counts are the running server's
        page = (await c.get("/nodes", params={"limit": 5, "offset": 10})).json()
        assert page["total"] == 12 and [n["name"] for n in page["items"]] == ["n10", "n11"]
        assert page["counts"]["OFF"] == 12
        page = (await c.get("/nodes", params={"q": "n0", "limit": 3})).json()
        assert page["total"] == 10 and len(page["items"]) == 3
        page = (await c.get("/nodes", params={"mac": "52:54:00:00:01:07"})).json()
        assert [n["name"] for n in page["items"]] == ["n07"]
        assert (await c.get("/nodes", params={"limit": 0})).status_code == 422


async def test_state_changes_through_the_server(server: Server) -> None:
    async with server.client() as c:
        await _fleet(c, 2)
        await server.follow_inventory()
        r = await c.put("/nodes/n01/state", json={"state": "UP", "message": "by hand"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "UP"
        page = (await c.get("/nodes", params={"state": "UP"})).json()
        assert [n["name"] for n in page["items"]] == ["n01"]
        assert page["counts"]["UP"] == 1
        tl = (await c.get("/nodes/n01/timeline")).json()
        assert tl["events"][-1]["state"] == "UP"


async def test_config_sections_and_fleet_defaults(server: Server) -> None:
    async with server.client() as c:
        await _fleet(c, 1)
        r = await c.put("/defaults/config/domain", json="fleet.example")
        assert r.status_code == 200, r.text
        r = await c.put("/nodes/n00/config/domain", json="n.example")
        assert r.status_code == 200, r.text
        assert (await c.get("/nodes/n00/config", params={"stored": True})).json() == {
            "domain": "n.example"}
        assert (await c.get("/nodes/n00/config")).json()["domain"] == "n.example"
        r = await c.put("/nodes/n00/config/ntp", json={"servers": "nope"})
        assert r.status_code == 400 and "sections are: hostname" in r.json()["error"]
        assert (await c.delete("/nodes/n00/config/domain")).status_code == 200
        assert (await c.get("/nodes/n00/config")).json()["domain"] == "fleet.example"
        assert (await c.get("/defaults/config")).json() == {"domain": "fleet.example"}


async def test_tokens_roles_and_the_audit_log(server: Server) -> None:
    async with server.client() as admin:
        await _fleet(admin, 1)
        viewer = (await admin.post("/tokens", json={"name": "dash", "role": "viewer"})).json()
        oper = (await admin.post("/tokens", json={"name": "bot", "role": "operator"})).json()
        assert viewer["secret"].startswith("fbt_")
        listed = (await admin.get("/tokens")).json()
        assert {t["name"]: t["role"] for t in listed} == {"dash": "viewer", "bot": "operator"}
        assert "secret" not in str(listed) and viewer["secret"] not in str(listed)

    async with server.client(None) as anon, server.client("fbt_wrong") as wrong, \
            server.client(viewer["secret"]) as view, server.client(oper["secret"]) as op:
        assert (await anon.get("/nodes")).status_code == 401
        assert (await wrong.get("/nodes")).status_code == 401
        assert (await view.get("/nodes")).status_code == 200
        for client, status in ((anon, 401), (wrong, 401), (view, 403)):
            r = await client.delete("/nodes/n00")
            assert r.status_code == status and "error" in r.json()
        assert (await op.get("/nodes/n00")).status_code == 200  # nothing was changed
        assert (await op.post("/tokens", json={"name": "x", "role": "admin"})).status_code == 403
        r = await op.put("/nodes/n00/boot/default", json={"action": "wait"})
        assert r.status_code == 200, r.text

        entries = (await op.get("/audit")).json()
        latest = entries[0]
        assert latest["actor"] == "token:bot" and latest["kind"] == "nodes"
        assert latest["via"] == "PUT /api/v1/nodes/n00/boot/default"
        assert latest["before"]["default_action"] == "local"
        assert latest["after"]["default_action"] == "wait"
        made = [e for e in entries if e["kind"] == "api_tokens"]
        assert made and all(e["after"]["token_hash"] == "(hidden)" for e in made)

    async with server.client() as admin:
        assert (await admin.delete("/tokens/bot")).status_code == 200
    async with server.client(oper["secret"]) as op:
        assert (await op.get("/nodes")).status_code == 401


async def test_vms_with_their_pci_slot_map(server: Server, db: Database, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetboot.cli.vm import app as vm_app

    made = await asyncio.to_thread(  # the VM commands run their own event loop
        CliRunner().invoke, vm_app, ["create", "web1", "--nic", "model=virtio-net-pci,boot",
                                     "--nic", "model=e1000", "--db", db.url,
                                     "--run-dir", str(tmp_path / "run")])
    assert made.exit_code == 0, made.output
    async with server.client() as c:
        vms = (await c.get("/vms")).json()
        assert [(v["name"], v["status"], v["family"]) for v in vms] == [("web1", "stopped",
                                                                         "q35")]
        vm = (await c.get("/vms/web1")).json()
        held = [s for s in vm["slots"] if s["device"]]
        assert {s["pool"] for s in held} == {"nic"} and len(held) == 2
        assert any(s["state"] == "free" for s in vm["slots"])
        assert vm["slot_map"] == vms[0]["slot_map"]
        assert (await c.get("/vms/nope")).status_code == 404
        assert (await c.get("/hosts")).json() == [] and (await c.get("/flavors")).json() == []


async def test_vm_definitions_through_the_api(server: Server, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETBOOT_VM_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("FLEETBOOT_VM_IMAGE_DIR", str(tmp_path / "images"))
    async with server.client() as c:
        r = await c.post("/vms", json={"name": "app1", "nics": ["model=virtio-net-pci,boot"]})
        assert r.status_code == 201, r.text
        assert [s["device"] for s in r.json()["slots"] if s["device"]] == ["net0"]
        r = await c.post("/vms", json={"name": "bad", "nics": ["model=e1000,speed=9"]})
        assert r.status_code == 400 and "unknown key(s) speed" in r.json()["error"]
        r = await c.post("/vms/app1/hotplug", json={"nic": "model=e1000"})
        assert r.status_code == 200, r.text
        assert r.json()["hotplugged"] is False and r.json()["device"] == "net1"
        r = await c.post("/vms/app1/hotplug", json={})
        assert r.status_code == 400 and "exactly one of nic or disk" in r.json()["error"]
        held = [s["device"] for s in (await c.get("/vms/app1")).json()["slots"] if s["device"]]
        assert held == ["net0", "net1"]
        r = await c.post("/vms/app1/unplug/net1")
        assert r.status_code == 200, r.text
        held = [s["device"] for s in (await c.get("/vms/app1")).json()["slots"] if s["device"]]
        assert held == ["net0"]
        assert (await c.delete("/vms/app1")).json() == {"deleted": "app1"}
        assert (await c.get("/vms")).json() == []
        kinds = {(e["action"], e["kind"]) for e in (await c.get("/audit")).json()
                 if e["actor"] == "admin-token"}
        assert ("create", "vm_instances") in kinds and ("delete", "vm_instances") in kinds


async def test_server_sent_events_follow_state_changes(server: Server) -> None:
    async with server.client() as c:
        await _fleet(c, 2)
        await server.follow_inventory()
        async with c.stream("GET", "/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            seen: list[str] = []
            async for line in lines:  # the first counts arrive at once
                seen.append(line)
                if line.startswith("data:") and "OFF" in line:
                    break
            assert "event: counts" in seen
            r = await c.put("/nodes/n00/state", json={"state": "FAILED", "message": "disk"})
            assert r.status_code == 200
            async for line in lines:
                if line.startswith("data:") and '"name": "n00"' in line:
                    doc = json.loads(line[5:])
                    assert (doc["state"], doc["message"]) == ("FAILED", "disk")
                    break


async def test_pages_follow_cli_changes_once_the_server_reloads(server: Server,
                                                                db: Database) -> None:
    from fleetboot.inventory import service

    async with server.client() as c:
        await _fleet(c, 2)
        await server.follow_inventory()
        first = (await c.get("/nodes")).json()
        assert [n["name"] for n in first["items"]] == ["n00", "n01"]
        with db.session() as s:  # a change that does not go through the API
            service.add_node(s, "n02", [service.NicSpec("52:54:00:00:09:02")])
        await server.follow_inventory()  # what the runtime does within a second
        assert [n["name"] for n in (await c.get("/nodes")).json()["items"]] == [
            "n00", "n01", "n02"]
        await c.delete("/nodes/n02")  # through the API: visible at once
        assert (await c.get("/nodes")).json()["total"] == 2
