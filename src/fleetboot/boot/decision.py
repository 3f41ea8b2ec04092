"""What a node boots next, and which rule decided it. Pure: no I/O.

Like the testbed's bootinfo: a one-shot "next" boot beats a temporary one,
which beats the node's default. Unknown machines get the configured policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetboot.inventory.models import BootAction, BootProfile, Node


@dataclass(frozen=True)
class BootDecision:
    action: BootAction
    profile: BootProfile | None
    rule: str  # human-readable: which level decided, shown by `fleetboot why`
    one_shot: bool = False  # serving it consumes the node's "next" boot

    def describe(self) -> str:
        what = f"profile {self.profile.name}" if self.profile else self.action.value
        return f"{what} (decided by {self.rule})"


def decide(node: Node | None, unknown_action: BootAction = BootAction.WAIT) -> BootDecision:
    if node is None:
        return BootDecision(unknown_action, None, "policy for unknown machines")
    if node.next_action is not None:
        return BootDecision(node.next_action, node.next_profile, "one-shot next boot",
                            one_shot=True)
    if node.temp_action is not None:
        return BootDecision(node.temp_action, node.temp_profile, "temporary boot")
    return BootDecision(node.default_action, node.default_profile, "node default")
