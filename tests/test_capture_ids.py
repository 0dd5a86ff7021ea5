"""Capture ids: the cached encoding gives exactly the ULID layout's text, across carries and borrows."""

from __future__ import annotations

import itertools
import subprocess
import sys

from kgrid_py.learning.ids import _RANDOM_MAX, _encode, id_time_ms, is_id

MS = 1_700_000_000_000

# In a fresh process (ids are monotonic per process). Each burst starts the random part just below
# a point where cached text must change: a 10-bit carry, a carry through every cached symbol, and
# the 80-bit maximum (the next id borrows the next millisecond).
_CODE = """
from kgrid_py.learning import ids
for start in ({starts}):
    ids._last_ms, ids._last_random = {ms}, start
    print(*[ids.new_id({ms}) for _ in range(3000)])
"""


def _burst(starts: list[int]) -> list[list[str]]:
    code = _CODE.format(starts=", ".join(map(str, starts)) + ",", ms=MS)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return [line.split() for line in out.splitlines()]


def test_ids_are_the_full_encoding_and_increase_by_one() -> None:
    starts = [1024 * 7 - 5, (1 << 70) - 100, 12345]
    for start, ids in zip(starts, _burst(starts), strict=True):
        values = [_value(i) for i in ids]
        assert all(_encode(v) == i and is_id(i) for v, i in zip(values, ids, strict=True))
        assert values[0] == (MS << 80) | (start + 1)
        # within a millisecond the random part counts up by one: the ids are strictly increasing
        assert all(b - a == 1 for a, b in itertools.pairwise(values))
    borrowed = _burst([_RANDOM_MAX - 2])[0]  # past 2^80 - 1 the next id is the next millisecond's
    assert [id_time_ms(i) for i in borrowed[:3]] == [MS, MS, MS + 1]
    assert all(_encode(_value(i)) == i for i in borrowed)
    assert borrowed == sorted(borrowed) and len(set(borrowed)) == len(borrowed)


def _value(text: str) -> int:
    value = 0
    for c in text:
        value = (value << 5) | "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(c)
    return value
