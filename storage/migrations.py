"""SQLite schema migrations: named, ordered, append-only, recorded.

Each migration is a function registered with ``@migration``; its name is the function name
(``m001_captures``…) and registration order is apply order. ``_migrations(name, applied_at)``
records what ran; each migration runs in one transaction together with its record, so a
failure leaves neither. Never edit a migration once released: add a new one.

Schema (m001):

* ``captures``: one row per exchange. Raw data is kept as written: the request body as a
  manifest of parts (``request_manifest``, see ``storage._blobs``: short runs inline, large
  segments as 16-byte BLAKE2b digests of rows in ``blobs``), the response body, and the
  reassembled response (``response_json_codec`` 0 = JSON text, 1 = deflated JSON, 2 = equal
  to the parsed response body, so not stored twice, 3 = JSON from the standard library
  encoder, for values orjson cannot write; NULL = no object). ``*_codec`` columns: 0 = as is,
  1 = raw deflate. Extracted columns (``model``, ``status``, ``outcome``, tokens, timings,
  ``has_tool_calls``…) serve filters and can be recomputed from the raw ones.
* ``blobs``: each distinct large request segment once, with a reference count (``refs``) so a
  delete can drop the segments nobody uses any more.
* ``capture_tags``: one row per tag, indexed on ``(key, value)``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple


class Migration(NamedTuple):
    name: str
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS: list[Migration] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register ``fn`` as the next migration, named after the function."""
    if any(m.name == fn.__name__ for m in MIGRATIONS):
        raise ValueError(f"duplicate migration name {fn.__name__!r}")
    MIGRATIONS.append(Migration(fn.__name__, fn))
    return fn


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    # Statement by statement: executescript() would COMMIT the migration's transaction.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration
def m001_captures(conn: sqlite3.Connection) -> None:
    _execute_script(
        conn,
        """
        CREATE TABLE captures (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            endpoint TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            model TEXT,
            requested_model TEXT,
            returned_model TEXT,
            stream INTEGER NOT NULL,
            status INTEGER,
            outcome TEXT NOT NULL,
            error TEXT,
            latency_ms REAL,
            ttft_ms REAL,
            input_tokens INTEGER,
            output_tokens INTEGER,
            total_tokens INTEGER,
            cached_tokens INTEGER,
            reasoning_tokens INTEGER,
            has_tool_calls INTEGER NOT NULL,
            response_id TEXT,
            previous_response_id TEXT,
            upstream_request_id TEXT,
            retry_count INTEGER,
            key_fingerprint TEXT,
            request_size INTEGER NOT NULL,
            request_codec INTEGER NOT NULL,
            request_manifest BLOB NOT NULL,
            response_size INTEGER NOT NULL,
            response_truncated INTEGER NOT NULL,
            response_content_type TEXT,
            response_codec INTEGER NOT NULL,
            response_body BLOB NOT NULL,
            response_json_codec INTEGER,
            response_json BLOB
        );
        CREATE INDEX captures_created_at ON captures (created_at);
        CREATE INDEX captures_model ON captures (model);
        CREATE INDEX captures_response_id ON captures (response_id)
            WHERE response_id IS NOT NULL;
        CREATE INDEX captures_previous_response_id ON captures (previous_response_id)
            WHERE previous_response_id IS NOT NULL;
        CREATE TABLE capture_tags (
            capture_id TEXT NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (capture_id, key)
        ) WITHOUT ROWID;
        CREATE INDEX capture_tags_key_value ON capture_tags (key, value);
        CREATE TABLE blobs (
            id INTEGER PRIMARY KEY,
            hash BLOB NOT NULL UNIQUE,
            refs INTEGER NOT NULL,
            codec INTEGER NOT NULL,
            size INTEGER NOT NULL,
            data BLOB NOT NULL
        );
        """,
    )


