"""Dataset exports: training files a trainer accepts on the first try, with a manifest beside.

Formats (``FORMATS``), each one row per example (per preference pair for ``openai-dpo``):

* ``openai-chat``: OpenAI's SFT chat JSONL, ``{"messages", "tools"?, "parallel_tool_calls"?}``;
  ``developer`` becomes ``system``, tool-call arguments are JSON strings, the captured answer
  (the last message) has ``weight: 1`` and earlier assistant turns ``weight: 0``.
* ``openai-dpo``: OpenAI's preference JSONL, ``{"input": {"messages", "tools"?,
  "parallel_tool_calls"?}, "preferred_output": [m], "non_preferred_output": [m]}``, from the
  dataset's pairs: an operator's corrected answer over the teacher's original, or the answer
  with positive feedback over one with negative feedback to the same prompt.
* ``hf``: rows for Hugging Face ``datasets`` and TRL's ``SFTTrainer``, ``{"messages",
  "tools"}`` (conversational language modeling: every assistant turn is trained).
* ``hf-prompt-completion``: ``{"prompt", "completion", "tools"}`` (conversational
  prompt-completion: only the captured answer is trained, like ``weight: 0`` on the history).

``hf`` and ``hf-prompt-completion`` are two formats, not two column sets of one file, because
TRL 1.x cannot take a row with both: ``trl.data_utils.apply_chat_template`` (and so
``maybe_apply_chat_template``) raises ``KeyError: Invalid keys`` for ``{"messages", "prompt",
"completion"}``, and ``SFTTrainer`` silently takes the prompt-completion path whenever a
``prompt`` column exists, ignoring ``messages``. In both, messages are chat-template ready:
``developer`` → ``system``, text-only content-part lists → one string, tool-call arguments →
objects (templates apply ``tojson``), and ``tools`` is one JSON string or null (TRL
``json.loads`` it; a string column also keeps Arrow from merging tool schemas).

The ``hf`` formats are written as JSONL, or as Parquet when the output path ends in
``.parquet`` (needs the ``stillroom[hf]`` extra: pyarrow). Load either with
``datasets.load_dataset("json" | "parquet", data_files=FILE, split="train")``; for JSONL,
passing ``features=Features({"messages": List(Json()), "tools": Value("string")})`` guarantees
messages come back verbatim (the Parquet file carries those features itself).

Exports rebuild every example from its capture (see ``storage._export_rows``) and stream batch
by batch: memory stays flat whatever the dataset size. A big JSONL export to a file from a
SQLite store is rendered by worker processes, range by range, and written in order
(``storage._dataset_workers``). The output is a function of the dataset and its captures alone
(orjson, no timestamps), so identical inputs give identical bytes. An export to FILE is written
atomically (a temporary file renamed into place, removed on failure, including
``DatasetChanged``) and writes its manifest to FILE.manifest.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, get_args

import orjson

from storage._dataset_workers import (
    MAX_EXPORT_WORKERS,
    parallel_jsonl,
    sqlite_path,
    worker_count,
)
from storage._export_formats import ITEM_ROWS, Row
from storage._export_formats import hf_message as hf_message  # for the local trainer
from storage._export_parquet import MissingPyarrow, ParquetRows, check_pyarrow
from storage._export_rows import item_rows, pair_rows, raise_if_changed
from storage.datasets import SPLITS, Dataset, Progress, Split

if TYPE_CHECKING:
    from storage.base import Store

Format = Literal["openai-chat", "openai-dpo", "hf", "hf-prompt-completion"]
FORMATS: tuple[Format, ...] = get_args(Format)
MANIFEST_SUFFIX = ".manifest.json"

_PARQUET_COLUMNS: dict[str, tuple[str, ...]] = {
    "hf": ("messages",),
    "hf-prompt-completion": ("prompt", "completion"),
}
_HASH_CHUNK = 1 << 20


class ExportError(ValueError):
    """An export that cannot start: unknown format or split, or an unusable output path."""


class DatasetNotFound(LookupError):
    """No published dataset has this name."""


async def export_lines(
    store: Store,
    name: str,
    fmt: str,
    split: str | None = None,
    *,
    progress: Progress | None = None,
) -> AsyncIterator[bytes]:
    """The export as JSONL, one chunk of whole lines (``\\n``-terminated) per stored batch.

    ``split`` None exports every split, in export order. The checks (``ExportError``,
    ``DatasetNotFound``) run when the first chunk is asked for; ``DatasetChanged`` is raised
    after the last good chunk.
    """
    dataset = await _open(store, name, fmt, split)
    async for rows in _rows(store, dataset, fmt, split, progress):
        yield _jsonl(rows)


async def export_dataset(
    store: Store,
    name: str,
    fmt: str,
    split: str | None,
    out: Path,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the export to ``out`` and its manifest to ``out`` + ``.manifest.json``; return
    the manifest. Parquet when ``out`` ends in ``.parquet`` (``hf`` formats only), else JSONL.

    A big JSONL export of examples from a SQLite store is rendered by worker processes
    (``storage._dataset_workers``); ``workers`` sets how many (1: none), None picks.
    """
    out = Path(out)
    parquet = out.suffix.lower() == ".parquet"
    _check_request(fmt, split)
    if parquet:
        if fmt not in _PARQUET_COLUMNS:
            raise ExportError(f"{fmt} is JSONL only; Parquet is for the hf formats")
        try:
            check_pyarrow()
        except MissingPyarrow as exc:
            raise ExportError(str(exc)) from None
    if not out.parent.is_dir():
        raise ExportError(f"the output folder {str(out.parent)!r} does not exist")
    dataset = await _open(store, name, fmt, split)
    path = sqlite_path(store)
    count = 1
    if path is not None and not parquet and fmt in ITEM_ROWS:
        count = worker_count(_split_total(dataset, split), workers, MAX_EXPORT_WORKERS)
    with _replacing(out) as tmp:
        if parquet:
            rows = _rows(store, dataset, fmt, split, progress)
            lines = await _write_parquet(tmp, rows, _PARQUET_COLUMNS[fmt])
        else:
            with tmp.open("xb") as file:
                if path is not None and count > 1:
                    lines = await _write_parallel(file, path, dataset, fmt, split, count, progress)
                else:
                    lines = await _write_jsonl(file, _rows(store, dataset, fmt, split, progress))
                _sync(file)
    manifest = _manifest(dataset, fmt, split, out, lines, "parquet" if parquet else "jsonl")
    manifest_path = out.with_name(out.name + MANIFEST_SUFFIX)
    with _replacing(manifest_path) as tmp, tmp.open("xb") as file:
        file.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
        _sync(file)
    return manifest


