"""The read models without a running server (stored states), on SQLite and PostgreSQL."""

from __future__ import annotations

from fleetboot.api import views
from fleetboot.inventory import service
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction
from fleetboot.nodeconfig.models import NodeStateRow


def test_pages_filters_and_counts_from_stored_states(db: Database) -> None:
    with db.session() as s:
        service.add_profile(s, "rescue", kernel="vmlinuz")
        for i in range(7):
            service.add_node(s, f"n{i}", [service.NicSpec(f"52:54:00:00:00:{i:02x}"),
                                          service.NicSpec(f"52:54:00:00:01:{i:02x}")])
        service.set_boot(s, "n3", "next", BootAction.PROFILE, "rescue")
        n3 = service.get_node(s, "n3").id
        s.add(NodeStateRow(node_id=n3, state="UP", since=100.0, boot=2, stuck=False,
                           message="", address="10.0.0.3"))
    with db.session() as s:
        lookup = views.stored_statuses(s)
        total, page = views.node_page(s, lookup, limit=3, offset=2)
        assert total == 7 and [n["name"] for n in page] == ["n2", "n3", "n4"]
        n3_doc = page[1]
        assert n3_doc["boot"]["next"] == {"action": "profile", "profile": "rescue"}
        assert n3_doc["boot"]["default"] == {"action": "local", "profile": None}
        assert n3_doc["boot"]["temp"] is None
        assert [i["boot"] for i in n3_doc["interfaces"]] == [True, False]
        assert (n3_doc["state"], n3_doc["boot_number"], n3_doc["address"]) == ("UP", 2,
                                                                               "10.0.0.3")
        assert page[0]["state"] == "OFF"
        total, page = views.node_page(s, lookup, limit=10, offset=0,
                                      filters=views.NodeFilter(state="up"))
        assert total == 1 and page[0]["name"] == "n3"
        total, _ = views.node_page(s, lookup, limit=10, offset=0,
                                   filters=views.NodeFilter(state="OFF"))
        assert total == 6
        total, page = views.node_page(s, lookup, limit=10, offset=0,
                                      filters=views.NodeFilter(mac="52:54:00:00:01:05"))
        assert [n["name"] for n in page] == ["n5"]
        counts = views.db_state_counts(s)
        assert counts["UP"] == 1 and counts["OFF"] == 6 and sum(counts.values()) == 7
