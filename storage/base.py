"""The ``Store`` protocol every backend implements, and ``NullStore`` for disabled capture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from storage.models import CaptureRecord


class Store(Protocol):
    """Async persistence for capture records.

    Failures raise ``storage.errors.StoreError`` subclasses, never driver exceptions.
    """

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied (empty when up to date)."""
        ...

    async def pending_migrations(self) -> list[str]:
        """Names of migrations not yet applied, in order. Read-only."""
        ...

    async def write_batch(self, records: Sequence[CaptureRecord]) -> None:
        """Write all records in one transaction. Idempotent: an id already stored is skipped."""
        ...

    async def get(self, capture_id: str) -> CaptureRecord | None:
        """Return the record exactly as written, or None when the id is unknown."""
        ...

    async def count(self) -> int:
        """Number of stored captures."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a trivial query."""
        ...

    async def install_secret(self) -> bytes:
        """This install's random secret (created on first use); keys fingerprint HMACs."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Safe to call twice."""
        ...


class NullStore:
    """A store that keeps nothing: capture disabled. Every write succeeds and is discarded."""

    async def migrate(self) -> list[str]:
        return []

    async def pending_migrations(self) -> list[str]:
        return []

    async def write_batch(self, records: Sequence[CaptureRecord]) -> None:
        return None

    async def get(self, capture_id: str) -> CaptureRecord | None:
        return None

    async def count(self) -> int:
        return 0

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def install_secret(self) -> bytes:
        return b"\0" * 32
