"""Make a fresh, empty Postgres schema for a benchmark target (``bench/targets.toml``).

    .venv/bin/python bench/pg_schema.py postgresql://postgres@127.0.0.1:5432/test stillroom_bench

Drops the schema if it exists and creates it again; exits 1 with one line when the server
cannot be reached, so ``bench/run`` skips the target with that note instead of failing.
"""

from __future__ import annotations

import asyncio
import re
import sys


async def recreate(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()


def main() -> int:
    if len(sys.argv) != 3 or not re.fullmatch(r"[a-z_][a-z0-9_]*", sys.argv[2]):
        print("usage: pg_schema.py POSTGRES_URL SCHEMA (lower-case letters, digits, _)")  # noqa: T201
        return 2
    try:
        asyncio.run(recreate(sys.argv[1], sys.argv[2]))
    except Exception as exc:  # noqa: BLE001 - any failure: the target is skipped with it
        print(f"Postgres at {sys.argv[1]} is not usable: {exc}")  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
