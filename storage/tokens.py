"""Token counts for training examples, offline (tiktoken with encodings shipped in the repo).

``count_example(messages, tools, model)`` follows OpenAI's cookbook method
(``../shared/reference/openai-api.md`` §6.8): 3 tokens per message, +1 with a ``name``, +3
priming tokens per example, plus the encoded text of every string value (``role`` included, as
in the cookbook). What the cookbook leaves out is counted like this:

- ``content`` as a list of parts: the text of ``text`` (and ``refusal``) parts, plus a fixed
  ``IMAGE_PART_TOKENS`` (85, the price of a low-detail image) per image part; other parts
  (audio, files) count nothing;
- assistant ``tool_calls`` (and the legacy ``function_call``): the function name and the
  arguments text of each call;
- ``tools``: their JSON text (``orjson.dumps``), once per example.

Text is encoded with ``encode_ordinary``, so special-token text such as ``<|endoftext|>`` in a
message is counted as the ordinary text it is and never raises. It is an estimate of what a
trainer bills, not the exact rendering of any chat template.

``o200k_base`` for gpt-4o / gpt-4.1 / gpt-4.5 / gpt-5 / o-series and unknown models,
``cl100k_base`` for gpt-4 / gpt-3.5 and the embedding models. Encodings load once per process,
lazily (never at import), from ``storage/encodings/*.tiktoken.gz`` shipped with the package
(built by ``scripts/encodings.py``); the sha256 of the decompressed file is checked against
tiktoken's published hash before use, and nothing is ever downloaded. Counts of repeated texts
(system prompts, tool definitions, shared conversation history) are memoised in a small bounded
cache, so the cost of an example is mostly the cost of its new text; new ASCII text is cut into
tiktoken's pieces by an equivalent ASCII regex and each piece's count is memoised too
(``storage._token_pieces``), which gives tiktoken's count at about half its cost.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import threading
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import orjson
import tiktoken

from storage._token_pieces import PieceCounter

IMAGE_PART_TOKENS = 85
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
PRIMING_TOKENS = 3

# Texts up to this many characters have their counts memoised (at most _CACHE_ENTRIES of them:
# a few MB), which is what makes repeated system prompts and tool lists nearly free.
_CACHE_ENTRIES = 2048
_CACHE_MAX_CHARS = 16_384

_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "chatgpt-4o",
    "o1",
    "o3",
    "o4",
    "gpt-oss",
)
_CL100K_PREFIXES = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3",
    "text-embedding-ada-002",
    "davinci-002",
    "babbage-002",
)


class EncodingFileError(Exception):
    """A shipped encoding file is missing, unreadable, or not the one tiktoken publishes."""


@dataclass(frozen=True)
class EncodingSpec:
    """What tiktoken's ``tiktoken_ext.openai_public`` says about one encoding."""

    name: str
    sha256: str  # of the uncompressed ``.tiktoken`` file, tiktoken's ``expected_hash``
    pat_str: str
    special_tokens: dict[str, int]


