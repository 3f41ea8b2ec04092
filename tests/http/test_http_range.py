"""Range header logic (pure), against a small reference model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.server.httpfiles import (
    ByteRange,
    RangeNotSatisfiable,
    etag_matches,
    if_range_matches,
    parse_range,
)


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-9", 100, ByteRange(0, 10)),
    ("bytes=90-", 100, ByteRange(90, 100)),
    ("bytes=-10", 100, ByteRange(90, 100)),
    ("bytes=-1000", 100, ByteRange(0, 100)),
    ("bytes=50-5000", 100, ByteRange(50, 100)),
    ("bytes=99-99", 100, ByteRange(99, 100)),
    (" Bytes = 1 - 2 ", 100, ByteRange(1, 3)),
    (None, 100, None),
    ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file
    ("bytes=5-1", 100, None),  # invalid: ignored
    ("items=0-1", 100, None),
    ("bytes=-", 100, None),
    ("bytes=a-b", 100, None),
])
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0),
    ("bytes=-5", 0),
])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@given(size=st.integers(0, 10_000), first=st.none() | st.integers(0, 20_000),
       last=st.none() | st.integers(0, 20_000))
def test_range_matches_model(size: int, first: int | None, last: int | None) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    try:
        rng = parse_range(header, size)
    except RangeNotSatisfiable:
        if first is None:
            assert last == 0 or size == 0
        else:
            assert first >= size and (last is None or last >= first)
        return
    if rng is None:
        assert (first is None and last is None) or (
            first is not None and last is not None and last < first)
        return
    assert 0 <= rng.start < rng.end <= size
    if first is None:
        assert last is not None
        assert data[rng.start:rng.end] == data[-last:]
    else:
        stop = size if last is None else last + 1
        assert data[rng.start:rng.end] == data[first:stop]
    assert rng.content_range(size) == f"bytes {rng.start}-{rng.end - 1}/{size}"


def test_validators() -> None:
    assert if_range_matches(None, '"a"', "date")
    assert if_range_matches('"a"', '"a"', "date") and if_range_matches("date", '"a"', "date")
    assert not if_range_matches('"b"', '"a"', "date")
    assert not if_range_matches('W/"a"', '"a"', "date")
    assert etag_matches('"x", "a"', '"a"') and etag_matches("*", '"a"')
    assert not etag_matches(None, '"a"') and not etag_matches('"b"', '"a"')
