"""Per-boot tokens (pure, in memory)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetboot.nodeconfig.tokens import TokenRecord, TokenStore, token_hash


def test_a_token_belongs_to_one_node_and_one_boot() -> None:
    store = TokenStore(ttl_s=100, grace_s=10)
    t1, ch1 = store.issue(1, now=0)
    other, _ = store.issue(2, now=0)
    assert store.check(t1, 1, 1) and not store.check(t1, 2, 1) and not store.check(other, 1, 1)
    assert ch1.issued.hash == token_hash(t1) and ch1.issued.raw == t1
    t2, ch2 = store.issue(1, now=50)  # the next boot
    assert ch2.shortened == [ch1.issued] and ch1.issued.expires_at == 60
    assert store.check(t1, 1, 59) and not store.check(t1, 1, 61) and store.check(t2, 1, 149)
    assert not store.check(t2, 1, 150)  # expired
    t3, ch3 = store.issue(1, now=70)
    assert ch3.dropped == [token_hash(t1)]  # at most two per node are kept
    assert store.lookup(t1) is None and store.check(t3, 1, 71)


def test_loaded_hashes_work_after_a_restart() -> None:
    first = TokenStore()
    raw, changes = first.issue(5, now=0, mac="52:54:00:00:00:05", address="10.0.0.5")
    saved = TokenRecord(5, changes.issued.hash, 0, changes.issued.expires_at, "m", "a")
    second = TokenStore()
    second.load([saved])
    assert second.check(raw, 5, 1) and second.check(raw, 5, 2)  # hashed once, then by raw
    assert not second.check(raw + "x", 5, 1) and not second.check("y" * 1000, 5, 1)


def test_expire_and_forget() -> None:
    store = TokenStore(ttl_s=10)
    a, _ = store.issue(1, now=0)
    b, _ = store.issue(2, now=5)
    assert store.expire(now=12) == [token_hash(a)] and len(store) == 1
    store.forget_nodes({1})
    assert len(store) == 0 and store.lookup(b) is None


@given(st.lists(st.tuples(st.integers(1, 4), st.floats(0, 50)), max_size=40))
def test_only_the_newest_tokens_of_a_node_are_valid(issues: list[tuple[int, float]]) -> None:
    store = TokenStore(ttl_s=1e9, grace_s=0.0)
    now, latest = 0.0, {}
    for node, gap in issues:
        now += gap + 0.001
        raw, _ = store.issue(node, now)
        latest[node] = raw
    for node, raw in latest.items():
        assert store.check(raw, node, now)
        assert all(not store.check(raw, other, now) for other in range(1, 5) if other != node)
