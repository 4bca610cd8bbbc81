"""Postgres schema migrations: named, ordered, append-only, recorded (private).

The same mechanism as ``storage.migrations`` (SQLite), with its own SQL: each migration is a
name and a script, applied in list order, each in one transaction together with its row in
``_migrations(name, applied_at)``. The names match the SQLite ones, so ``stillroom db migrate``
reports the same steps on both backends. Every transaction first takes a transaction-scoped
advisory lock, so replicas that start together migrate one after the other: the second finds
the migration recorded and skips it. Never edit a migration once released: add a new one.

Schema, mirroring SQLite's (see ``storage.migrations``): ``captures`` keyed by ``seq
bigserial`` (the order captures were stored in; pages are ordered by it) with the capture id
unique, blobs as ``bytea``, booleans as ``boolean``; ``capture_tags (seq, key, value)``;
``blobs`` (content-addressed request segments with reference counts); curation columns;
``search``, a ``tsvector`` of the capture's prompt and answer text (``storage.text``) built with
the ``simple`` configuration, under a GIN index; the dataset tables; the training job tables
(``storage._pg_jobs``: JSON values as JSON text, as on SQLite; events keyed by ``seq
bigserial``, the read cursor, with ``(job_id, source_id)`` unique).
"""

from __future__ import annotations

import time
from typing import Any, Final, NamedTuple

ADVISORY_LOCK_KEY: Final = 0x5354_494C_4C52  # "STILLR": serialises migrations across replicas


class PgMigration(NamedTuple):
    name: str
    sql: str


MIGRATIONS: Final[tuple[PgMigration, ...]] = (
    PgMigration(
        "m001_captures",
        """
        CREATE TABLE captures (
            seq bigserial PRIMARY KEY,
            id text NOT NULL UNIQUE,
            created_at double precision NOT NULL,
            endpoint text NOT NULL,
            method text NOT NULL,
            path text NOT NULL,
            model text,
            requested_model text,
            returned_model text,
            stream boolean NOT NULL,
            status integer,
            outcome text NOT NULL,
            error text,
            latency_ms double precision,
            ttft_ms double precision,
            input_tokens bigint,
            output_tokens bigint,
            total_tokens bigint,
            cached_tokens bigint,
            reasoning_tokens bigint,
            has_tool_calls boolean NOT NULL,
            response_id text,
            previous_response_id text,
            upstream_request_id text,
            retry_count integer,
            key_fingerprint text,
            request_size bigint NOT NULL,
            request_codec smallint NOT NULL,
            request_manifest bytea NOT NULL,
            response_size bigint NOT NULL,
            response_truncated boolean NOT NULL,
            response_content_type text,
            response_codec smallint NOT NULL,
            response_body bytea NOT NULL,
            response_json_codec smallint,
            response_json bytea
        );
        CREATE INDEX captures_created_at ON captures (created_at);
        CREATE INDEX captures_model ON captures (model, seq);
        CREATE INDEX captures_response_id ON captures (response_id)
            WHERE response_id IS NOT NULL;
        CREATE INDEX captures_previous_response_id ON captures (previous_response_id)
            WHERE previous_response_id IS NOT NULL;
        CREATE TABLE capture_tags (
            seq bigint NOT NULL REFERENCES captures (seq) ON DELETE CASCADE,
            key text NOT NULL,
            value text NOT NULL,
            PRIMARY KEY (seq, key)
        );
        CREATE INDEX capture_tags_key_value ON capture_tags (key, value, seq);
        CREATE TABLE blobs (
            hash bytea PRIMARY KEY,
            refs bigint NOT NULL,
            codec smallint NOT NULL,
            size bigint NOT NULL,
            data bytea NOT NULL
        );
        """,
    ),
    PgMigration(
        "m002_install",
        """
        CREATE TABLE install (
            id integer PRIMARY KEY CHECK (id = 1),
            secret bytea NOT NULL,
            created_at double precision NOT NULL
        );
        """,
    ),
    PgMigration(
        "m003_curation_search",
        """
        ALTER TABLE captures
            ADD COLUMN feedback_score double precision,
            ADD COLUMN feedback_note text,
            ADD COLUMN excluded boolean NOT NULL DEFAULT false,
            ADD COLUMN corrected_response bytea,
            ADD COLUMN curated_at double precision,
            ADD COLUMN search tsvector;
        CREATE INDEX captures_search ON captures USING gin (search);
        """,
    ),
    PgMigration(
        "m004_datasets",
        """
        CREATE TABLE datasets (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            state text NOT NULL,
            created_at double precision NOT NULL,
            info bytea
        );
        CREATE TABLE dataset_items (
            dataset_id bigint NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
            position integer NOT NULL,
            capture_id text NOT NULL,
            split text NOT NULL,
            content_hash bytea NOT NULL,
            PRIMARY KEY (dataset_id, position)
        );
        CREATE TABLE dataset_pairs (
            dataset_id bigint NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
            position integer NOT NULL,
            split text NOT NULL,
            kind text NOT NULL,
            preferred_id text NOT NULL,
            rejected_id text NOT NULL,
            PRIMARY KEY (dataset_id, position)
        );
        """,
    ),
    PgMigration(
        "m005_training_jobs",
        """
        CREATE TABLE training_jobs (
            id text PRIMARY KEY,
            backend text NOT NULL,
            status text NOT NULL,
            dataset text NOT NULL,
            dataset_hash text NOT NULL,
            base_model text NOT NULL,
            method text NOT NULL,
            hyperparameters text NOT NULL,
            suffix text,
            seed bigint,
            provider_url text,
            provider_job_id text,
            provider_files text NOT NULL,
            fine_tuned_model text,
            error text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            finished_at double precision
        );
        CREATE TABLE training_job_events (
            seq bigserial PRIMARY KEY,
            job_id text NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
            created_at double precision NOT NULL,
            level text NOT NULL,
            message text NOT NULL,
            data text,
            source_id text,
            UNIQUE (job_id, source_id)
        );
        """,
    ),
    PgMigration(
        "m006_documents",
        """
        CREATE TABLE documents (
            kind text NOT NULL,
            id text NOT NULL,
            version bigint NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            body text NOT NULL,
            PRIMARY KEY (kind, id)
        );
        CREATE INDEX documents_by_update ON documents (kind, updated_at);
        CREATE TABLE document_items (
            seq bigserial PRIMARY KEY,
            kind text NOT NULL,
            parent text NOT NULL,
            created_at double precision NOT NULL,
            body text NOT NULL
        );
        CREATE INDEX document_items_by_parent ON document_items (kind, parent, seq);
        """,
    ),
)


def pending_names(applied: set[str]) -> list[str]:
    return [m.name for m in MIGRATIONS if m.name not in applied]


async def applied(conn: Any) -> set[str]:
    """Names recorded in ``_migrations`` (empty when the table does not exist). Read-only."""
    exists = await conn.fetchval("SELECT to_regclass('_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {row[0] for row in await conn.fetch("SELECT name FROM _migrations")}


async def migrate(conn: Any) -> list[str]:
    """Apply every pending migration, each in its own locked transaction; the names applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations"
            " (name text PRIMARY KEY, applied_at double precision NOT NULL)"
        )
    done: list[str] = []
    for m in MIGRATIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
            if await conn.fetchval("SELECT 1 FROM _migrations WHERE name = $1", m.name):
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES ($1, $2)", m.name, time.time()
            )
        done.append(m.name)
    return done
