from fleetboot.boot.decision import decide
from fleetboot.inventory.models import BootAction, BootProfile, Node


def _node(**kw: object) -> Node:
    node = Node(name="n", default_action=BootAction.LOCAL)
    for key, value in kw.items():
        setattr(node, key, value)
    return node


def test_unknown_machine_gets_policy() -> None:
    assert decide(None).action is BootAction.WAIT
    assert decide(None, BootAction.LOCAL).rule == "policy for unknown machines"


def test_next_beats_temp_beats_default() -> None:
    deb, rescue = BootProfile(name="deb"), BootProfile(name="rescue")
    node = _node(temp_action=BootAction.PROFILE, temp_profile=deb)
    assert decide(node).profile is deb and decide(node).rule == "temporary boot"
    node.next_action, node.next_profile = BootAction.PROFILE, rescue
    d = decide(node)
    assert d.profile is rescue and d.one_shot
    assert decide(_node()).action is BootAction.LOCAL
