"""Per-boot tokens: the secret a node's iPXE script puts on its kernel command line.

Like EC2's IMDSv2 session token, it proves a request comes from the system
that booted with that command line, not merely from an address on the
network. A token belongs to one node; issuing the next one (the node's next
boot) leaves the previous one a short grace period, for a firmware that
fetched its script twice. Only SHA-256 hashes are stored; the raw token exists
in memory for the tokens this process issued, and on the node.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_TOKEN_LENGTH = 128


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class TokenRecord:
    node_id: int
    hash: str
    issued_at: float
    expires_at: float
    mac: str | None = None
    address: str | None = None
    raw: str | None = field(default=None, repr=False)  # only for tokens issued here


@dataclass
class TokenChanges:
    """What the database must learn after an issue: one new row, rows to drop or cut short."""

    issued: TokenRecord
    dropped: list[str] = field(default_factory=list)  # hashes
    shortened: list[TokenRecord] = field(default_factory=list)


class TokenStore:
    """In-memory token table; every lookup is one or two dict gets, no I/O."""

    def __init__(self, ttl_s: float = 7 * 86400.0, grace_s: float = 300.0,
                 keep_per_node: int = 2) -> None:
        self.ttl_s = ttl_s
        self.grace_s = grace_s
        self.keep_per_node = max(1, keep_per_node)
        self._by_hash: dict[str, TokenRecord] = {}
        self._by_raw: dict[str, TokenRecord] = {}
        self._by_node: dict[int, list[TokenRecord]] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def load(self, records: Iterable[TokenRecord]) -> None:
        """Tokens from the database (after a restart), oldest first."""
        for rec in sorted(records, key=lambda r: r.issued_at):
            self._add(rec)

    def issue(self, node_id: int, now: float, mac: str | None = None,
              address: str | None = None) -> tuple[str, TokenChanges]:
        raw = secrets.token_urlsafe(24)
        rec = TokenRecord(node_id, token_hash(raw), now, now + self.ttl_s, mac, address, raw)
        changes = TokenChanges(rec)
        for old in self._by_node.get(node_id, []):
            if old.expires_at > now + self.grace_s:
                old.expires_at = now + self.grace_s
                changes.shortened.append(old)
        changes.dropped = self._add(rec)
        return raw, changes

    def _add(self, rec: TokenRecord) -> list[str]:
        self._by_hash[rec.hash] = rec
        if rec.raw is not None:
            self._by_raw[rec.raw] = rec
        held = self._by_node.setdefault(rec.node_id, [])
        held.append(rec)
        dropped = []
        while len(held) > self.keep_per_node:
            dropped.append(self._forget(held.pop(0)))
        return dropped

    def _forget(self, rec: TokenRecord) -> str:
        self._by_hash.pop(rec.hash, None)
        if rec.raw is not None:
            self._by_raw.pop(rec.raw, None)
        return rec.hash

    def lookup(self, token: str) -> TokenRecord | None:
        rec = self._by_raw.get(token)
        if rec is not None or len(token) > MAX_TOKEN_LENGTH:
            return rec
        rec = self._by_hash.get(token_hash(token))
        if rec is not None:
            rec.raw = token  # a loaded token seen once: later lookups skip the hash
            self._by_raw[token] = rec
        return rec

    def check(self, token: str, node_id: int, now: float) -> bool:
        """True if ``token`` is a current token of ``node_id``."""
        rec = self.lookup(token)
        return rec is not None and rec.node_id == node_id and now < rec.expires_at

    def expire(self, now: float) -> list[str]:
        """Forget expired tokens; returns their hashes (to delete from the database)."""
        gone = [r for r in self._by_hash.values() if r.expires_at <= now]
        for rec in gone:
            held = self._by_node.get(rec.node_id, [])
            if rec in held:
                held.remove(rec)
            if not held:
                self._by_node.pop(rec.node_id, None)
            self._forget(rec)
        return [r.hash for r in gone]

    def forget_nodes(self, keep: set[int]) -> None:
        """Drop tokens of nodes that left the inventory."""
        for node_id in [n for n in self._by_node if n not in keep]:
            for rec in self._by_node.pop(node_id):
                self._forget(rec)
