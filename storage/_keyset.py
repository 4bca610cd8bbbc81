"""A set of 64-bit keys in about 9 bytes a key (private; the dataset builder's hash sets).

A Python ``set`` of a million 64-bit ints holds about 70 MB (an int object and a table slot per
key); a dataset build keeps up to three such sets for as many captures as it reads. ``KeySet``
keeps old keys in a sorted ``array("Q")`` (8 bytes a key, searched by bisection) and new ones in
a small ``set`` that is merged into the array whenever it reaches ``MERGE_AT`` keys.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left

MERGE_AT = 1 << 16


class KeySet:
    __slots__ = ("_new", "_old")

    def __init__(self) -> None:
        self._old = array("Q")
        self._new: set[int] = set()

    def __contains__(self, key: object) -> bool:
        if key in self._new:
            return True
        if not isinstance(key, int):
            return False
        old = self._old
        at = bisect_left(old, key)
        return at < len(old) and old[at] == key

    def __len__(self) -> int:
        return len(self._old) + len(self._new)

    def add(self, key: int, *, absent: bool = False) -> None:
        """Add ``key`` (0 <= key < 2**64). ``absent``: the caller has just found that ``key``
        is not in the set, which saves looking it up again (the builder checks every key
        first, and a lookup in the sorted keys is most of what a build's parent process does
        per capture)."""
        if not absent and key in self:
            return
        self._new.add(key)
        if len(self._new) >= MERGE_AT:
            self._old = array("Q", heapq.merge(self._old, sorted(self._new)))
            self._new = set()
