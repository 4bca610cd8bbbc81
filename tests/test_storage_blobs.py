"""Request segmentation and manifests: the body is always rebuilt byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from storage._blobs import (
    CODEC_DEFLATE,
    CODEC_RAW,
    build_manifest,
    compress,
    decompress,
    manifest_digests,
    rebuild_body,
    split_segments,
)


@given(
    st.lists(
        st.sampled_from(
            [b'{"role"', b'{ "type"', b'"tools":', b"x" * 70, b"y" * 600, b"\n", b"{", b"\x00\x01"]
        )
    )
)
def test_segments_and_manifests_always_rebuild_the_body(parts: list[bytes]) -> None:
    body = b"".join(parts)
    segments = split_segments(body)
    assert b"".join(segments) == body
    assert all(segments)
    blobs: dict[bytes, bytes] = {}
    manifest, digests = build_manifest(body, blobs)
    assert manifest_digests(manifest) == digests
    assert set(digests) == set(blobs)
    assert rebuild_body(manifest, blobs) == body


def test_a_shared_system_prompt_gives_the_same_blob() -> None:
    system = b'{"role":"system","content":"' + b"be precise " * 100 + b'"}'
    first = b'{"model":"m","messages":[' + system + b',{"role":"user","content":"a"}]}'
    second = b'{"model":"m","messages":[' + system + b',{"role":"user","content":"b?"}]}'
    one: dict[bytes, bytes] = {}
    two: dict[bytes, bytes] = {}
    _, digests_one = build_manifest(first, one)
    _, digests_two = build_manifest(second, two)
    assert digests_one == digests_two and len(digests_one) == 1
    assert one == two


def test_compression_only_when_it_pays() -> None:
    assert compress(b"short") == (CODEC_RAW, b"short")
    text = b"the same words again " * 400
    codec, packed = compress(text)
    assert codec == CODEC_DEFLATE and len(packed) < len(text) // 5
    assert decompress(codec, packed) == text


def _boundaries_by_find(body: bytes) -> list[int]:
    """The find-loop cut finder the regular expressions replaced (the reference)."""
    found: list[int] = []
    for key in (b'"role"', b'"type"', b'"content"'):
        at = body.find(key)
        while at >= 0:
            brace = at - 1
            while brace >= 0 and body[brace] in b" \t\r\n":
                brace -= 1
            if brace >= 0 and body[brace] == ord("{"):
                found.append(brace)
            at = body.find(key, at + 1)
    for key in (b'"instructions"', b'"tools"', b'"input"'):
        at = body.find(key)
        while at >= 0:
            found.append(at)
            at = body.find(key, at + 1)
    found.sort()
    return found


_CUT_PIECES = [
    b"{",
    b"}",
    b'"',
    b" ",
    b"\t",
    b"\r\n",
    b"\\",
    b"role",
    b"type",
    b"content",
    b"tools",
    b"input",
    b"instructions",
    b'"role"',
    b'{"type"',
    b'{ \n "content"',
    b'"tools"',
    b'"input"',
    b'"instructions"',
    b":",
    b"x" * 130,
]


@given(st.lists(st.sampled_from(_CUT_PIECES), max_size=40))
def test_cut_points_equal_the_find_loop(parts: list[bytes]) -> None:
    from storage._blobs import _boundaries

    body = b"".join(parts)
    assert _boundaries(body) == _boundaries_by_find(body)


def test_cut_points_on_keys_sharing_quotes_and_braces() -> None:
    from storage._blobs import _boundaries

    for body in (
        b'"tools"input"instructions"',
        b'{"role"type"content"',
        b'{{ "role"{\t"type"',
        b'{  "tools"',
        b'x{"content" {"input"',
        b"",
    ):
        assert _boundaries(body) == _boundaries_by_find(body), body
