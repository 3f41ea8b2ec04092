"""``fleetboot why`` as data: what a node boots next, which level decided, and every level.

Shared by the CLI (``fleetboot why``), the API (``GET /api/v1/nodes/{name}/why``)
and the web view. Pure: takes a loaded ``Node``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetboot.boot.decision import decide
from fleetboot.inventory.models import Node

LEVELS = ("default", "temp", "next")


@dataclass(frozen=True)
class Why:
    node: str
    boots: str  # "profile rescue (decided by one-shot next boot)"
    action: str
    profile: str | None
    rule: str
    one_shot: bool
    levels: dict[str, str]  # level -> "-" | action | profile name
    profile_detail: str | None  # "kernel=... initrd=... cmdline=..." or "its own iPXE script"

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def explain(node: Node) -> Why:
    decision = decide(node)
    levels = {}
    for level in LEVELS:
        action = getattr(node, f"{level}_action")
        profile = getattr(node, f"{level}_profile")
        levels[level] = "-" if action is None else (profile.name if profile else action.value)
    detail = None
    if decision.profile is not None:
        p = decision.profile
        detail = (f"kernel={p.kernel or '-'} initrd={p.initrd or '-'} cmdline={p.cmdline or '-'}"
                  if p.script is None else "its own iPXE script")
    return Why(node.name, decision.describe(), decision.action.value,
               decision.profile.name if decision.profile else None, decision.rule,
               decision.one_shot, levels, detail)
