"""Storage exceptions. Backends translate their driver errors into this tree.

    StoreError            anything the store could not do (e.g. a record it cannot encode)
    ├── StoreFull         no space left: disk full, SQLITE_FULL, a size cap reached
    ├── StoreBusy         the database is locked by someone else; retrying later can succeed
    └── StoreUnavailable  cannot reach or open the database (I/O error, closed, corrupt, perms)

The capture writer drops a batch on ``StoreFull`` (counted as ``storage_full``), retries on
``StoreBusy`` and ``StoreUnavailable``, and splits a batch to isolate a bad record on a plain
``StoreError``.
"""

from __future__ import annotations


class StoreError(Exception):
    """The store could not complete an operation.

    ``written``: for a batch write, how many of the batch's first records were stored all the
    same (0 unless the store says otherwise); the writer counts those as written.
    """

    written: int = 0


class StoreFull(StoreError):
    """No space left for new data."""


class StoreBusy(StoreError):
    """The database is locked or busy; the operation may succeed if retried."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, opened or used."""
