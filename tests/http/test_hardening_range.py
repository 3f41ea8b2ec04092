"""Issue 11 item 5: a Range with a huge number, and file names ending in a slash."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from httpboot_helpers import A_IP, KERNEL_BYTES, Boot, raw_request
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.server.httpfiles import RangeNotSatisfiable, parse_range

KERNEL = "/boot/files/images/k1/vmlinuz"
HUGE = "9" * 5000  # past Python's 4,300-digit int() limit


@pytest.mark.parametrize("header", [
    f"bytes={HUGE}-", f"bytes=0-{HUGE}", f"bytes=-{HUGE}", f"bytes={HUGE}-{HUGE}",
    "bytes=0-" + "1" * 20, "bytes=" + "1" * 20 + "-",
])
def test_numbers_beyond_any_file_are_malformed_and_ignored(header: str) -> None:
    assert parse_range(header, 100) is None


def test_leading_zeros_are_still_numbers() -> None:
    assert parse_range("bytes=" + "0" * 40 + "5-" + "0" * 40 + "9", 100).length == 5  # type: ignore[union-attr]
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-" + "0" * 30, 100)


def test_only_ascii_digits_and_blanks() -> None:
    assert parse_range("bytes=\u0661-\u0662", 100) is None  # Arabic-Indic digits
    assert parse_range("bytes=1-2\n", 100) is None


_range_text = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a, b, c: f"{a}bytes={b}-{c}", st.sampled_from(["", " ", "\t", "x"]),
              st.text("0123456789 ", max_size=30), st.text("0123456789 ,-", max_size=30)),
    st.builds(lambda n, m: f"bytes={'9' * n}-{'1' * m}", st.integers(0, 6000),
              st.integers(0, 6000)),
)


@given(header=st.none() | _range_text, size=st.integers(0, 1 << 40))
def test_any_header_gives_a_range_in_the_file_or_none(header: str | None, size: int) -> None:
    """Fuzzed: nothing but RangeNotSatisfiable ever escapes, and a range lies in the file."""
    try:
        rng = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if rng is not None:
        assert 0 <= rng.start < rng.end <= size


async def test_huge_range_number_serves_the_whole_file(
        make_files_boot: Callable[..., Boot]) -> None:
    boot = make_files_boot()
    async with boot.client(A_IP) as client:
        resp = await client.get(KERNEL, headers={"Range": f"bytes=0-{HUGE}"})
        assert resp.status_code == 200 and resp.content == KERNEL_BYTES
        resp = await client.get(KERNEL, headers={"Range": f"bytes={HUGE}-"})
        assert resp.status_code == 200 and resp.content == KERNEL_BYTES


@pytest.mark.parametrize("path", [KERNEL + "/", KERNEL + "/.", KERNEL + "//",
                                  "/boot/files/empty/"])
async def test_a_file_name_with_a_trailing_slash_is_not_found(
        make_files_boot: Callable[..., Boot], path: str) -> None:
    boot = make_files_boot()
    status, _body = await raw_request(boot.app, "GET", path)
    assert status == 404
    assert boot.kinds("file")[-1].detail["status"] == 404
    async with boot.client(A_IP) as client:  # without the slash: the file
        assert (await client.get(KERNEL)).content == KERNEL_BYTES
