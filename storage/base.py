"""The ``Store`` protocol every backend implements, and ``NullStore`` for disabled capture."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from storage.datasets import Dataset, DatasetItem, DatasetPair, Split
from storage.documents import Document, Item
from storage.errors import StoreUnavailable
from storage.jobs import Job, JobEvent, JobUpdate, NewJobEvent
from storage.models import CaptureRecord
from storage.query import (
    CaptureFilter,
    CapturePatch,
    Conversation,
    Order,
    Page,
    Stats,
    StoredCapture,
)


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

    async def count(self, where: CaptureFilter | None = None) -> int:
        """Number of stored captures (matching ``where``)."""
        ...

    async def time_quantile(self, where: CaptureFilter, q: float) -> float | None:
        """The creation time below which a share ``q`` of the matching captures lie."""
        ...

    # -- finding and curating (see storage.query) --------------------------------------------

    async def list_captures(
        self,
        where: CaptureFilter,
        *,
        after: str | None = None,
        limit: int = 50,
        order: Order = "desc",
    ) -> Page:
        """One page of captures matching ``where``, by id (newest first for ``desc``).

        ``after`` is the last id of the previous page (exclusive). Raises ``QueryError`` for a
        full-text query FTS5 cannot parse.
        """
        ...

    async def get_capture(
        self, ref: str, *, key_fingerprint: str | None = None
    ) -> StoredCapture | None:
        """A capture with its curation, by capture id or by response id (``chatcmpl-…``).

        With ``key_fingerprint``, a capture made with another key is treated as missing.
        """
        ...

    async def conversation(self, capture_id: str) -> Conversation | None:
        """The Responses API chain ending at ``capture_id`` (followed by previous_response_id)."""
        ...

    async def update_capture(self, capture_id: str, patch: CapturePatch) -> StoredCapture | None:
        """Apply a curation edit; None when the id is unknown."""
        ...

    async def update_where(self, where: CaptureFilter, patch: CapturePatch) -> int:
        """Apply a curation edit to every match; the number of captures changed."""
        ...

    async def delete_capture(self, capture_id: str) -> bool:
        """Hard delete: the capture's text is gone from the files once this returns."""
        ...

    async def delete_where(self, where: CaptureFilter) -> int:
        """Hard delete every match (see ``delete_capture``); the number deleted."""
        ...

    async def purge_before(self, cutoff: float) -> int:
        """Hard delete captures created before ``cutoff`` (unix seconds); the number deleted."""
        ...

    async def stats(self, where: CaptureFilter | None = None) -> Stats:
        """Counts by model, endpoint, outcome, tag and day; token sums; bytes on disk."""
        ...

    # -- datasets (see storage.datasets) ----------------------------------------------------

    def iter_captures(
        self, where: CaptureFilter, *, batch: int = 500
    ) -> AsyncIterator[list[StoredCapture]]:
        """Every capture matching ``where`` in the order stored, ``batch`` at a time."""
        ...

    async def begin_dataset(self, name: str) -> int:
        """Reserve ``name`` for a dataset being built; its handle. Raises ``DatasetExists``."""
        ...

    async def add_dataset_items(
        self, handle: int, items: Sequence[DatasetItem], pairs: Sequence[DatasetPair] = ()
    ) -> None:
        """Append snapshot items (and preference pairs) to a dataset being built."""
        ...

    async def finish_dataset(self, handle: int, dataset: Dataset) -> None:
        """Publish a built dataset: from now on it is listed and exportable, and immutable."""
        ...

    async def abort_dataset(self, handle: int) -> None:
        """Forget a dataset whose build failed (its name becomes free again)."""
        ...

    async def list_datasets(self) -> list[Dataset]:
        """Published datasets, newest first."""
        ...

    async def get_dataset(self, name: str) -> Dataset | None: ...

    async def delete_dataset(self, name: str) -> bool:
        """Remove a dataset's snapshot (never the captures)."""
        ...

    def dataset_items(
        self, name: str, split: Split | None = None, *, batch: int = 500
    ) -> AsyncIterator[list[tuple[DatasetItem, StoredCapture | None]]]:
        """A dataset's items in export order with their captures (None: deleted since)."""
        ...

    def dataset_pairs(
        self, name: str, split: Split | None = None, *, batch: int = 500
    ) -> AsyncIterator[list[tuple[DatasetPair, StoredCapture | None, StoredCapture | None]]]:
        """A dataset's preference pairs with the preferred and rejected captures."""
        ...

    # -- training jobs (see storage.jobs) ----------------------------------------------------

    async def create_job(self, job: Job) -> None:
        """Record a new job (its id is new)."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_jobs(
        self, *, active: bool = False, after: str | None = None, limit: int = 50
    ) -> tuple[list[Job], bool]:
        """Jobs newest first (``active``: not finished only), after the id ``after``; and
        whether there are more."""
        ...

    async def update_job(self, job_id: str, update: JobUpdate) -> Job | None:
        """Apply ``update``; the job as it is now (None: unknown id). A finished job's status
        never changes again."""
        ...

    async def add_job_events(self, job_id: str, events: Sequence[NewJobEvent]) -> int:
        """Append events in order; one whose ``source_id`` is recorded already is skipped.
        The number added."""
        ...

    async def job_events(
        self, job_id: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[JobEvent], bool]:
        """A job's events with ``seq`` past ``after``, oldest first; and whether there are more."""
        ...

    async def count_jobs(self) -> dict[tuple[str, str], int]:
        """How many jobs there are per ``(backend, status)``; pairs with none are absent."""
        ...

    # -- documents: evals and routes (see storage.documents) ---------------------------------

    async def put_document(
        self, kind: str, doc_id: str, body: dict[str, Any], *, if_version: int | None = None
    ) -> Document:
        """Create or replace a document; ``if_version`` (0: must not exist) or
        ``VersionConflict``. The document as written, its version one more."""
        ...

    async def get_document(self, kind: str, doc_id: str) -> Document | None: ...

    async def list_documents(
        self, kind: str, *, after: str | None = None, limit: int = 50
    ) -> tuple[list[Document], bool]:
        """Documents of ``kind`` by id, descending, after the id ``after``; and whether there
        are more."""
        ...

    async def delete_document(self, kind: str, doc_id: str) -> bool:
        """Delete a document and its items; whether it existed."""
        ...

    async def documents_changed(self, kind: str) -> tuple[float, int]:
        """The newest ``updated_at`` of ``kind`` and how many there are (0.0, 0 for none)."""
        ...

    async def add_items(self, kind: str, parent: str, bodies: Sequence[dict[str, Any]]) -> int:
        """Append items under the document ``parent``; the number added."""
        ...

    async def list_items(
        self, kind: str, parent: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[Item], bool]:
        """Items with ``seq`` past ``after``, oldest first; and whether there are more."""
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

    async def count(self, where: CaptureFilter | None = None) -> int:
        return 0

    async def time_quantile(self, where: CaptureFilter, q: float) -> float | None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def install_secret(self) -> bytes:
        return b"\0" * 32

    async def list_captures(
        self,
        where: CaptureFilter,
        *,
        after: str | None = None,
        limit: int = 50,
        order: Order = "desc",
    ) -> Page:
        return Page([], False)

    async def get_capture(
        self, ref: str, *, key_fingerprint: str | None = None
    ) -> StoredCapture | None:
        return None

    async def conversation(self, capture_id: str) -> Conversation | None:
        return None

    async def update_capture(self, capture_id: str, patch: CapturePatch) -> StoredCapture | None:
        return None

    async def update_where(self, where: CaptureFilter, patch: CapturePatch) -> int:
        return 0

    async def delete_capture(self, capture_id: str) -> bool:
        return False

    async def delete_where(self, where: CaptureFilter) -> int:
        return 0

    async def purge_before(self, cutoff: float) -> int:
        return 0

    async def stats(self, where: CaptureFilter | None = None) -> Stats:
        return Stats(0, {}, {}, {}, {}, {}, 0, 0, 0, 0, 0, 0, 0, 0)

    async def iter_captures(
        self, where: CaptureFilter, *, batch: int = 500
    ) -> AsyncIterator[list[StoredCapture]]:
        return
        yield

    async def begin_dataset(self, name: str) -> int:
        raise StoreUnavailable("capture is off: there is no store to keep datasets in")

    async def add_dataset_items(
        self, handle: int, items: Sequence[DatasetItem], pairs: Sequence[DatasetPair] = ()
    ) -> None:
        return None

    async def finish_dataset(self, handle: int, dataset: Dataset) -> None:
        return None

    async def abort_dataset(self, handle: int) -> None:
        return None

    async def list_datasets(self) -> list[Dataset]:
        return []

    async def get_dataset(self, name: str) -> Dataset | None:
        return None

    async def delete_dataset(self, name: str) -> bool:
        return False

    async def dataset_items(
        self, name: str, split: Split | None = None, *, batch: int = 500
    ) -> AsyncIterator[list[tuple[DatasetItem, StoredCapture | None]]]:
        return
        yield

    async def dataset_pairs(
        self, name: str, split: Split | None = None, *, batch: int = 500
    ) -> AsyncIterator[list[tuple[DatasetPair, StoredCapture | None, StoredCapture | None]]]:
        return
        yield

    async def create_job(self, job: Job) -> None:
        raise StoreUnavailable("capture is off: there is no store to keep training jobs in")

    async def get_job(self, job_id: str) -> Job | None:
        return None

    async def list_jobs(
        self, *, active: bool = False, after: str | None = None, limit: int = 50
    ) -> tuple[list[Job], bool]:
        return [], False

    async def update_job(self, job_id: str, update: JobUpdate) -> Job | None:
        return None

    async def add_job_events(self, job_id: str, events: Sequence[NewJobEvent]) -> int:
        return 0

    async def job_events(
        self, job_id: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[JobEvent], bool]:
        return [], False

    async def count_jobs(self) -> dict[tuple[str, str], int]:
        return {}

    async def put_document(
        self, kind: str, doc_id: str, body: dict[str, Any], *, if_version: int | None = None
    ) -> Document:
        raise StoreUnavailable(f"capture is off: there is no store to keep {kind}s in")

    async def get_document(self, kind: str, doc_id: str) -> Document | None:
        return None

    async def list_documents(
        self, kind: str, *, after: str | None = None, limit: int = 50
    ) -> tuple[list[Document], bool]:
        return [], False

    async def delete_document(self, kind: str, doc_id: str) -> bool:
        return False

    async def documents_changed(self, kind: str) -> tuple[float, int]:
        return 0.0, 0

    async def add_items(self, kind: str, parent: str, bodies: Sequence[dict[str, Any]]) -> int:
        return 0

    async def list_items(
        self, kind: str, parent: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[Item], bool]:
        return [], False