# -- internals ------------------------------------------------------------------------------------


def _check_request(fmt: str, split: str | None) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r:.40}; known: {', '.join(FORMATS)}")
    if split is not None and split not in SPLITS:
        raise ExportError(f"unknown split {split!r:.40}; known: {', '.join(SPLITS)}")


async def _open(store: Store, name: str, fmt: str, split: str | None) -> Dataset:
    _check_request(fmt, split)
    dataset = await store.get_dataset(name)
    if dataset is None:
        raise DatasetNotFound(f"no dataset named {name!r:.80}")
    return dataset


def _rows(
    store: Store,
    dataset: Dataset,
    fmt: str,
    split: str | None,
    progress: Progress | None,
) -> AsyncIterator[list[Row]]:
    part: Split | None = next((s for s in SPLITS if s == split), None)
    # Progress counts items; for pairs the split's example count is the bound shown.
    total = sum(n for s, n in dataset.counts.items() if part is None or s == part)
    if fmt == "openai-dpo":
        return pair_rows(store, dataset.name, part, total=total, progress=progress)
    return item_rows(store, dataset.name, part, ITEM_ROWS[fmt], total=total, progress=progress)


def _jsonl(rows: list[Row]) -> bytes:
    return b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows)


async def _write_jsonl(file: IO[bytes], rows: AsyncIterator[list[Row]]) -> int:
    lines = 0
    async for batch in rows:
        file.write(_jsonl(batch))
        lines += len(batch)
    return lines


async def _write_parallel(
    file: IO[bytes],
    path: str,
    dataset: Dataset,
    fmt: str,
    split: str | None,
    workers: int,
    progress: Progress | None,
) -> int:
    part: Split | None = next((s for s in SPLITS if s == split), None)
    total = _split_total(dataset, split)
    positions = sum(dataset.counts.values())
    lines = changed = done = 0
    async for data, written, gone, seen in parallel_jsonl(
        path, dataset.name, positions, part, fmt, workers, total=total, progress=progress
    ):
        file.write(data)
        lines += written
        changed += gone
        done += seen
    raise_if_changed(changed, done, "examples", total)
    return lines


def _split_total(dataset: Dataset, split: str | None) -> int:
    return sum(n for s, n in dataset.counts.items() if split is None or s == split)


async def _write_parquet(
    path: Path, rows: AsyncIterator[list[Row]], columns: tuple[str, ...]
) -> int:
    writer = ParquetRows(path, columns)
    lines = 0
    try:
        async for batch in rows:
            writer.write(batch)
            lines += len(batch)
    finally:
        writer.close()
    return lines


def _sync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it on success and removed on failure
    (not created here: the writer creates it, with the usual permissions)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _manifest(
    dataset: Dataset, fmt: str, split: str | None, out: Path, lines: int, encoding: str
) -> dict[str, Any]:
    return {
        "object": "dataset.export",
        "dataset": dataset.name,
        "content_hash": dataset.content_hash,
        "format": fmt,
        "split": split,
        "file": {
            "name": out.name,
            "encoding": encoding,
            "bytes": out.stat().st_size,
            "sha256": _sha256(out),
        },
        "lines": lines,
        "spec": dataset.spec,
        "counts": dataset.counts,
        "considered": dataset.considered,
        "rejected": dataset.rejected,
        "tokens": {s: stats.to_json() for s, stats in dataset.tokens.items()},
        "leakage": dataset.leakage,
        "dataset_created_at": dataset.created_at,
        "dataset_version": dataset.version,
        "stillroom_version": _version(),
        "created_at": time.time(),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _version() -> str:
    try:
        return version("stillroom")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"
