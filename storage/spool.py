"""The capture spool of a SQLite store: exchanges kept whole, in plain append-only files, until
the indexer turns them into capture rows.

Appending to the spool is the only storage work a captured request causes: the writer joins a
batch of frames and writes it with one system call. Parsing, reassembly, content-addressed
request blobs, the capture row, its tags and the full-text index are the indexer's work
(``proxy.indexer``), done in its own process at idle priority through a ``SpoolReader``.

Layout: the folder ``NAME.spool`` beside the database ``NAME`` (mode 0700), holding segment
files (mode 0600) named after the spool position where they start, in 16 hex digits
(``0000000000a00000.seg``). A position counts bytes over the whole spool, so a segment's
frames have positions ``start`` to ``start + size``. Each frame is a record header (payload
length and Adler-32 checksum of the payload, little-endian uint32 each) and the payload: an exchange
packed by ``proxy.frames``, opaque here.

Who moves what:

* The writer (``SpoolWriter``, in the proxy) only appends, to the newest segment, and starts a
  new one when that reaches ``segment_bytes`` and at every start (the last segment of a
  process killed mid-write may end in a torn frame; nothing is appended after it).
* The indexer stores a batch of captures and the position after its last frame in one
  database transaction (table ``capture_spool``), so each frame becomes a capture exactly
  once, whatever crashes when. It then deletes segments that lie wholly before that position,
  overwriting them with zeros first (as ``secure_delete`` does in the database).

A frame the indexer cannot read (a torn tail after a crash, a checksum mismatch after a power loss)
ends its segment for the reader: it skips to the next segment and reports the bytes skipped.

Durability matches the database's ``synchronous = NORMAL``: nothing is fsynced, so a process
crash loses nothing written, and a power loss may lose the last moments.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: no lock
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".spool"
SEGMENT_BYTES = 64 * 1024 * 1024
MAX_FRAME_BYTES = 1 << 31  # a header claiming more is corrupt
_HEADER = struct.Struct("<II")
_READ_CHUNK = 1024 * 1024
_ZEROS = bytes(1024 * 1024)


def spool_dir(database: str) -> str:
    """The spool folder of the SQLite database at ``database``."""
    return database + SUFFIX


def segment_name(start: int) -> str:
    return f"{start:016x}.seg"


def segments(folder: str) -> list[tuple[int, str]]:
    """(start position, path) of each segment in ``folder``, oldest first (none: empty)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem, dot, ext = name.partition(".")
        if ext == "seg" and dot and len(stem) == 16:
            with contextlib.suppress(ValueError):
                found.append((int(stem, 16), os.path.join(folder, name)))
    return sorted(found)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def end_position(folder: str) -> int:
    """The position after the last byte of the newest segment (0 for an empty spool)."""
    found = segments(folder)
    if not found:
        return 0
    start, path = found[-1]
    return start + _size(path)


def encode_frames(payloads: Sequence[bytes]) -> bytes:
    """``payloads`` as spool frames, back to back."""
    parts: list[bytes] = []
    for payload in payloads:
        parts.append(_HEADER.pack(len(payload), zlib.adler32(payload)))
        parts.append(payload)
    return b"".join(parts)


class SpoolWriteError(OSError):
    """An append failed after ``written`` of its payloads were written whole (they are in the
    spool and will be indexed); the rest were not."""

    def __init__(self, cause: OSError, written: int) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.written = written


