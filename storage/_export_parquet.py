"""Parquet files for the ``hf`` export formats (storage.export; private).

pyarrow is the optional extra ``stillroom[hf]``, imported only when a Parquet file is written.
Each message is stored verbatim as one JSON value (Arrow's ``arrow.json`` extension type) in a
list column, and the file carries Hugging Face ``datasets`` feature metadata
(``List(Json())`` per message column, ``Value("string")`` for ``tools``), so
``datasets.load_dataset("parquet", ...)`` (datasets 5.x, which has ``Json``) gives back each
message exactly as written; any other Parquet reader sees JSON text per message. Without
that, Arrow infers one struct for every row's messages and merges their keys, filling the
missing ones with null (``../shared/reference/training.md`` §b.3): tool-call arguments of one
tool would gain the parameters of every other tool.

One row group per batch of rows, so memory stays flat whatever the dataset size.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from storage._export_formats import Row

MISSING_PYARROW = (
    "Parquet export needs pyarrow: pip install 'stillroom[hf]' (or write .jsonl instead)"
)


class MissingPyarrow(ImportError):
    """pyarrow is not installed (Parquet export needs the ``stillroom[hf]`` extra)."""


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingPyarrow(MISSING_PYARROW) from None
    return pyarrow, pyarrow.parquet


def check_pyarrow() -> None:
    """Raise ``MissingPyarrow`` unless Parquet files can be written."""
    _pyarrow()


def _features(columns: tuple[str, ...]) -> bytes:
    features: dict[str, Any] = {
        name: {"feature": {"_type": "Json"}, "_type": "List"} for name in columns
    }
    features["tools"] = {"dtype": "string", "_type": "Value"}
    return orjson.dumps({"info": {"features": features}})


class ParquetRows:
    """Writes rows of ``message_columns`` (lists of messages) and ``tools`` to one file."""

    def __init__(self, path: Path, message_columns: tuple[str, ...]) -> None:
        pa, pq = _pyarrow()
        self._pa = pa
        self._columns = message_columns
        fields = [pa.field(name, pa.list_(pa.json_())) for name in message_columns]
        fields.append(pa.field("tools", pa.string()))
        self._schema = pa.schema(fields, metadata={b"huggingface": _features(message_columns)})
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def write(self, rows: list[Row]) -> None:
        pa = self._pa
        arrays = [
            pa.array(
                [[orjson.dumps(m).decode() for m in row[name]] for row in rows],
                type=pa.list_(pa.string()),
            ).cast(pa.list_(pa.json_()))
            for name in self._columns
        ]
        arrays.append(pa.array([row["tools"] for row in rows], type=pa.string()))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def close(self) -> None:
        self._writer.close()
