"""Versioned JSON documents and the items appended under them: how evals and routes are stored.

A document is ``(kind, id)`` → a JSON object with a ``version`` that counts its writes. A write
may say which version it expects (``if_version``; 0: the document must not exist yet), so two
replicas changing one route cannot overwrite each other unseen: the second gets
``VersionConflict`` and re-reads. ``changed_since(kind)`` (the newest ``updated_at``) is how a
replica notices that another one changed a route.

Items are records appended under a document (an eval's graded examples, a route's events, its
shadow pairs), each with a store-assigned ``seq`` that is also the cursor to page them. Deleting
a document deletes its items.

The module only defines the types; ``SQLiteStore`` and ``PostgresStore`` implement them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

MAX_KIND: Final = 32
MAX_ID: Final = 128


class VersionConflict(Exception):
    """The document's version is not the one the write expected."""

    def __init__(self, kind: str, doc_id: str, expected: int, found: int) -> None:
        super().__init__(f"{kind} {doc_id} is at version {found}, not {expected}")
        self.expected = expected
        self.found = found


@dataclass(frozen=True, slots=True)
class Document:
    kind: str
    id: str
    version: int
    created_at: float
    updated_at: float
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Item:
    seq: int
    kind: str
    parent: str
    created_at: float
    body: dict[str, Any]