@migration
def m002_install(conn: sqlite3.Connection) -> None:
    """Per-install facts; ``secret`` keys the HMAC of API-key fingerprints."""
    _execute_script(
        conn,
        """
        CREATE TABLE install (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            secret BLOB NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    )


@migration
def m003_curation_search(conn: sqlite3.Connection) -> None:
    """A stable row number, curation columns and the full-text index.

    ``captures`` is rebuilt (SQLite's documented table-rebuild procedure) with ``seq INTEGER
    PRIMARY KEY``: an implicit rowid may be renumbered by VACUUM, and the full-text index is
    keyed by it. The id keeps its unique index, so inserts cost the same. ``seq`` is the order
    captures were stored in; pages are ordered by it, so every single-column index (which ends
    in the rowid) and the tag index ``(key, value, seq)`` hand out pages already sorted.
    ``capture_tags`` now refers to captures by ``seq``.
    Curation: ``feedback_score`` (-1 … 1) and ``feedback_note``, ``excluded`` (keep out of
    training), ``corrected_response`` (JSON text export prefers over the teacher's answer),
    ``curated_at``. The full-text index of each capture's prompt and answer text
    (``storage.text.search_text``): contentless FTS5 tables ``captures_fts_<part>``, one per
    65,536 captures, created as needed and listed in ``search_partitions`` (see
    ``storage._sqlite_search``). Existing captures are indexed here.
    """
    columns = [row[1] for row in conn.execute("PRAGMA table_info(captures)")]
    names = ", ".join(columns)
    _execute_script(
        conn,
        f"""
        CREATE TABLE captures_new (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            endpoint TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            model TEXT,
            requested_model TEXT,
            returned_model TEXT,
            stream INTEGER NOT NULL,
            status INTEGER,
            outcome TEXT NOT NULL,
            error TEXT,
            latency_ms REAL,
            ttft_ms REAL,
            input_tokens INTEGER,
            output_tokens INTEGER,
            total_tokens INTEGER,
            cached_tokens INTEGER,
            reasoning_tokens INTEGER,
            has_tool_calls INTEGER NOT NULL,
            response_id TEXT,
            previous_response_id TEXT,
            upstream_request_id TEXT,
            retry_count INTEGER,
            key_fingerprint TEXT,
            request_size INTEGER NOT NULL,
            request_codec INTEGER NOT NULL,
            request_manifest BLOB NOT NULL,
            response_size INTEGER NOT NULL,
            response_truncated INTEGER NOT NULL,
            response_content_type TEXT,
            response_codec INTEGER NOT NULL,
            response_body BLOB NOT NULL,
            response_json_codec INTEGER,
            response_json BLOB,
            feedback_score REAL,
            feedback_note TEXT,
            excluded INTEGER NOT NULL DEFAULT 0,
            corrected_response BLOB,
            curated_at REAL
        );
        INSERT INTO captures_new (seq, {names}) SELECT rowid, {names} FROM captures ORDER BY rowid;
        CREATE TABLE capture_tags_new (
            seq INTEGER NOT NULL REFERENCES captures (seq) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (seq, key)
        ) WITHOUT ROWID;
        INSERT INTO capture_tags_new (seq, key, value)
            SELECT c.seq, t.key, t.value
            FROM capture_tags t JOIN captures_new c ON c.id = t.capture_id;
        DROP TABLE capture_tags;
        DROP TABLE captures;
        ALTER TABLE captures_new RENAME TO captures;
        ALTER TABLE capture_tags_new RENAME TO capture_tags;
        CREATE INDEX capture_tags_key_value ON capture_tags (key, value);
        CREATE INDEX captures_created_at ON captures (created_at);
        CREATE INDEX captures_model ON captures (model);
        CREATE INDEX captures_response_id ON captures (response_id)
            WHERE response_id IS NOT NULL;
        CREATE INDEX captures_previous_response_id ON captures (previous_response_id)
            WHERE previous_response_id IS NOT NULL;
        CREATE TABLE search_partitions (part INTEGER PRIMARY KEY);
        """,
    )
    from storage._sqlite_search import index_all

    index_all(conn)


@migration
def m004_datasets(conn: sqlite3.Connection) -> None:
    """Dataset snapshots (``storage.datasets``).

    ``datasets``: one row per name; ``state`` is ``building`` until the snapshot is complete,
    then ``ready`` with the ``Dataset`` JSON in ``info``. ``dataset_items``: the ordered capture
    ids with their split and the example's content hash (sha256, 32 bytes) at snapshot time.
    ``dataset_pairs``: preference pairs for DPO exports. Items refer to captures by id, not by
    a foreign key: deleting a capture never touches a snapshot, and its export then reports
    the capture as gone.
    """
    _execute_script(
        conn,
        """
        CREATE TABLE datasets (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            info BLOB
        );
        CREATE TABLE dataset_items (
            dataset_id INTEGER NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            capture_id TEXT NOT NULL,
            split TEXT NOT NULL,
            content_hash BLOB NOT NULL,
            PRIMARY KEY (dataset_id, position)
        ) WITHOUT ROWID;
        CREATE TABLE dataset_pairs (
            dataset_id INTEGER NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            split TEXT NOT NULL,
            kind TEXT NOT NULL,
            preferred_id TEXT NOT NULL,
            rejected_id TEXT NOT NULL,
            PRIMARY KEY (dataset_id, position)
        ) WITHOUT ROWID;
        """,
    )


@migration
def m005_training_jobs(conn: sqlite3.Connection) -> None:
    """Training jobs (``storage.jobs``) and their events.

    ``training_jobs``: one row per job; ``hyperparameters``, ``provider_files`` and ``error``
    are JSON text. No credentials: ``provider_url`` says where the job lives, the key comes
    from the settings when the provider is called. ``training_job_events``: the job's events
    in ``seq`` order (the read cursor); ``source_id`` (the provider's event id) is unique per
    job, so polling the same provider events twice records them once.
    """
    _execute_script(
        conn,
        """
        CREATE TABLE training_jobs (
            id TEXT PRIMARY KEY,
            backend TEXT NOT NULL,
            status TEXT NOT NULL,
            dataset TEXT NOT NULL,
            dataset_hash TEXT NOT NULL,
            base_model TEXT NOT NULL,
            method TEXT NOT NULL,
            hyperparameters TEXT NOT NULL,
            suffix TEXT,
            seed INTEGER,
            provider_url TEXT,
            provider_job_id TEXT,
            provider_files TEXT NOT NULL,
            fine_tuned_model TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE TABLE training_job_events (
            seq INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT,
            source_id TEXT,
            UNIQUE (job_id, source_id)
        );
        """,
    )


@migration
def m006_documents(conn: sqlite3.Connection) -> None:
    """Evals and routes (``storage.documents``): versioned JSON documents and their items.

    ``documents``: one row per (kind, id); ``version`` counts writes (optimistic concurrency,
    and how replicas notice a change); ``body`` is JSON text. ``document_items``: appended
    records under a document (an eval's graded examples, a route's events and shadow pairs),
    read in ``seq`` order.
    """
    _execute_script(
        conn,
        """
        CREATE TABLE documents (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (kind, id)
        );
        CREATE INDEX documents_by_update ON documents (kind, updated_at);
        CREATE TABLE document_items (
            seq INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            parent TEXT NOT NULL,
            created_at REAL NOT NULL,
            body TEXT NOT NULL
        );
        CREATE INDEX document_items_by_parent ON document_items (kind, parent, seq);
        """,
    )


@migration
def m007_capture_spool(conn: sqlite3.Connection) -> None:
    """``capture_spool``: one row, the spool position up to which frames are stored as
    captures (``storage.spool``); the indexer moves it in the transaction that stores them."""
    conn.execute(
        "CREATE TABLE capture_spool ("
        " id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER NOT NULL)"
    )


def _ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names recorded in ``_migrations`` (empty for a blank database). Read-only."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
    ).fetchone()
    if exists is None:
        return []
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def pending_names(applied_names: Iterable[str]) -> list[str]:
    """Registered migration names missing from ``applied_names``, in apply order."""
    done = set(applied_names)
    return [m.name for m in MIGRATIONS if m.name not in done]


def pending(conn: sqlite3.Connection) -> list[str]:
    """Names of migrations not yet applied to ``conn``'s database. Read-only."""
    return pending_names(applied(conn))


def migrate(conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``); transactions are explicit.
    """
    if conn.isolation_level is not None:
        raise ValueError("migrate() needs a connection with isolation_level=None")
    conn.execute("BEGIN IMMEDIATE")
    try:
        _ensure_table(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    done: list[str] = []
    for m in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have just applied it.
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (m.name,)).fetchone():
                conn.execute("ROLLBACK")
                continue
            m.apply(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (m.name, clock())
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        done.append(m.name)
    return done
