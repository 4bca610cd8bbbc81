"""The migration runner: named, ordered, recorded, each in one transaction with its record."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage import migrations


def test_a_failing_migration_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def m999_broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(
        migrations,
        "MIGRATIONS",
        [*migrations.MIGRATIONS, migrations.Migration("m999_broken", m999_broken)],
    )
    db = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    with pytest.raises(RuntimeError):
        migrations.migrate(db)
    assert migrations.pending(db) == ["m999_broken"]
    assert (
        db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
    )
    db.close()


def test_migration_registry_rules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        migrations.migration(migrations.m001_captures)
    conn = sqlite3.connect(tmp_path / "x.db")  # default isolation level: implicit transactions
    with pytest.raises(ValueError, match="isolation_level"):
        migrations.migrate(conn)
    conn.close()
