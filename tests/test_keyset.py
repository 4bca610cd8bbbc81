"""``storage._keyset.KeySet`` behaves as a set of 64-bit ints, in crowded buckets too."""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from storage import _keyset
from storage._keyset import KeySet

KEYS = st.integers(min_value=0, max_value=2**64 - 1)


# Keys crowded into a few buckets (the top bits), so buckets hold many sorted keys.
CROWDED = st.builds(
    lambda top, low: top << _keyset._SHIFT | low,
    st.integers(0, 3) | st.just(_keyset.BUCKETS - 1),
    st.integers(0, 2**_keyset._SHIFT - 1) | st.integers(0, 40),
)


@given(st.lists(st.tuples(st.booleans(), KEYS | CROWDED), max_size=300))
def test_keyset_matches_a_set(operations: list[tuple[bool, int]]) -> None:
    keys, expected = KeySet(), set()
    for add, key in operations:
        if add:
            keys.add(key)
            expected.add(key)
        assert (key in keys) == (key in expected)
    assert len(keys) == len(expected)
    for key in expected:
        assert key in keys
    for bucket in keys._buckets:
        assert bucket is None or list(bucket) == sorted(set(bucket))


def test_keyset_keeps_keys_in_arrays_of_eight_bytes_each() -> None:
    tracemalloc.start()
    keys = KeySet()
    for key in range(0, 3 * 200_000, 3):
        keys.add(key * 0x9E3779B97F4A7C15 % 2**64)
    assert len(keys) == 200_000
    assert 7 * 0x9E3779B97F4A7C15 % 2**64 not in keys
    assert 9 * 0x9E3779B97F4A7C15 % 2**64 in keys
    assert "not an int" not in keys and -1 not in keys and 2**64 not in keys
    assert sum(len(b) for b in keys._buckets if b is not None) == 200_000
    assert all(b.itemsize == 8 for b in keys._buckets if b is not None)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # 8 bytes a key, the arrays' spare room and the buckets' fixed ~1.4 MB: 18 bytes a key at
    # this size (10 at a million); a set of these ints holds ~70 a key
    assert held < 20 * 200_000