class SpoolWriter:
    """Appends frames to a spool (synchronous; one per spool, in the proxy's process).

    ``floor``: the indexer's stored position; a new segment never starts below it, so a
    spool folder removed by hand does not make the indexer skip new frames.

    A failed write is never undone (a reader may have read its whole frames already): the
    segment is closed there, its torn tail left for the reader to skip, and the next append
    starts a new segment. ``SpoolWriteError.written`` says how many payloads made it.
    """

    def __init__(
        self,
        folder: str,
        *,
        floor: int = 0,
        segment_bytes: int = SEGMENT_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        self._clock = clock
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self._fd = -1
        self._lock = _lock(folder)
        self.end = max(end_position(folder), floor)
        self._start = self.end
        self._opened = clock()
        try:
            self._open_segment()  # a new segment seals the last one (a torn tail is skipped)
        except BaseException:
            os.close(self._lock)
            raise

    def _next_segment(self) -> None:
        """Close the current segment (if any); the next append opens a new one at ``end``."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _open_segment(self) -> None:
        path = os.path.join(self.folder, segment_name(self.end))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        if size:  # never append after bytes of an earlier process: start past them
            os.close(fd)
            self.end += size
            return self._open_segment()
        self._fd, self._start, self._opened = fd, self.end, self._clock()

    def append(self, payloads: Sequence[bytes]) -> None:
        """Write ``payloads`` as frames, in one system call when the OS allows."""
        if self._fd < 0:
            self._open_segment()
        data = encode_frames(payloads)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self._fail(exc, payloads, done)
        self.end += len(data)
        if self.end - self._start >= self.segment_bytes:
            self._next_segment()

    def _fail(self, exc: OSError, payloads: Sequence[bytes], done: int) -> NoReturn:
        """A write stopped after ``done`` bytes: seal the segment there, report what is whole."""
        written, offset = 0, 0
        for payload in payloads:
            offset += _HEADER.size + len(payload)
            if offset > done:
                break
            written += 1
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            size = self.end - self._start + done
        self.end = self._start + size  # the next segment starts after the torn tail
        self._next_segment()
        with contextlib.suppress(OSError):
            self._open_segment()  # seal the torn one now (else the next append does)
        raise SpoolWriteError(exc, written) from exc

    def rotate_if_read(
        self, stored: int, *, min_bytes: int = 1024 * 1024, max_age_s: float = 60.0
    ) -> bool:
        """Close the current segment when everything in it is stored as captures (up to
        ``stored``) and it holds ``min_bytes`` or is ``max_age_s`` old: the indexer can then
        erase it, so copies of stored captures do not linger here."""
        if self._fd < 0 or stored < self.end or self.end == self._start:
            return False
        if self.end - self._start < min_bytes and self._clock() - self._opened < max_age_s:
            return False
        self._next_segment()
        return True

    def close(self, *, erase_all: bool = False) -> None:
        """Close the spool; with ``erase_all`` (only when everything in it is stored) erase
        its files first, while still holding the lock."""
        self._next_segment()
        if erase_all:
            erase(self.folder)
        if self._lock >= 0:
            os.close(self._lock)  # releases the lock
            self._lock = -1


class SpoolBusy(OSError):
    """Another process writes to this spool (one proxy process per SQLite database)."""


def _lock(folder: str, name: str = "writer.lock", *, wait: bool = False) -> int:
    """Hold a lock in ``folder`` for as long as the returned descriptor is open."""
    fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolBusy(
                exc.errno,
                f"{folder} is in use by another process (one stillroom serve per database)",
            ) from exc
    return fd


def reader_lock(folder: str) -> int:
    """The indexer's lock (one reader per spool): waits while another indexer holds it, e.g.
    the one of a killed proxy finishing its last batch. Close the descriptor to release."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return _lock(folder, "reader.lock", wait=True)


def erase(folder: str) -> None:
    """Erase every segment (zeros first) and the folder: call only when all are stored and
    holding the writer lock (``SpoolWriter.close(erase_all=True)``)."""
    for _, path in segments(folder):
        _erase(path)
    for name in ("reader.lock", "writer.lock"):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
    with contextlib.suppress(OSError):
        os.rmdir(folder)


@dataclass(frozen=True, slots=True)
class SpoolFrame:
    """A frame read back: its payload and the spool position just after it."""

    payload: bytes
    after: int


@dataclass(slots=True)
class Skipped:
    """Bytes the reader could not read and left behind (a torn or corrupt segment end)."""

    start: int
    end: int
    why: str


class SpoolReader:
    """Reads frames from ``position`` on (synchronous; the indexer's)."""

    def __init__(self, folder: str, position: int) -> None:
        self.folder = folder
        self.position = position
        self.skipped: list[Skipped] = []

    def read(self, limit: int) -> list[SpoolFrame]:
        """Up to ``limit`` whole frames from the current position; advances past them."""
        out: list[SpoolFrame] = []
        while len(out) < limit:
            found = segments(self.folder)
            current = _segment_at(found, self.position)
            if current is None:
                return out
            index, (start, path) = current
            if self.position < start:  # segments before it were deleted unread
                self.skipped.append(Skipped(self.position, start, "missing segment"))
                self.position = start
            # Sealed (a newer segment exists): the writer finished this one before it started
            # the next, so what cannot be read now never will be.
            sealed = index + 1 < len(found)
            got = self._read_segment(path, start, limit - len(out))
            out += got
            if got and len(out) >= limit:
                return out
            # At this segment's readable end: move on only when a newer segment exists.
            if not sealed:
                return out
            end = start + _size(path)
            if self.position < end:  # the rest cannot be read, and nothing is appended to it
                self.skipped.append(Skipped(self.position, end, "unreadable end of segment"))
            self.position = found[index + 1][0]
        return out

    def _read_segment(self, path: str, start: int, limit: int) -> list[SpoolFrame]:
        out: list[SpoolFrame] = []
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return out
        with file:
            file.seek(self.position - start)
            buffer = b""
            offset = 0
            while len(out) < limit:
                if len(buffer) - offset < _HEADER.size:
                    buffer = buffer[offset:] + file.read(_READ_CHUNK)
                    offset = 0
                    if len(buffer) < _HEADER.size:
                        return out
                size, check = _HEADER.unpack_from(buffer, offset)
                if size > MAX_FRAME_BYTES:
                    return out  # corrupt: the segment ends here for us
                end = offset + _HEADER.size + size
                if end > len(buffer):
                    more = file.read(max(_READ_CHUNK, end - len(buffer)))
                    if not more:
                        return out  # not written yet (or torn)
                    buffer = buffer[offset:] + more
                    offset = 0
                    continue
                payload = buffer[offset + _HEADER.size : end]
                if zlib.adler32(payload) != check:
                    return out
                offset = end
                self.position += _HEADER.size + size
                out.append(SpoolFrame(payload, self.position))
        return out

    def peek(self) -> bytes | None:
        """The payload of the next whole frame, without moving (None when there is none)."""
        current = _segment_at(segments(self.folder), self.position)
        if current is None:
            return None
        _, (start, path) = current
        try:
            with open(path, "rb") as file:
                file.seek(max(0, self.position - start))
                header = file.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return None
                size, check = _HEADER.unpack(header)
                payload = file.read(size) if size <= MAX_FRAME_BYTES else b""
        except FileNotFoundError:
            return None
        if len(payload) != size or zlib.adler32(payload) != check:
            return None
        return payload

    def collect(self, stored: int) -> int:
        """Delete segments wholly before ``stored`` (zeroed first), except the newest; the
        number deleted."""
        found = segments(self.folder)
        deleted = 0
        for (_, path), (next_start, _) in zip(found, found[1:], strict=False):
            if next_start > stored:
                break
            _erase(path)
            deleted += 1
        return deleted


def _segment_at(found: list[tuple[int, str]], position: int) -> tuple[int, tuple[int, str]] | None:
    """The segment holding ``position`` (or the first after it); None when there is none."""
    for index, (start, path) in enumerate(found):
        following = found[index + 1][0] if index + 1 < len(found) else None
        if following is None or position < following:
            return index, (start, path)
    return None


def _erase(path: str) -> None:
    """Overwrite a file with zeros, then delete it."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        left = os.fstat(fd).st_size
        while left > 0:
            left -= os.write(fd, _ZEROS[: min(left, len(_ZEROS))])
        os.fsync(fd)  # the zeros reach the disk before the name goes
    finally:
        os.close(fd)
    os.unlink(path)


# -- the stored position -----------------------------------------------------------------------


def stored_position(conn: sqlite3.Connection) -> int:
    """The position up to which the spool's frames are stored as captures."""
    row = conn.execute("SELECT position FROM capture_spool WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def store_position(conn: sqlite3.Connection, position: int) -> None:
    """Record ``position`` (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO capture_spool (id, position) VALUES (1, ?) "
        "ON CONFLICT (id) DO UPDATE SET position = excluded.position",
        (position,),
    )


def _stored_position_of(database: str) -> int | None:
    """The stored position of ``database``'s spool, None when it has no spool to read."""
    if not segments(spool_dir(database)) or not os.path.exists(database):
        return None
    conn = sqlite3.connect(database)
    try:
        return stored_position(conn)
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        conn.close()


def waiting_bytes(database: str) -> int:
    """Spooled bytes of ``database`` not yet stored as captures (0 when it has no spool)."""
    position = _stored_position_of(database)
    if position is None:
        return 0
    return max(0, end_position(spool_dir(database)) - position)


def waiting(database: str) -> Iterator[bytes]:
    """Payloads of the frames in ``database``'s spool not yet stored as captures."""
    position = _stored_position_of(database)
    if position is None:
        return
    reader = SpoolReader(spool_dir(database), position)
    while batch := reader.read(1000):
        for frame in batch:
            yield frame.payload
