"""`vm create` refuses a NIC model QEMU does not have and a bridge that does not exist
(issue 11, item 12), instead of storing a VM that can never start."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetboot.lab.netns import Lab
from fleetboot.vm import planner as P
from fleetboot.vm.errors import VmError
from fleetboot.vm.service import VmService
from fleetboot.vm.specs import CreateSpec, SpecError, parse_nic


async def test_an_unknown_nic_model_is_refused_with_a_suggestion(vms: VmService) -> None:
    with pytest.raises(SpecError, match=r"'e1000x' is not a network device.*e1000"):
        await vms.create(CreateSpec("v1", nics=(parse_nic("model=e1000x"),)))
    assert not vms.list_instances()
    await vms.create(CreateSpec("v1", nics=(parse_nic("model=e1000"),)))


@pytest.mark.netns
async def test_a_missing_bridge_is_refused_where_qemu_will_run(vms: VmService,
                                                               bridged_lab: Lab) -> None:
    ns = bridged_lab.server.name
    nic = parse_nic("model=e1000,backend=bridge:fbnosuchbr")
    with pytest.raises(VmError, match=f"bridge fbnosuchbr does not exist in namespace {ns}"):
        await vms.create(CreateSpec("v1", P.Family.Q35, nics=(nic,), netns=ns))
    if not Path("/sys/class/net/br0").exists():  # the lab's bridge is not the host's
        with pytest.raises(VmError, match="bridge br0 does not exist;"):
            await vms.create(CreateSpec("v1", nics=(parse_nic("backend=bridge:br0"),)))
    assert not vms.list_instances()
    await vms.create(CreateSpec("v1", nics=(parse_nic("backend=bridge:br0"),), netns=ns))
