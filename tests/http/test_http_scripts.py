"""Per-node iPXE scripts through the app (httpx's ASGI transport), on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from httpboot_helpers import A_IP, A_MAC, A_NIC2_IP, B_IP, UNKNOWN_IP, Boot

from fleetboot.inventory import service
from fleetboot.inventory.changes import current_revision
from fleetboot.inventory.models import BootAction, Node
from fleetboot.server.http import ScriptService


def _scripts(boot: Boot) -> ScriptService:
    return boot.app.state.fleetboot.scripts


async def _get(boot: Boot, address: str, path: str = "/boot/script.ipxe", **kw: object) -> str:
    async with boot.client(address) as client:
        resp = await client.get(path, **kw)  # type: ignore[arg-type]
        assert resp.status_code == 200, resp.text
        return resp.text


async def test_profile_script_for_node_a(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    text = await _get(boot, A_IP)
    assert text.startswith("#!ipxe\n") and "node a" in text
    assert "kernel http://10.9.0.1:8080/boot/files/images/k1/vmlinuz initrd=initrd " \
           "console=ttyS0 || goto failed" in text
    assert "initrd --name initrd http://10.9.0.1:8080/boot/files/images/k1/initrd.img" in text
    (event,) = boot.kinds("script")
    assert event.source == "http" and event.mac == A_MAC and event.address == A_IP
    assert event.detail["node"] == "a" and event.detail["profile"] == "deb"
    assert event.detail["status"] == 200 and event.detail["bytes"] == len(text.encode())


async def test_each_node_gets_only_its_own_script(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    b_script = await _get(boot, B_IP)
    assert "node b" in b_script and "sanboot" in b_script and "vmlinuz" not in b_script
    # Nothing in the request can name another node: not a query, not headers.
    spoof = await _get(boot, B_IP, params={"mac": A_MAC, "node": "a"},
                       headers={"Host": "a", "X-Mac": A_MAC})
    assert "node b" in spoof and "node a" not in spoof
    assert "node a" in await _get(boot, A_IP)


async def test_proxy_headers_are_refused(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    async with boot.client(B_IP) as client:
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            resp = await client.get("/boot/script.ipxe", headers={header: A_IP})
            assert resp.status_code == 400 and "#!ipxe" not in resp.text


async def test_non_boot_nic_gets_no_script(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    async with boot.client(A_NIC2_IP) as client:
        resp = await client.get("/boot/script.ipxe")
    assert resp.status_code == 403 and "not the boot interface" in resp.text


async def test_wait_and_temp_levels(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot(wait_seconds=42)
    _scripts(boot).ttl = 0
    with boot.db.session() as s:
        service.set_boot(s, "b", "temp", BootAction.WAIT)
    text = await _get(boot, B_IP)
    assert "sleep 42" in text and "chain --replace --autofree " \
        "http://10.9.0.1:8080/boot/script.ipxe || goto wait" in text
    assert "temporary boot" in text


async def test_one_shot_is_consumed_once(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    with boot.db.session() as s:
        service.set_boot(s, "a", "next", BootAction.PROFILE, "rescue")
        before = current_revision(s)
    # A firmware retrying: concurrent and quick repeat requests share one render.
    texts = await asyncio.gather(*[_get(boot, A_IP) for _ in range(8)])
    assert all("kernel http://10.9.0.1:8080/boot/files/images/k1/vmlinuz rescue" in t
               for t in texts)
    with boot.db.session() as s:
        node = s.query(Node).filter_by(name="a").one()
        assert node.next_action is None and node.next_profile_id is None
        assert current_revision(s) == before + 1  # running servers notice the change
    consumed = [e for e in boot.kinds("script") if e.detail["one_shot_consumed"]]
    assert len(boot.kinds("script")) == 8
    assert {e.detail["profile"] for e in boot.kinds("script")} == {"rescue"}
    assert consumed  # reported by the requests that shared the consuming render
    # Once the reuse window has passed, the node is back to its default.
    _scripts(boot).invalidate()
    assert "console=ttyS0" in await _get(boot, A_IP)


async def test_head_does_not_consume(make_boot: Callable[..., Boot]) -> None:
    calls: list[tuple[str, str, str]] = []

    def hook(node: Node, mac: str, address: str) -> str:
        calls.append((node.name, mac, address))
        return f"fb.token=t{len(calls)} fb.config=http://10.9.0.1:8080/v1/self/config"

    boot = make_boot(hook=hook)
    with boot.db.session() as s:
        service.set_boot(s, "a", "next", BootAction.PROFILE, "rescue")
    async with boot.client(A_IP) as client:
        head = await client.head("/boot/script.ipxe")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert calls == []  # HEAD mints nothing
    with boot.db.session() as s:
        assert service.get_node(s, "a").next_action is BootAction.PROFILE
    text = await _get(boot, A_IP)
    assert "rescue fb.token=t1 fb.config=http://10.9.0.1:8080/v1/self/config || goto" in text
    assert calls == [("a", A_MAC, A_IP)]


async def test_unknown_machines_wait_by_default(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    text = await _get(boot, UNKNOWN_IP)
    assert "unknown machine" in text and "sleep 10" in text
    text = await _get(boot, "10.9.0.250")  # no lease at all
    assert "unknown machine 10.9.0.250" in text


async def test_unknown_machines_get_the_menu(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot(unknown_menu=["rescue", "nonexistent", "deb"], menu_timeout_s=5,
                     menu_default="deb")
    text = await _get(boot, UNKNOWN_IP)
    assert "item p0 rescue" in text and "item p1 deb" in text and "nonexistent" not in text
    assert "choose --default p1 --timeout 5000" in text
    # known nodes never see the menu
    assert "menu " not in await _get(boot, A_IP)


async def test_unknown_local_policy(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot(unknown_action="local")
    assert "sanboot --no-describe --drive 0x80" in await _get(boot, UNKNOWN_IP)


async def test_script_via_files_and_the_shared_source(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    assert "node a" in await _get(boot, A_IP, "/boot/files/script.ipxe")
    assert "node b" in await _get(boot, B_IP, "/boot/files/script.ipxe")


async def test_no_redirects_and_only_get_head(make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    async with boot.client(A_IP) as client:
        for path in ("/boot/script.ipxe/", "/boot/files", "/boot/", "/boot/files/sub"):
            resp = await client.get(path)
            assert 400 <= resp.status_code < 500, (path, resp.status_code)
        resp = await client.post("/boot/script.ipxe")
        assert resp.status_code == 405
        resp = await client.delete("/boot/files/sub/inside.txt")
        assert resp.status_code == 405
    assert (boot.root / "sub" / "inside.txt").exists()


async def test_one_shot_race_between_two_servers(make_boot: Callable[..., Boot]) -> None:
    """Two server processes (two script services, one database) race for one `next` boot."""
    boot = make_boot()
    first = _scripts(boot)
    second = ScriptService(boot.db, first.settings)
    for _ in range(5):
        with boot.db.session() as s:
            service.set_boot(s, "a", "next", BootAction.PROFILE, "rescue")
        first.invalidate()
        results = await asyncio.gather(first.script(A_MAC, A_IP), second.script(A_MAC, A_IP))
        got_rescue = [r for r in results if r.profile == "rescue"]
        assert len(got_rescue) == 1 and got_rescue[0].consumed
        assert {r.profile for r in results} == {"rescue", "deb"}
        second.invalidate()


async def test_the_script_in_the_shared_source_for_tftp(make_boot: Callable[..., Boot]) -> None:
    from httpboot_helpers import A_NIC2

    from fleetboot.boot.files import BootPathRefused, RequestContext

    boot = make_boot()
    source = boot.app.state.fleetboot.source
    opened = await source.open("script.ipxe", RequestContext(A_IP, A_MAC, "tftp"))
    assert b"node a" in await opened.read(0, opened.size)
    try:
        await source.open("script.ipxe", RequestContext(A_NIC2_IP, A_NIC2, "tftp"))
    except BootPathRefused as exc:
        assert "not the boot interface" in str(exc)
    else:
        raise AssertionError("a non-boot NIC got a script")
    async with boot.client(A_NIC2_IP) as client:
        assert (await client.get("/boot/files/script.ipxe")).status_code == 403


async def test_health_says_starting_until_the_inventory_is_loaded(
        make_boot: Callable[..., Boot]) -> None:
    boot = make_boot()
    async with boot.client(A_IP) as client:
        starting = await client.get("/healthz")
        assert starting.status_code == 503 and starting.json()["status"] == "starting"
        await client.get("/boot/script.ipxe")  # loads the view, as the runtime's start does
        ready = await client.get("/healthz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok" and ready.json()["inventory_revision"] >= 0
