"""Token counts of ASCII text, as tiktoken counts them but with the per-piece work memoised
(private to ``storage.tokens``).

tiktoken encodes a text in two steps: the encoding's regex (``pat_str``) cuts the text into
pieces, and each piece is byte-pair-encoded on its own (a piece in the vocabulary is one
token). So a text's count is the sum of its pieces' counts, and a piece always has the same
count wherever it occurs. Words repeat, so ``PieceCounter`` remembers the count of each piece it
has met (a bounded memo) and most of the byte-pair work becomes a dict lookup.

The regex is the other half of the cost. tiktoken's runs in Rust with Unicode classes; on text
that is all ASCII those classes are plain ASCII ranges, and Python's ``re`` (possessive
quantifiers since 3.11) cuts the same pieces for about a quarter of the whole tiktoken call
(``bench/dataset_parts.py``, a 40-word answer: the regex 6.1 µs, the whole count 9.4 µs,
tiktoken 22.6 µs). ``ASCII_PATTERNS`` holds that ASCII form of each shipped encoding's
pattern, written from it term by term:

* ``\\p{L}`` is ``A-Za-z``; ``\\p{Lu}`` is ``A-Z`` and ``\\p{Ll}`` is ``a-z``; ``\\p{Lt}``,
  ``\\p{Lm}``, ``\\p{Lo}`` and ``\\p{M}`` hold no ASCII character; ``\\p{N}`` is ``0-9``;
* ``\\s`` is Unicode ``White_Space``: tab, line feed, vertical tab, form feed, carriage return
  and space (not ``\\x1c``-``\\x1f``, which Python's own ``\\s`` would take);
* ``$`` (end of the text in Rust's regex) is ``\\Z`` (Python's ``$`` also matches before a
  final line feed).

``tests/test_tokens.py`` checks the counts against tiktoken's own on generated ASCII text (every
character class and the joins between them) and on the repository's text. Any text with a
non-ASCII character, or an encoding not in ``ASCII_PATTERNS``, is counted by tiktoken
unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import tiktoken

_W = r" \t\n\x0b\x0c\r"  # Unicode White_Space within ASCII
_S = rf"[{_W}]"
_NOT_S = rf"[^{_W}]"

# Encoding name -> the ASCII form of its pattern (``storage.tokens.SPECS`` holds the pattern
# itself, checked against tiktoken_ext there), term by term in the pattern's own order.
ASCII_PATTERNS: dict[str, str] = {
    # [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|…)?
    # | …[\p{Lu}…]+[\p{Ll}…]*(?i:'s|…)? | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n/]* | \s*[\r\n]+
    # | \s+(?!\S) | \s+
    "o200k_base": "|".join(
        [
            r"[^\r\nA-Za-z0-9]?[A-Z]*[a-z]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[^\r\nA-Za-z0-9]?[A-Z]+[a-z]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[0-9]{1,3}",
            rf" ?[^{_W}A-Za-z0-9]+[\r\n/]*",
            rf"{_S}*[\r\n]+",
            rf"{_S}+(?!{_NOT_S})",
            rf"{_S}+",
        ]
    ),
    # '(?i:[sdmt]|ll|ve|re) | [^\r\n\p{L}\p{N}]?+\p{L}++ | \p{N}{1,3}+ | ?[^\s\p{L}\p{N}]++[\r\n]*+
    # | \s++$ | \s*[\r\n] | \s+(?!\S) | \s
    "cl100k_base": "|".join(
        [
            r"'(?i:[sdmt]|ll|ve|re)",
            r"[^\r\nA-Za-z0-9]?+[A-Za-z]++",
            r"[0-9]{1,3}+",
            rf" ?[^{_W}A-Za-z0-9]++[\r\n]*+",
            rf"{_S}++\Z",
            rf"{_S}*[\r\n]",
            rf"{_S}+(?!{_NOT_S})",
            _S,
        ]
    ),
}

# Pieces whose counts are remembered, per encoding: 60-150 bytes each (a word: ~80), so at
# most ~8 MB per encoding (measured with 64-character pieces). When full the memo starts again
# (cheaper than an LRU's bookkeeping on every hit). Longer pieces (a run of spaces or
# punctuation) are rare and counted each time.
MEMO_PIECES = 50_000
MEMO_PIECE_CHARS = 64


class PieceCounter:
    """``len(encoding.encode_ordinary(text))``, faster on ASCII text (see the module)."""

    def __init__(self, encoding: tiktoken.Encoding, memo_pieces: int = MEMO_PIECES) -> None:
        self._encoding = encoding
        self._memo: dict[str, int] = {}
        self._memo_pieces = memo_pieces
        pattern = ASCII_PATTERNS.get(encoding.name)
        # tiktoken's byte-pair step for one piece (its encode_ordinary does the same per piece)
        self._piece: Callable[[bytes], list[int]] | None = getattr(
            encoding._core_bpe, "encode_single_piece", None
        )
        self._findall = re.compile(pattern).findall if pattern and self._piece else None

    def __call__(self, text: str) -> int:
        findall = self._findall
        if findall is None or not text.isascii():
            return len(self._encoding.encode_ordinary(text))
        pieces: list[str] = findall(text)
        try:
            return sum(map(self._memo.__getitem__, pieces))
        except KeyError:
            return self._count_new(pieces)

    def _count_new(self, pieces: list[str]) -> int:
        memo, piece_tokens = self._memo, self._piece
        assert piece_tokens is not None
        total = 0
        for piece in pieces:
            count = memo.get(piece)
            if count is None:
                count = len(piece_tokens(piece.encode()))
                if len(piece) <= MEMO_PIECE_CHARS:
                    if len(memo) >= self._memo_pieces:
                        memo.clear()
                    memo[piece] = count
            total += count
        return total
