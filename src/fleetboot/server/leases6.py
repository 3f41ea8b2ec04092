"""DHCPv6 leases on disk: the IPv4 lease journal's group commit, writing ``leases6``.

The engine keys a lease by DUID + IAID (``LeaseRecord.mac`` holds that key) and
keeps the client's MAC, when known, in ``LeaseRecord.client_id``. Everything
else, the writer thread, the batching window, the reply-after-commit hand-back
and the SQLite checkpointing, is :class:`fleetboot.server.leases.LeaseJournal`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from sqlalchemy import select

from fleetboot.inventory.db import Database, epoch_seconds
from fleetboot.inventory.models import Lease6 as Lease6Row
from fleetboot.protocols.dhcp.engine import LeaseRecord
from fleetboot.protocols.dhcp.leases import BOUND, Lease
from fleetboot.protocols.dhcp6.engine import key_of, split_key
from fleetboot.protocols.dhcp6.options import ip6_text, mac_text
from fleetboot.server.leases import CHUNK, LeaseJournal

__all__ = ["Lease6Journal", "load_leases6"]

log = logging.getLogger("fleetboot.dhcp6.leases")
COLUMNS = "address, duid, iaid, mac, hostname, subnet_id, starts, expires"
UPDATE = ("duid = excluded.duid, iaid = excluded.iaid, mac = excluded.mac, "
          "hostname = excluded.hostname, subnet_id = excluded.subnet_id, "
          "starts = excluded.starts, expires = excluded.expires")


def load_leases6(db: Database) -> list[Lease]:
    """Every ``leases6`` row as an in-memory lease (key DUID+IAID, MAC in ``client_id``)."""
    t = Lease6Row.__table__
    query = select(t.c.address, t.c.duid, t.c.iaid, t.c.mac, t.c.hostname, t.c.subnet_id,
                   t.c.starts, t.c.expires)
    out: list[Lease] = []
    with db.session() as session:
        for addr, duid, iaid, mac, hostname, subnet_id, starts, expires in session.execute(query):
            try:
                out.append(Lease(int(ipaddress.IPv6Address(addr)),
                                 key_of(bytes.fromhex(duid), int(iaid)), BOUND,
                                 epoch_seconds(expires), subnet_id, epoch_seconds(starts),
                                 bytes.fromhex(mac.replace(":", "")) if mac else None,
                                 hostname))
            except ValueError:
                log.warning("IPv6 lease row %s is unreadable; ignored", addr)
    return out


class Lease6Journal(LeaseJournal):
    """The lease journal for ``leases6``: same batching, different rows."""

    def _write(self, records: Sequence[LeaseRecord]) -> None:
        final: dict[int, LeaseRecord] = {}
        for record in records:
            final[record.addr] = record
        binds = [self._row(r) for r in final.values() if r.op == "bind"]
        frees = [(ip6_text(r.addr), split_key(r.mac)[0].hex())
                 for r in final.values() if r.op == "free"]
        conn = self._connection()
        with conn.begin():
            for start in range(0, len(binds), CHUNK):
                chunk = binds[start : start + CHUNK]
                params = tuple(value for row in chunk for value in row)
                conn.exec_driver_sql(self._upsert(len(chunk)), params)
            if frees:
                m = self._mark
                conn.exec_driver_sql(
                    f"DELETE FROM leases6 WHERE address = {m} AND duid = {m}", frees)
        self._dirty = True

    def _row(self, r: LeaseRecord) -> tuple[object, ...]:
        duid, iaid = split_key(r.mac)
        return (ip6_text(r.addr), duid.hex(), iaid, mac_text(r.client_id) if r.client_id
                else None, r.hostname, r.subnet_id, self._time(r.starts), self._time(r.expires))

    def _upsert(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            group = "(" + ", ".join([self._mark] * 8) + ")"
            sql = (f"INSERT INTO leases6 ({COLUMNS}) VALUES " + ", ".join([group] * rows)
                   + f" ON CONFLICT (address) DO UPDATE SET {UPDATE}")
            if len(self._sql) > 64:
                self._sql.clear()
            self._sql[rows] = sql
        return sql
