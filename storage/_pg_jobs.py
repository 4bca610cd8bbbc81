"""``PostgresStore``'s training jobs and their events (storage.jobs; migration m005; private).

The same behaviour as ``storage._sqlite_jobs`` (and its row mapping and ``SET`` clauses, with
``?`` renumbered to ``$n``). Postgres runs writers side by side where SQLite has one, so:

* ``update_job`` locks the job's row (``FOR UPDATE``) before reading it: two replicas updating
  one job go one after the other, and a finished job's status never changes again (a late poll
  cannot undo a cancel).
* ``add_job_events`` takes the same lock before inserting: a job's events get their ``seq``
  (a ``bigserial``) in commit order, so a reader paging by ``seq`` never skips one that a
  slower transaction commits later.
* Postgres text cannot hold NUL: one in a provider's text (an event's message, a status, a
  model name) is stored as U+FFFD. JSON values are stored as JSON text (``\\u0000`` escaped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson

from storage._sqlite_jobs import _JOB_COLUMNS, job_from_row, job_row, update_sets
from storage.jobs import TERMINAL_STATUSES, Job, JobEvent, JobUpdate, NewJobEvent

T = TypeVar("T")
Call = Callable[..., Coroutine[Any, Any, T]]

_TERMINAL = sorted(TERMINAL_STATUSES)


def _text(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _numbered(clause: str, start: int) -> tuple[str, int]:
    """``clause`` with each ``?`` replaced by ``$start``, ``$start+1``…; the next number."""
    parts = clause.split("?")
    out = parts[0]
    for part in parts[1:]:
        out += f"${start}{part}"
        start += 1
    return out, start


async def _insert(conn: Any, job: Job) -> None:
    marks = ", ".join(f"${n}" for n in range(1, 19))
    await conn.execute(
        f"INSERT INTO training_jobs ({_JOB_COLUMNS}) VALUES ({marks})",
        *(_text(value) for value in job_row(job)),
    )


async def _get(conn: Any, job_id: str, *, lock: bool = False) -> Job | None:
    row = await conn.fetchrow(
        f"SELECT {_JOB_COLUMNS} FROM training_jobs WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        job_id,
    )
    return job_from_row(row) if row else None


async def _update(conn: Any, job_id: str, update: JobUpdate) -> Job | None:
    current = await _get(conn, job_id, lock=True)
    if current is None:
        return None
    if current.is_terminal and update.status is not None and update.status != current.status:
        return current  # a finished job stays finished (a late poll cannot undo a cancel)
    sets, params = update_sets(update, time.time())
    clause, next_n = _numbered(", ".join(sets), 1)
    await conn.execute(
        f"UPDATE training_jobs SET {clause} WHERE id = ${next_n}",
        *(_text(value) for value in params),
        job_id,
    )
    return await _get(conn, job_id)


async def _list(conn: Any, active: bool, after: str | None, limit: int) -> tuple[list[Job], bool]:
    sql = f"SELECT {_JOB_COLUMNS} FROM training_jobs WHERE true"
    params: list[Any] = []
    if active:
        params.append(_TERMINAL)
        sql += f" AND status <> ALL(${len(params)}::text[])"
    if after is not None:
        params.append(after)
        sql += f" AND id < ${len(params)}"
    params.append(limit + 1)
    rows = await conn.fetch(sql + f" ORDER BY id DESC LIMIT ${len(params)}", *params)
    return [job_from_row(row) for row in rows[:limit]], len(rows) > limit


async def _add_events(conn: Any, job_id: str, events: Sequence[NewJobEvent]) -> int:
    # Serialise a job's event writers (see the module docstring); an unknown job finds no row
    # and the insert below fails on the foreign key, as on SQLite.
    await conn.execute("SELECT 1 FROM training_jobs WHERE id = $1 FOR UPDATE", job_id)
    now = time.time()
    added = 0
    for event in events:
        seq = await conn.fetchval(
            "INSERT INTO training_job_events"
            " (job_id, created_at, level, message, data, source_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (job_id, source_id) DO NOTHING RETURNING seq",
            job_id,
            event.created_at if event.created_at is not None else now,
            _text(event.level),
            _text(event.message),
            orjson.dumps(event.data).decode() if event.data is not None else None,
            _text(event.source_id),
        )
        added += seq is not None
    return added


async def _events(conn: Any, job_id: str, after: int, limit: int) -> tuple[list[JobEvent], bool]:
    rows = await conn.fetch(
        "SELECT seq, job_id, created_at, level, message, data FROM training_job_events"
        " WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        job_id,
        after,
        limit + 1,
    )
    events = [
        JobEvent(
            int(row[0]), row[1], row[2], row[3], row[4], orjson.loads(row[5]) if row[5] else None
        )
        for row in rows[:limit]
    ]
    return events, len(rows) > limit


async def _count(conn: Any) -> dict[tuple[str, str], int]:
    rows = await conn.fetch(
        "SELECT backend, status, count(*) FROM training_jobs GROUP BY backend, status"
    )
    return {(row[0], row[1]): int(row[2]) for row in rows}


class PgJobTables:
    """Mixin: needs ``_read(fn, *args)`` and ``_write(fn, *args)`` from the store."""

    async def _read(self, fn: Call[T], *args: Any) -> T:
        raise NotImplementedError

    async def _write(self, fn: Call[T], *args: Any) -> T:
        raise NotImplementedError

    async def create_job(self, job: Job) -> None:
        await self._write(_insert, job)

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read(_get, job_id)

    async def list_jobs(
        self, *, active: bool = False, after: str | None = None, limit: int = 50
    ) -> tuple[list[Job], bool]:
        return await self._read(_list, active, after, limit)

    async def update_job(self, job_id: str, update: JobUpdate) -> Job | None:
        return await self._write(_update, job_id, update)

    async def add_job_events(self, job_id: str, events: Sequence[NewJobEvent]) -> int:
        if not events:
            return 0
        return await self._write(_add_events, job_id, events)

    async def job_events(
        self, job_id: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[JobEvent], bool]:
        return await self._read(_events, job_id, after, limit)

    async def count_jobs(self) -> dict[tuple[str, str], int]:
        return await self._read(_count)
