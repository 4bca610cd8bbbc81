"""Content-addressed request bodies and blob compression (private to the SQLite store).

A request body is cut into segments at cheap-to-find JSON boundaries: the start of a message
or content part (``{"role"``, ``{"type"``, ``{"content"``) and a few top-level keys that carry
long repeated text (``"instructions"``, ``"tools"``, ``"input"``). The same system prompt, tool
list or conversation prefix therefore yields the same segments call after call.

Segments of ``DEDUPE_MIN`` bytes or more are stored once each, in ``blobs``, keyed by their
BLAKE2b-128 digest; shorter runs stay inline, where a blob row would cost more than it saves.
A capture keeps its body as a *manifest*: the ordered parts, each either a digest or inline
bytes. Segments are contiguous slices covering the whole body, so the body is rebuilt byte for
byte whatever the cut points: they only decide how much is shared, never what is stored.
"""

from __future__ import annotations

import hashlib
import re
import zlib

HASH_SIZE = 16  # BLAKE2b-128 digest of a segment
MIN_SEGMENT = 128  # a cut is skipped when the segment it would end is shorter than this
DEDUPE_MIN = 512  # shorter segments stay inline in the manifest

_PART_BLOB = 0  # manifest entry: 0x00, then a 16-byte digest
_PART_INLINE = 1  # manifest entry: 0x01, a 4-byte big-endian length, then that many bytes

CODEC_RAW = 0
CODEC_DEFLATE = 1  # raw deflate (zlib without header or checksum), level 1
# Deflate costs ~10 µs of setup plus ~15 µs per KiB on the 2-core dev box: compressing every
# 0.5-2 KiB message and JSON response cut write throughput by ~40 % (bench/writer_throughput.py)
# for ~25 % less disk.
# Large data (SSE transcripts, long documents, big tool lists) compresses 3-10x and carries
# most of the bytes, so only that is compressed.
COMPRESS_MIN = 4096
_KEEP_RATIO = 0.9  # keep compressed data only when it saves at least 10 %
_MEDIUM = 32 * 1024  # up to this size a 16 KiB window and a smaller hash table: faster setup

_MESSAGE_KEYS = (b'"role"', b'"type"', b'"content"')  # cut at the "{" that opens them
_TOP_KEYS = (b'"instructions"', b'"tools"', b'"input"')  # cut at the key itself
# One C-level scan per kind of cut instead of a bytes.find() loop per key (six full scans of
# the body when the keys are absent, the common case for the top-level ones).
# A message key counts when only JSON whitespace separates it from a "{" before it: the match
# starts at that brace. Each brace opens at most one such key, and each key has one such brace.
_MESSAGE_CUT = re.compile(rb"\{[ \t\r\n]*(?=" + b"|".join(map(re.escape, _MESSAGE_KEYS)) + b")")
# A top-level key counts wherever it occurs; only its opening quote is consumed, so keys that
# share a quote ('"tools"input"') are all found, as by the find loop.
_TOP_CUT = re.compile(b'"(?=' + b"|".join(re.escape(key[1:]) for key in _TOP_KEYS) + b")")


def _boundaries(body: bytes) -> list[int]:
    found = [match.start() for match in _MESSAGE_CUT.finditer(body)]
    top = [match.start() for match in _TOP_CUT.finditer(body)]
    if top:  # a brace and a quote never share a position: no duplicates
        found += top
        found.sort()
    return found


def split_segments(body: bytes) -> list[bytes]:
    """Cut ``body`` into contiguous segments at message boundaries (see the module doc)."""
    cuts: list[int] = []
    last = 0
    for start in _boundaries(body):
        # The first cut always happens, so the short envelope before the first message
        # (model name, options) never glues itself to the system prompt.
        if start - last >= MIN_SEGMENT or (not cuts and start > 0):
            cuts.append(start)
            last = start
    if not cuts:
        return [body] if body else []
    segments = [body[: cuts[0]]]
    segments.extend(body[a:b] for a, b in zip(cuts, cuts[1:], strict=False))
    segments.append(body[cuts[-1] :])
    return segments


def segment_hash(segment: bytes) -> bytes:
    return hashlib.blake2b(segment, digest_size=HASH_SIZE).digest()


_BLOB_TAG = bytes((_PART_BLOB,))
_INLINE_TAG = bytes((_PART_INLINE,))


def _inline(part: bytes) -> bytes:
    return _INLINE_TAG + len(part).to_bytes(4, "big") + part


def build_manifest(body: bytes, blobs: dict[bytes, bytes]) -> tuple[bytes, list[bytes]]:
    """Return ``(manifest, digests)`` for ``body``; add its large segments to ``blobs``.

    ``digests`` lists the blob parts in body order (a repeated segment appears twice).
    """
    manifest = bytearray()
    digests: list[bytes] = []
    inline_from = 0  # adjacent short segments form one inline part
    at = 0
    for segment in split_segments(body):
        if len(segment) >= DEDUPE_MIN:
            if at > inline_from:
                manifest += _inline(body[inline_from:at])
            digest = segment_hash(segment)
            blobs.setdefault(digest, segment)
            digests.append(digest)
            manifest += _BLOB_TAG
            manifest += digest
            inline_from = at + len(segment)
        at += len(segment)
    if at > inline_from:
        manifest += _inline(body[inline_from:at])
    return bytes(manifest), digests


def manifest_digests(manifest: bytes) -> list[bytes]:
    """The blob digests a manifest refers to, in order."""
    return [part for is_blob, part in _parts(manifest) if is_blob]


def rebuild_body(manifest: bytes, blobs: dict[bytes, bytes]) -> bytes:
    """The body a manifest describes; ``blobs`` maps each digest to its segment."""
    return b"".join(blobs[part] if is_blob else part for is_blob, part in _parts(manifest))


def _parts(manifest: bytes) -> list[tuple[bool, bytes]]:
    parts: list[tuple[bool, bytes]] = []
    at, end = 0, len(manifest)
    while at < end:
        kind = manifest[at]
        if kind == _PART_BLOB:
            parts.append((True, manifest[at + 1 : at + 1 + HASH_SIZE]))
            at += 1 + HASH_SIZE
        elif kind == _PART_INLINE:
            size = int.from_bytes(manifest[at + 1 : at + 5], "big")
            parts.append((False, manifest[at + 5 : at + 5 + size]))
            at += 5 + size
        else:
            raise ValueError(f"bad request manifest entry {kind} at {at}")
    if at != end:
        raise ValueError("truncated request manifest")
    return parts


def compress(data: bytes) -> tuple[int, bytes]:
    """Return ``(codec, stored_bytes)``: raw deflate when it is worth it, else the data as is."""
    size = len(data)
    if size < COMPRESS_MIN:
        return CODEC_RAW, data
    if size <= _MEDIUM:
        packer = zlib.compressobj(1, zlib.DEFLATED, -14, 6)
    else:
        packer = zlib.compressobj(1, zlib.DEFLATED, -15, 8)
    packed = packer.compress(data) + packer.flush()
    if len(packed) <= size * _KEEP_RATIO:
        return CODEC_DEFLATE, packed
    return CODEC_RAW, data


def decompress(codec: int, data: bytes) -> bytes:
    if codec == CODEC_RAW:
        return data
    if codec == CODEC_DEFLATE:
        return zlib.decompress(data, -15)
    raise ValueError(f"unknown blob codec {codec}")
