"""Open the store a ``--database`` value names."""

from __future__ import annotations

import importlib.util

from storage.base import Store
from storage.errors import StoreUnavailable
from storage.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(database: str) -> Store:
    """A SQLite path (the default) or a ``postgresql://`` URL; nothing is opened yet."""
    if database.startswith(POSTGRES_SCHEMES):
        if importlib.util.find_spec("asyncpg") is None:
            raise StoreUnavailable(
                "the Postgres backend needs asyncpg: pip install 'stillroom[postgres]'"
            )
        from storage.postgres import PostgresStore

        return PostgresStore(database)
    return SQLiteStore(database)