SPECS: dict[str, EncodingSpec] = {
    "o200k_base": EncodingSpec(
        name="o200k_base",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": EncodingSpec(
        name="cl100k_base",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}


def encoding_file(name: str) -> Traversable:
    """The shipped, gzip-compressed ``.tiktoken`` file of encoding ``name``."""
    return resources.files("storage").joinpath("encodings", f"{name}.tiktoken.gz")


def load_encoding(name: str, source: Traversable | Path | None = None) -> tiktoken.Encoding:
    """Build encoding ``name`` from ``source`` (default: the shipped file), uncached.

    Raises ``EncodingFileError`` unless the decompressed file has tiktoken's published sha256.
    """
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoding {name!r}; shipped: {', '.join(SPECS)}")
    path = encoding_file(name) if source is None else source
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise EncodingFileError(f"cannot read encoding file {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise EncodingFileError(
            f"encoding file {path} is not tiktoken's {name}: sha256 {digest}, expected "
            f"{spec.sha256}; rebuild it with scripts/encodings.py"
        )
    # Line by line, not data.splitlines(): a list of every line would add ~10 MB to the peak.
    ranks = {
        base64.b64decode(token): int(rank) for token, rank in map(bytes.split, io.BytesIO(data))
    }
    del data
    encoding = tiktoken.Encoding(
        name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
    )
    # The encoder built its own tables from ``ranks``; the Python dict (kept by tiktoken only
    # to pickle the encoding, which we never do) would hold another 26 MB for o200k_base.
    ranks.clear()
    return encoding


_loaded: dict[str, tiktoken.Encoding] = {}
_load_lock = threading.Lock()


def get_encoding(name: str) -> tiktoken.Encoding:
    """Encoding ``name``, loaded on first use and then shared by the whole process."""
    encoding = _loaded.get(name)
    if encoding is None:
        with _load_lock:
            encoding = _loaded.get(name)
            if encoding is None:
                encoding = _loaded[name] = load_encoding(name)
    return encoding


@functools.lru_cache(maxsize=256)
def encoding_name(model: str | None) -> str:
    """The shipped encoding that model ``model`` uses (``o200k_base`` when unknown)."""
    if not model:
        return "o200k_base"
    base = model.strip().lower().removeprefix("ft:").rsplit("/", 1)[-1]
    if base.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if base.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def count_text(text: str, model: str | None = None) -> int:
    return _count(encoding_name(model), text)


def count_example(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, model: str | None
) -> int:
    """Tokens of a whole training example: its messages, primed, plus its tool definitions."""
    name = encoding_name(model)
    total = PRIMING_TOKENS
    for message in messages:
        total += _count_message(name, message)
    if tools:
        total += _count(name, orjson.dumps(tools).decode())
    return total


def example_tokens(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, model: str | None
) -> tuple[int, int]:
    """``(count_example(...), count_answer(messages[-1], ...))`` in one pass over the messages
    (the dataset builder needs both for every capture)."""
    name = encoding_name(model)
    total = PRIMING_TOKENS
    answer = 0
    for message in messages:
        answer = _count_message(name, message)
        total += answer
    if tools:
        total += _count(name, orjson.dumps(tools).decode())
    return total, answer


def count_answer(message: dict[str, Any], model: str | None) -> int:
    """Tokens of the trained answer alone (assistant-token statistics)."""
    return _count_message(encoding_name(model), message)


def _count_message(name: str, message: dict[str, Any]) -> int:
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if isinstance(value, str):
            total += _count(name, value)
            if key == "name":
                total += TOKENS_PER_NAME
        elif key == "content" and isinstance(value, list):
            total += _count_parts(name, value)
        elif key == "tool_calls" and isinstance(value, list):
            for call in value:
                if isinstance(call, dict):
                    total += _count_call(name, call.get("function") or call.get("custom"))
        elif key == "function_call":
            total += _count_call(name, value)
    return total


def _count_parts(name: str, parts: list[Any]) -> int:
    total = 0
    for part in parts:
        if isinstance(part, str):
            total += _count(name, part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind in ("image_url", "input_image"):
                total += IMAGE_PART_TOKENS
            elif kind in ("text", "refusal") and isinstance(text := part.get(kind), str):
                total += _count(name, text)
    return total


def _count_call(name: str, function: Any) -> int:
    if not isinstance(function, dict):
        return 0
    total = 0
    for key in ("name", "arguments", "input"):
        value = function.get(key)
        if isinstance(value, str):
            total += _count(name, value)
        elif value is not None:
            total += _count(name, orjson.dumps(value).decode())
    return total


def _count(name: str, text: str) -> int:
    if not text:
        return 0
    if len(text) > _CACHE_MAX_CHARS:
        return piece_counter(name)(text)
    return _count_cached(name, text)


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _count_cached(name: str, text: str) -> int:
    return piece_counter(name)(text)


_counters: dict[str, PieceCounter] = {}


def piece_counter(name: str) -> PieceCounter:
    """``len(get_encoding(name).encode_ordinary(text))`` as a function of ``text``, memoising
    the count of each piece of ASCII text (``storage._token_pieces``); one per process."""
    counter = _counters.get(name)
    if counter is None:
        counter = _counters.setdefault(name, PieceCounter(get_encoding(name)))
    return counter
