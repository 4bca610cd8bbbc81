"""The files a local training job keeps in its directory (``STILLROOM_MODELS_DIR/<job id>/``).

The training process writes them and the ``LocalBackend`` reads them, so the job's progress
lives on disk, not in either process: a proxy that restarts reads where a training process it
never started stands, and a training process outlives the proxy that launched it.

- ``job.json``: what to train (written once, by the backend, before the process starts).
- ``data/train.jsonl``, ``data/validation.jsonl``: the exported dataset.
- ``worker.pid``: the training process's pid (written by its launcher).
- ``events.jsonl``: one JSON object per line, ``{"id", "created_at", "level", "message",
  "data"}``, appended and flushed line by line; a reader skips a last line without its newline.
- ``state.json``: ``{"status", "error", "fine_tuned_model"}``, replaced atomically.
- ``worker.log``: the process's own output (library warnings, a traceback if it crashed).
- ``adapter/``, ``merged/``, ``metrics.json``, ``README.md``: the results.

Standard library only: the training process imports this before torch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

JOB_FILE: Final = "job.json"
PID_FILE: Final = "worker.pid"
EVENTS_FILE: Final = "events.jsonl"
STATE_FILE: Final = "state.json"
LOG_FILE: Final = "worker.log"
DATA_DIR: Final = "data"
ADAPTER_DIR: Final = "adapter"
MERGED_DIR: Final = "merged"
METRICS_FILE: Final = "metrics.json"
CARD_FILE: Final = "README.md"


class TrainingFailed(Exception):
    """A failure in the training process with a message meant for the operator (no traceback
    needed). Defined here, not in ``worker``: that module runs as ``__main__``."""

    def __init__(self, message: str, code: str = "training_failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def write_json(path: Path, value: object) -> None:
    """Replace ``path`` atomically (a reader sees the old file or the new one, never half)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(partial, "w", encoding="utf-8") as file:
        json.dump(value, file, ensure_ascii=False, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# -- events ---------------------------------------------------------------------------------------


class EventLog:
    """The training process's side: append events, each flushed as one line."""

    def __init__(self, job_dir: Path) -> None:
        path = job_dir / EVENTS_FILE
        self._next = 1 + sum(1 for _ in open(path, "rb")) if path.exists() else 1
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def add(self, message: str, level: str = "info", data: dict[str, Any] | None = None) -> None:
        line = {
            "id": self._next,
            "created_at": time.time(),
            "level": level,
            "message": message,
            "data": data,
        }
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()
        self._next += 1

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True)
class RawEvent:
    id: int
    created_at: float
    level: str
    message: str
    data: dict[str, Any] | None


def read_events(job_dir: Path, offset: int = 0) -> tuple[list[RawEvent], int]:
    """The complete event lines from byte ``offset`` on, and the offset after the last one."""
    try:
        with open(job_dir / EVENTS_FILE, "rb") as file:
            file.seek(offset)
            chunk = file.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
    events = []
    for raw in chunk[:end].splitlines():
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(item, dict) or not isinstance(item.get("id"), int):
            continue
        data = item.get("data")
        created = item.get("created_at")
        events.append(
            RawEvent(
                id=item["id"],
                created_at=float(created) if isinstance(created, int | float) else time.time(),
                level=str(item.get("level") or "info"),
                message=str(item.get("message") or ""),
                data=data if isinstance(data, dict) else None,
            )
        )
    return events, offset + end


# -- the process ----------------------------------------------------------------------------------


def read_pid(job_dir: Path) -> int | None:
    try:
        text = (job_dir / PID_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_running(pid: int, job_dir: Path) -> bool:
    """Whether ``pid`` is alive and is this job's training process (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, but not ours to judge
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid
    if not cmdline:
        return False  # a zombie: exited, not yet reaped
    return str(job_dir).encode() in cmdline


def log_tail(job_dir: Path, lines: int = 1) -> str:
    """The last non-empty lines of the process's own output, for an error message."""
    try:
        with open(job_dir / LOG_FILE, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(file.tell() - 8192, 0))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:500]
