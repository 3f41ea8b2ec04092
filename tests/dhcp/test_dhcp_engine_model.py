"""Hypothesis drives the engine with random packet sequences, time jumps, inventory
changes, journal commits and crashes: no address is ever held by two MACs.

The model plays the lease journal: records wait in ``pending`` until a commit
step writes them to ``db`` (then their ACKs are "sent" and checked); a crash
throws pending records and their ACKs away and restarts the engine from ``db``,
exactly what ``kill -9`` does to the real server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import decode
from fleetboot.protocols.dhcp.engine import DhcpEngine, LeaseRecord
from fleetboot.protocols.dhcp.leases import BOUND, Lease, LeaseTable
from fleetboot.protocols.dhcp.settings import DhcpSettings
from fleetboot.protocols.dhcp.view import DhcpView, build_view

SERVER = o.ip_int("10.77.0.1")
MACS = [bytes([2, 0, 0, 0, 0, i]) for i in range(5)]
ADDRS = [o.ip_int(f"10.77.0.{n}") for n in range(98, 108)]  # pool .100-.105 and outside


def view(reserve: tuple[int, int] | None) -> DhcpView:
    reservations = []
    if reserve is not None:
        reservations = [{"subnet_id": 1, "mac": MACS[reserve[0]].hex(":"),
                         "address": o.ip_text(ADDRS[reserve[1]])}]
    return build_view([{"id": 1, "name": "s", "cidr": "10.77.0.0/24", "lease_seconds": 60}],
                      [{"subnet_id": 1, "start": "10.77.0.100", "end": "10.77.0.105"}],
                      reservations, [])


@dataclass
class World:
    now: float = 1000.0
    reserve: tuple[int, int] | None = None
    engine: DhcpEngine = field(init=False)
    db: dict[int, LeaseRecord] = field(default_factory=dict)
    pending: list[tuple[LeaseRecord, float, bool]] = field(default_factory=list)
    holders: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    offered: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        table = LeaseTable()
        table.load(Lease(r.addr, r.mac, BOUND, r.expires, r.subnet_id, r.starts)
                   for r in self.db.values())
        self.engine = DhcpEngine(DhcpSettings(), view(self.reserve), table,
                                 server_addresses=(SERVER,))
        self.pending.clear()

    def send(self, mt: int, mac: bytes, **kw: object) -> None:
        from dhcp_helpers import packet

        reply = self.engine.handle(packet(mt, mac, **kw), SERVER, self.now)
        if reply is None:
            return
        if reply.record is not None:
            self.pending.append((reply.record, self.now, reply.data is not None))
        if reply.data is not None and reply.msg_type == o.OFFER:
            offer = decode(reply.data)
            self.check_free(offer.yiaddr, mac)
            self.offered[mac] = offer.yiaddr

    def check_free(self, addr: int, mac: bytes) -> None:
        holder = self.holders.get(addr)
        if holder is not None and holder[0] != mac:
            assert holder[1] <= self.now, (
                f"{o.ip_text(addr)} given to {mac.hex()} while {holder[0].hex()} holds it "
                f"until {holder[1]} (now {self.now})")

    def commit(self) -> None:
        for record, at, acked in self.pending:
            if record.op == "bind":
                if acked:
                    saved, self.now = self.now, at
                    self.check_free(record.addr, record.mac)
                    self.now = saved
                    self.holders[record.addr] = (record.mac, record.expires)
                self.db[record.addr] = record
            elif record.addr in self.db and self.db[record.addr].mac == record.mac:
                del self.db[record.addr]
                self.holders.pop(record.addr, None)
        self.pending.clear()


mac_i = st.integers(0, len(MACS) - 1)
addr_i = st.integers(0, len(ADDRS) - 1)
steps = st.lists(st.tuples(st.one_of(
    st.tuples(st.just("discover"), mac_i, st.none() | addr_i),
    st.tuples(st.just("select"), mac_i, st.none() | addr_i),
    st.tuples(st.just("other_server"), mac_i, addr_i),
    st.tuples(st.just("init_reboot"), mac_i, addr_i),
    st.tuples(st.just("renew"), mac_i, addr_i),
    st.tuples(st.just("release"), mac_i, addr_i),
    st.tuples(st.just("decline"), mac_i, addr_i),
    st.tuples(st.just("wait"), st.sampled_from([1, 20, 45, 61, 700])),
    st.tuples(st.just("steal"), mac_i, st.integers(0, 5), st.booleans()),
    st.tuples(st.just("reserve"), st.none() | st.tuples(mac_i, addr_i)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("crash")),
), st.booleans()), max_size=60)  # the flag: the journal commits right after this step


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_no_address_is_ever_held_by_two_macs(plan: list[tuple[Any, bool]]) -> None:
    w = World()
    sid = o.ip_bytes(SERVER)
    for step, commit_after in plan:
        kind = step[0]
        if kind == "discover":
            extra = {"o50": o.ip_bytes(ADDRS[step[2]])} if step[2] is not None else {}
            w.send(o.DISCOVER, MACS[step[1]], **extra)
        elif kind == "select":
            mac = MACS[step[1]]
            addr = ADDRS[step[2]] if step[2] is not None else w.offered.get(mac, ADDRS[0])
            w.send(o.REQUEST, mac, o54=sid, o50=o.ip_bytes(addr))
        elif kind == "other_server":
            w.send(o.REQUEST, MACS[step[1]], o54=o.ip_bytes(SERVER + 1),
                   o50=o.ip_bytes(ADDRS[step[2]]))
        elif kind == "init_reboot":
            w.send(o.REQUEST, MACS[step[1]], o50=o.ip_bytes(ADDRS[step[2]]))
        elif kind == "renew":
            w.send(o.REQUEST, MACS[step[1]], ciaddr=ADDRS[step[2]])
        elif kind == "release":
            w.send(o.RELEASE, MACS[step[1]], ciaddr=ADDRS[step[2]], o54=sid)
        elif kind == "decline":
            w.send(o.DECLINE, MACS[step[1]], o50=o.ip_bytes(ADDRS[step[2]]), o54=sid)
        elif kind == "steal":  # ask for an address the model knows someone holds
            held = sorted(w.holders) or ADDRS
            wanted = o.ip_bytes(held[step[2] % len(held)])
            if step[3]:
                w.send(o.DISCOVER, MACS[step[1]], o50=wanted)
            else:
                w.send(o.REQUEST, MACS[step[1]], o50=wanted)
        elif kind == "wait":
            w.now += step[1]
        elif kind == "reserve":
            w.reserve = step[1]
            w.engine.set_view(view(w.reserve))
        elif kind == "commit":
            w.commit()
        else:
            w.restart()
        if commit_after:
            w.commit()
        table = w.engine.leases
        for mac, lease in table.by_mac.items():  # the index agrees with the table
            assert table.by_addr.get(lease.addr) is lease and lease.mac == mac
    w.commit()
