"""The capture spool: append-only segment files, read back whole, torn and corrupt ends skipped,
stored segments erased (storage.spool)."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import spool
from storage.spool import SpoolReader, SpoolWriter


def read_all(reader: SpoolReader, limit: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while batch := reader.read(limit):
        out += [frame.payload for frame in batch]
    return out


def test_frames_come_back_in_order_across_segments(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder, segment_bytes=1000)
    payloads = [bytes([i]) * (50 + i) for i in range(60)]
    for start in range(0, 60, 7):
        writer.append(payloads[start : start + 7])
    assert len(spool.segments(folder)) > 3
    assert spool.end_position(folder) == writer.end
    reader = SpoolReader(folder, 0)
    got: list[bytes] = []
    positions: list[int] = []
    while batch := reader.read(5):
        got += [frame.payload for frame in batch]
        positions += [frame.after for frame in batch]
    assert got == payloads
    assert positions == sorted(positions) and positions[-1] == writer.end == reader.position
    assert reader.skipped == []
    writer.close()


def test_a_reader_resumes_from_a_stored_position(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder, segment_bytes=300)
    payloads = [b"x%03d" % i * 10 for i in range(30)]
    writer.append(payloads)
    first = SpoolReader(folder, 0).read(12)
    resumed = SpoolReader(folder, first[-1].after)
    assert read_all(resumed) == payloads[12:]


def test_a_new_writer_starts_a_new_segment_never_below_the_floor(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    old = SpoolWriter(folder)
    old.append([b"a" * 10])
    old.close()
    again = SpoolWriter(folder)  # a new segment at once: the last one is sealed
    assert [start for start, _ in spool.segments(folder)] == [0, old.end]
    again.close()
    jumped = SpoolWriter(folder, floor=10_000)  # the spool was removed by hand, the db was not
    assert jumped.end == 10_000
    jumped.append([b"b"])
    assert read_all(SpoolReader(folder, 10_000)) == [b"b"]


def test_a_frame_being_written_is_waited_for(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder)
    writer.append([b"one"])
    data = spool.encode_frames([b"two-two"])
    path = spool.segments(folder)[-1][1]
    with open(path, "ab") as file:  # half a frame, as a reader may see mid-write
        file.write(data[:5])
    reader = SpoolReader(folder, 0)
    assert [f.payload for f in reader.read(10)] == [b"one"]
    assert reader.read(10) == [] and reader.skipped == []
    with open(path, "ab") as file:
        file.write(data[5:])
    assert [f.payload for f in reader.read(10)] == [b"two-two"]


@pytest.mark.parametrize("damage", ["torn", "checksum", "length"])
def test_an_unreadable_end_of_a_sealed_segment_is_skipped_and_reported(
    tmp_path: Path, damage: str
) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder)
    writer.append([b"good", b"lost-frame"])
    writer.close()
    path = spool.segments(folder)[-1][1]
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        if damage == "torn":  # a process killed mid-write
            file.truncate(size - 3)
        elif damage == "checksum":  # garbage after a power loss
            file.seek(size - 1)
            file.write(b"?")
        else:
            file.seek(len(spool.encode_frames([b"good"])))
            file.write((2**31 + 5).to_bytes(4, "little"))
    after = SpoolWriter(folder)  # the next start: a new segment
    after.append([b"next"])
    reader = SpoolReader(folder, 0)
    assert read_all(reader) == [b"good", b"next"]
    [gap] = reader.skipped
    assert gap.start == len(spool.encode_frames([b"good"]))
    assert gap.end == spool.segments(folder)[-1][0]


def test_a_failed_append_keeps_its_whole_frames_and_seals_the_torn_one(
    tmp_path: Path, monkeypatch
) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder)
    writer.append([b"kept"])
    real_write = os.write
    calls = []

    def part_then_full(fd: int, data) -> int:
        calls.append(1)
        if len(calls) == 1:  # the first frame whole, the second cut
            return real_write(fd, bytes(data[:1500]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool.os, "write", part_then_full)
    with pytest.raises(spool.SpoolWriteError) as failed:
        writer.append([b"x" * 1000, b"y" * 1000])
    monkeypatch.undo()
    assert failed.value.written == 1 and failed.value.errno == errno.ENOSPC
    writer.append([b"after"])  # in a new segment, after the torn tail
    reader = SpoolReader(folder, 0)
    assert read_all(reader) == [b"kept", b"x" * 1000, b"after"]
    [gap] = reader.skipped
    assert gap.end - gap.start == 1500 - (8 + 1000)


def test_a_segment_that_cannot_be_opened_is_tried_again(tmp_path: Path, monkeypatch) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder, segment_bytes=10)  # every append fills a segment
    writer.append([b"first"])
    real_open = os.open
    fail = [True]

    def out_of_descriptors(path, *args, **kwargs):
        if fail[0] and str(path).endswith(".seg"):
            fail[0] = False
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(spool.os, "open", out_of_descriptors)
    with pytest.raises(OSError):
        writer.append([b"lost: nothing was written"])
    writer.append([b"second"])
    monkeypatch.undo()
    assert read_all(SpoolReader(folder, 0)) == [b"first", b"second"]


def test_stored_segments_are_erased_but_never_the_newest(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder, segment_bytes=100)
    writer.append([b"a" * 120])
    writer.append([b"b" * 120])
    writer.append([b"c" * 10])
    starts = [start for start, _ in spool.segments(folder)]
    assert len(starts) == 3
    reader = SpoolReader(folder, 0)
    assert reader.collect(starts[1]) == 1  # the first segment is wholly stored
    assert [start for start, _ in spool.segments(folder)] == starts[1:]
    assert reader.collect(writer.end) == 1  # the newest stays, even when all is stored
    assert [start for start, _ in spool.segments(folder)] == starts[2:]


def test_a_read_segment_is_closed_early_so_it_can_be_erased(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    now = [0.0]
    writer = SpoolWriter(folder, clock=lambda: now[0])
    writer.append([b"z" * 100])
    assert not writer.rotate_if_read(writer.end - 1, min_bytes=50)  # not all read yet
    assert not writer.rotate_if_read(writer.end, min_bytes=1000)  # too small, too young
    now[0] = 61.0
    assert writer.rotate_if_read(writer.end, min_bytes=1000)  # small but old
    assert not writer.rotate_if_read(writer.end)  # nothing in the next one yet
    writer.append([b"w" * 100])
    assert writer.rotate_if_read(writer.end, min_bytes=50)  # big enough
    writer.append([b"v"])
    assert len(spool.segments(folder)) == 3
    assert SpoolReader(folder, 0).collect(writer.end) == 2


def test_erase_zeroes_then_removes(tmp_path: Path, monkeypatch) -> None:
    folder = str(tmp_path / "db.spool")
    writer = SpoolWriter(folder)
    writer.append([b"secret-ish prompt text"])
    writer.close()
    path = spool.segments(folder)[0][1]
    seen: list[bytes] = []
    real_unlink = os.unlink

    def look_then_unlink(target: str) -> None:
        seen.append(Path(target).read_bytes())
        real_unlink(target)

    monkeypatch.setattr(spool.os, "unlink", look_then_unlink)
    SpoolWriter(folder).close(erase_all=True)
    assert seen and set(seen[0]) == {0}
    assert not os.path.exists(path) and not os.path.exists(folder)


def test_files_are_private(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    SpoolWriter(folder).append([b"p"])
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert os.stat(spool.segments(folder)[0][1]).st_mode & 0o777 == 0o600


def test_waiting_reads_past_the_stored_position(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE capture_spool (id INTEGER PRIMARY KEY, position INTEGER)")
    writer = SpoolWriter(spool.spool_dir(db))
    writer.append([b"stored"])
    stored = writer.end
    writer.append([b"waits", b"too"])
    with sqlite3.connect(db) as conn:
        spool.store_position(conn, stored)
    assert list(spool.waiting(db)) == [b"waits", b"too"]
    assert spool.waiting_bytes(db) == writer.end - stored


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=0, max_size=40),
    batch=st.integers(1, 9),
    segment=st.integers(64, 2000),
    limit=st.integers(1, 12),
)
def test_any_appends_read_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], batch: int, segment: int, limit: int
) -> None:
    folder = str(tmp_path_factory.mktemp("spool") / "db.spool")
    writer = SpoolWriter(folder, segment_bytes=segment)
    payloads = [os.urandom(n) for n in sizes]
    for start in range(0, len(payloads), batch):
        writer.append(payloads[start : start + batch])
    reader = SpoolReader(folder, 0)
    assert read_all(reader, limit) == payloads
    assert reader.position == writer.end and reader.skipped == []


def test_one_writer_per_spool(tmp_path: Path) -> None:
    folder = str(tmp_path / "db.spool")
    first = SpoolWriter(folder)
    with pytest.raises(spool.SpoolBusy, match="one stillroom serve per database"):
        SpoolWriter(folder)
    first.close()
    SpoolWriter(folder).close()  # free again once the first is closed
