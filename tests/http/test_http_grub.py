"""``grub/grub.cfg`` per requester from the iPXE script's decision (issue 17, item 1):
the same node, profile, precedence, one-shot and per-boot arguments, over HTTP here
(TFTP in tests/firmware: the same boot-file source)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from httpboot_helpers import A_IP, A_NIC2_IP, B_IP, UNKNOWN_IP, Boot

from fleetboot.inventory import service
from fleetboot.inventory.models import BootAction
from fleetboot.server.grubcfg import register_grub_configs

GRUB = "/boot/files/grub/grub.cfg"


def _with_grub(boot: Boot) -> Boot:
    ctx = boot.app.state.fleetboot
    register_grub_configs(ctx.source, ctx.scripts, ctx.settings)
    ctx.scripts.ttl = 0
    return boot


async def _get(boot: Boot, address: str, path: str = GRUB) -> tuple[int, str]:
    async with boot.client(address) as client:
        resp = await client.get(path)
        return resp.status_code, resp.text


async def test_each_node_gets_its_decision_in_grub(make_boot: Callable[..., Boot]) -> None:
    def hook(node: Any, mac: str, address: str) -> str:
        return f"fleetboot.token=T-{node.name} fleetboot.url=http://10.9.0.1:8080/v1"

    boot = _with_grub(make_boot(hook))
    status, text = await _get(boot, A_IP)
    assert status == 200 and "node a" in text
    assert "linux '(tftp,10.9.0.1)/images/k1/vmlinuz' 'console=ttyS0' " \
           "'fleetboot.token=T-a' 'fleetboot.url=http://10.9.0.1:8080/v1'" in text
    assert "initrd '(tftp,10.9.0.1)/images/k1/initrd.img'" in text
    status, text = await _get(boot, B_IP)
    assert status == 200 and "node b" in text and "exit 1" in text and "linux" not in text
    status, text = await _get(boot, A_NIC2_IP)
    assert status == 403 and "not the boot interface" in text
    status, text = await _get(boot, UNKNOWN_IP)
    assert status == 200 and "unknown machine" in text and "sleep" in text


async def test_one_shot_is_consumed_once_whichever_program_asks(
        make_boot: Callable[..., Boot]) -> None:
    boot = _with_grub(make_boot())
    with boot.db.session() as s:
        service.set_boot(s, "a", "next", BootAction.PROFILE, "rescue")
    _, first = await _get(boot, A_IP)
    assert "'rescue'" in first and "one-shot next boot" in first
    _, second = await _get(boot, A_IP)
    assert "'rescue'" not in second and "'console=ttyS0'" in second
    _, ipxe = await _get(boot, A_IP, "/boot/script.ipxe")
    assert "console=ttyS0" in ipxe and "rescue" not in ipxe
