"""``storage._keyset.KeySet`` behaves as a set of 64-bit ints, across merges."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from storage import _keyset
from storage._keyset import KeySet

KEYS = st.integers(min_value=0, max_value=2**64 - 1)


@given(st.lists(st.tuples(st.booleans(), KEYS), max_size=300))
def test_keyset_matches_a_set(operations: list[tuple[bool, int]]) -> None:
    # a tiny merge threshold, so most keys live in the sorted array
    _keyset.MERGE_AT, before = 4, _keyset.MERGE_AT
    try:
        keys, expected = KeySet(), set()
        for add, key in operations:
            if add:
                # absent=True where the caller has just checked, as the builder does
                keys.add(key, absent=key % 2 == 0 and key not in keys)
                expected.add(key)
            assert (key in keys) == (key in expected)
        assert len(keys) == len(expected)
        for key in expected:
            assert key in keys
    finally:
        _keyset.MERGE_AT = before


def test_keyset_keeps_old_keys_in_eight_bytes_each() -> None:
    keys = KeySet()
    for key in range(0, 3 * 200_000, 3):
        keys.add(key * 0x9E3779B97F4A7C15 % 2**64)
    assert len(keys) == 200_000
    assert 7 * 0x9E3779B97F4A7C15 % 2**64 not in keys
    assert 9 * 0x9E3779B97F4A7C15 % 2**64 in keys
    assert "not an int" not in keys
    assert keys._old.itemsize * len(keys._old) <= 8 * 200_000
