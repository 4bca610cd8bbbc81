"""``SQLiteStore``'s training jobs and their events (storage.jobs; schema m005; private)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson

from storage._sqlite_queries import StoreCalls
from storage.jobs import Job, JobError, JobEvent, JobUpdate, NewJobEvent, is_terminal

_JOB_COLUMNS = (
    "id, backend, status, dataset, dataset_hash, base_model, method, hyperparameters, suffix,"
    " seed, provider_url, provider_job_id, provider_files, fine_tuned_model, error, created_at,"
    " updated_at, finished_at"
)
_TERMINAL = ("succeeded", "failed", "cancelled")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def job_from_row(row: Sequence[Any]) -> Job:
    error = orjson.loads(row[14]) if row[14] is not None else None
    return Job(
        id=row[0],
        backend=row[1],
        status=row[2],
        dataset=row[3],
        dataset_hash=row[4],
        base_model=row[5],
        method=row[6],
        hyperparameters=orjson.loads(row[7]),
        suffix=row[8],
        seed=row[9],
        provider_url=row[10],
        provider_job_id=row[11],
        provider_files=orjson.loads(row[12]),
        fine_tuned_model=row[13],
        error=JobError.from_json(error) if isinstance(error, dict) else None,
        created_at=row[15],
        updated_at=row[16],
        finished_at=row[17],
    )


def job_row(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.backend,
        job.status,
        job.dataset,
        job.dataset_hash,
        job.base_model,
        job.method,
        _dumps(job.hyperparameters),
        job.suffix,
        job.seed,
        job.provider_url,
        job.provider_job_id,
        _dumps(job.provider_files),
        job.fine_tuned_model,
        _dumps(job.error.to_json()) if job.error is not None else None,
        job.created_at,
        job.updated_at,
        job.finished_at,
    )


def update_sets(update: JobUpdate, now: float) -> tuple[list[str], list[Any]]:
    """``SET`` clauses and parameters for ``update`` (shared with other SQL stores)."""
    sets: list[str] = ["updated_at = ?"]
    params: list[Any] = [now]
    if update.status is not None:
        sets.append("status = ?")
        params.append(update.status)
        if is_terminal(update.status):
            sets.append("finished_at = COALESCE(finished_at, ?)")
            params.append(now)
    for column, value in (
        ("provider_job_id", update.provider_job_id),
        ("fine_tuned_model", update.fine_tuned_model),
    ):
        if value is not None:
            sets.append(f"{column} = ?")
            params.append(value)
    if update.provider_files is not None:
        sets.append("provider_files = ?")
        params.append(_dumps(update.provider_files))
    if update.error is not None:
        sets.append("error = ?")
        params.append(_dumps(update.error.to_json()))
    return sets, params


# -- sync SQL (run on a connection's thread) ----------------------------------------------------


def _in_transaction(conn: sqlite3.Connection, fn: Any, *args: Any) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _insert(conn: sqlite3.Connection, job: Job) -> None:
    marks = ", ".join("?" for _ in range(18))
    conn.execute(f"INSERT INTO training_jobs ({_JOB_COLUMNS}) VALUES ({marks})", job_row(job))


def _get(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM training_jobs WHERE id = ?", (job_id,)
    ).fetchone()
    return job_from_row(row) if row else None


def _update(conn: sqlite3.Connection, job_id: str, update: JobUpdate) -> Job | None:
    current = _get(conn, job_id)
    if current is None:
        return None
    if current.is_terminal and update.status is not None and update.status != current.status:
        return current  # a finished job stays finished (a late poll cannot undo a cancel)
    sets, params = update_sets(update, time.time())
    conn.execute(f"UPDATE training_jobs SET {', '.join(sets)} WHERE id = ?", [*params, job_id])
    return _get(conn, job_id)


def _list(
    conn: sqlite3.Connection, active: bool, after: str | None, limit: int
) -> tuple[list[Job], bool]:
    sql = f"SELECT {_JOB_COLUMNS} FROM training_jobs WHERE 1 = 1"
    params: list[Any] = []
    if active:
        sql += f" AND status NOT IN ({', '.join('?' for _ in _TERMINAL)})"
        params.extend(_TERMINAL)
    if after is not None:
        sql += " AND id < ?"
        params.append(after)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit + 1]).fetchall()
    return [job_from_row(row) for row in rows[:limit]], len(rows) > limit


def _add_events(conn: sqlite3.Connection, job_id: str, events: Sequence[NewJobEvent]) -> int:
    now = time.time()
    added = 0
    for event in events:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO training_job_events"
            " (job_id, created_at, level, message, data, source_id) VALUES (?, ?, ?, ?, ?, ?)",
            (
                job_id,
                event.created_at if event.created_at is not None else now,
                event.level,
                event.message,
                _dumps(event.data) if event.data is not None else None,
                event.source_id,
            ),
        )
        added += cursor.rowcount
    return added


def _events(
    conn: sqlite3.Connection, job_id: str, after: int, limit: int
) -> tuple[list[JobEvent], bool]:
    rows = conn.execute(
        "SELECT seq, job_id, created_at, level, message, data FROM training_job_events"
        " WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (job_id, after, limit + 1),
    ).fetchall()
    events = [
        JobEvent(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]) if row[5] else None)
        for row in rows[:limit]
    ]
    return events, len(rows) > limit


def _count(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT backend, status, count(*) FROM training_jobs GROUP BY backend, status"
    ).fetchall()
    return {(row[0], row[1]): row[2] for row in rows}


# -- the mixin ----------------------------------------------------------------------------------


class JobTables(StoreCalls):
    async def create_job(self, job: Job) -> None:
        await self._write(_in_transaction, _insert, job)

    async def get_job(self, job_id: str) -> Job | None:
        found: Job | None = await self._read(_get, job_id)
        return found

    async def list_jobs(
        self, *, active: bool = False, after: str | None = None, limit: int = 50
    ) -> tuple[list[Job], bool]:
        found: tuple[list[Job], bool] = await self._read(_list, active, after, limit)
        return found

    async def update_job(self, job_id: str, update: JobUpdate) -> Job | None:
        found: Job | None = await self._write(_in_transaction, _update, job_id, update)
        return found

    async def add_job_events(self, job_id: str, events: Sequence[NewJobEvent]) -> int:
        if not events:
            return 0
        added: int = await self._write(_in_transaction, _add_events, job_id, events)
        return added

    async def job_events(
        self, job_id: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[JobEvent], bool]:
        found: tuple[list[JobEvent], bool] = await self._read(_events, job_id, after, limit)
        return found

    async def count_jobs(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = await self._read(_count)
        return counts
