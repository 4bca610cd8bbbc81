"""Open the store a ``--database`` value names."""

from __future__ import annotations

from storage.base import Store
from storage.errors import StoreUnavailable
from storage.sqlite import SQLiteStore


def open_store(database: str) -> Store:
    """A SQLite path (the default) or a ``postgresql://`` URL; nothing is opened yet."""
    if database.startswith(("postgresql://", "postgres://")):
        raise StoreUnavailable("the Postgres backend is not available in this version")
    return SQLiteStore(database)
