"""Token counts: tiktoken's documented examples, the cookbook method, and the offline encodings."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import threading
from itertools import chain, product
from pathlib import Path
from unittest import mock

import orjson
import pytest
import tiktoken.load
import tiktoken.model
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public

from storage import tokens
from storage._token_pieces import ASCII_PATTERNS, PieceCounter
from storage.tokens import (
    EncodingFileError,
    count_answer,
    count_example,
    count_text,
    encoding_name,
    example_tokens,
    get_encoding,
    load_encoding,
)

# The example of OpenAI's "How to count tokens with tiktoken" cookbook, which reports 129
# prompt tokens for gpt-3.5-turbo / gpt-4 and 124 for gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.fixture
def fresh_tokens(monkeypatch: pytest.MonkeyPatch):
    """Nothing loaded or memoised yet, as in a new process."""
    monkeypatch.setattr(tokens, "_loaded", {})
    monkeypatch.setattr(tokens, "_counters", {})
    tokens._count_cached.cache_clear()
    yield
    tokens._count_cached.cache_clear()


def test_documented_token_ids():
    assert get_encoding("cl100k_base").encode("tiktoken is great!") == [
        83,
        1609,
        5963,
        374,
        2294,
        0,
    ]
    word = "antidisestablishmentarianism"
    assert get_encoding("cl100k_base").encode(word) == [519, 85342, 34500, 479, 8997, 2191]
    assert get_encoding("o200k_base").encode(word) == [493, 129901, 376, 160388, 21203, 2367]


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_known_string_counts(model):
    assert count_text("hello world", model) == 2
    assert count_text("", model) == 0


def test_tiktoken_is_great_is_six_tokens_in_cl100k():
    assert count_text("tiktoken is great!", "gpt-4") == 6


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_example(model, expected):
    assert count_example(COOKBOOK_MESSAGES, None, model) == expected


def test_small_example_by_hand():
    # "user", "assistant" and "hello world" are 1, 1 and 2 tokens (asserted, then added up).
    assert [count_text(t) for t in ("user", "assistant", "hello world")] == [1, 1, 2]
    messages = [
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "hello world"},
    ]
    # priming 3 + (3 per message + role 1 + content 2) * 2
    assert count_example(messages, None, "gpt-4o") == 3 + (3 + 1 + 2) * 2 == 15
    assert count_answer(messages[1], "gpt-4o") == 3 + 1 + 2
    assert example_tokens(messages, None, "gpt-4o") == (15, 6)


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o"])
def test_example_tokens_is_both_counts_in_one_pass(model):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    answer = {"role": "assistant", "content": "Things working well together."}
    for messages in ([*COOKBOOK_MESSAGES, answer], [answer]):
        assert example_tokens(messages, tools, model) == (
            count_example(messages, tools, model),
            count_answer(answer, model),
        )


def test_name_adds_its_text_and_one():
    plain = {"role": "user", "content": "hello world"}
    named = {**plain, "name": "hello"}
    assert count_answer(named, None) == count_answer(plain, None) + count_text("hello") + 1


def test_content_parts_count_text_and_a_fixed_price_per_image():
    parts = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]
    as_text = count_answer({"role": "user", "content": "hello world"}, None)
    assert count_answer({"role": "user", "content": parts}, None) == as_text + 85


def test_tool_calls_count_name_and_arguments():
    arguments = '{"city": "Paris", "unit": "celsius"}'
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": arguments},
            }
        ],
    }
    expected = 3 + count_text("assistant") + count_text("get_weather") + count_text(arguments)
    assert count_answer(message, "gpt-4o") == expected


def test_other_call_shapes_and_parts():
    legacy = {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}
    assert count_answer(legacy, None) == 3 + count_text("assistant") + count_text("f") + 1
    parsed = {"name": "f", "arguments": {"a": 1}}
    call = {"role": "assistant", "tool_calls": [{"type": "function", "function": parsed}]}
    assert count_answer(call, None) == 3 + count_text("assistant") + 1 + count_text('{"a":1}')
    custom = {"type": "custom", "custom": {"name": "f", "input": "hello world"}}
    assert count_answer({"role": "assistant", "tool_calls": [custom]}, None) == 3 + 1 + 1 + 2
    parts = ["hello world", {"type": "refusal", "refusal": "hello world"}, {"type": "file"}]
    assert count_answer({"role": "assistant", "content": parts}, None) == 3 + 1 + 2 + 2
    assert count_answer({"role": "assistant", "content": None, "weight": 0}, None) == 3 + 1


def test_tools_count_their_json_once_per_example():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with_tools = count_example(messages, tools, "gpt-4o")
    assert with_tools == count_example(messages, None, "gpt-4o") + count_text(
        orjson.dumps(tools).decode(), "gpt-4o"
    )


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_special_token_text_counts_as_ordinary_text(model):
    text = "a user wrote <|endoftext|> and <|endofprompt|> and <|fim_prefix|>"
    encoding = get_encoding(encoding_name(model))
    assert count_text(text, model) == len(encoding.encode_ordinary(text)) > 3
    message = {"role": "user", "content": text}
    assert count_answer(message, model) == 3 + count_text("user", model) + count_text(text, model)


def test_long_texts_skip_the_memo_and_count_the_same():
    text = "The quick brown fox jumps over the lazy dog. " * 1000
    assert len(text) > tokens._CACHE_MAX_CHARS
    assert count_text(text) == len(get_encoding("o200k_base").encode_ordinary(text))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (None, "o200k_base"),
        ("", "o200k_base"),
        ("some-local-model", "o200k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("GPT-4", "cl100k_base"),
        ("openai/gpt-4o", "o200k_base"),
    ],
)
def test_encoding_name(model, expected):
    assert encoding_name(model) == expected


def test_encoding_name_agrees_with_tiktokens_model_table():
    ours = {"o200k_base": "o200k_base", "o200k_harmony": "o200k_base", "cl100k_base": "cl100k_base"}
    cases = dict(tiktoken.model.MODEL_TO_ENCODING)
    cases |= {
        prefix + "x": name for prefix, name in tiktoken.model.MODEL_PREFIX_TO_ENCODING.items()
    }
    checked = 0
    for model, name in cases.items():
        if name in ours:
            assert encoding_name(model) == ours[name], model
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_specs_match_tiktokens_own_constructors(name):
    seen = {}

    def capture(url, expected_hash=None):
        seen["hash"] = expected_hash
        return {}

    with mock.patch.object(openai_public, "load_tiktoken_bpe", capture):
        published = openai_public.ENCODING_CONSTRUCTORS[name]()
    spec = tokens.SPECS[name]
    assert spec.sha256 == seen["hash"]
    assert spec.pat_str == published["pat_str"]
    assert spec.special_tokens == published["special_tokens"]


def test_counts_without_any_network(fresh_tokens, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("token counting tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    assert count_example(COOKBOOK_MESSAGES, None, "gpt-4o") == 124
    assert count_example(COOKBOOK_MESSAGES, None, "gpt-4") == 129
    assert set(tokens._loaded) == {"o200k_base", "cl100k_base"}


def test_corrupted_file_is_refused_with_a_clear_error(fresh_tokens, monkeypatch, tmp_path):
    data = bytearray(gzip.decompress(tokens.encoding_file("cl100k_base").read_bytes()))
    data[100] ^= 1
    corrupt = tmp_path / "cl100k_base.tiktoken.gz"
    corrupt.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(EncodingFileError, match=r"not tiktoken's cl100k_base: sha256 .*scripts/"):
        load_encoding("cl100k_base", corrupt)

    monkeypatch.setattr(tokens, "encoding_file", lambda name: corrupt)
    with pytest.raises(EncodingFileError, match="223921b76ee99bde"):
        count_text("hello", "gpt-4")


def test_unreadable_or_missing_file_is_refused(tmp_path):
    not_gzip = tmp_path / "x.tiktoken.gz"
    not_gzip.write_bytes(b"IQ== 0\n")
    with pytest.raises(EncodingFileError, match="cannot read"):
        load_encoding("cl100k_base", not_gzip)
    with pytest.raises(EncodingFileError, match="cannot read"):
        load_encoding("cl100k_base", tmp_path / "missing.gz")
    with pytest.raises(ValueError, match="unknown encoding"):
        load_encoding("p50k_base")


def test_each_encoding_loads_once_across_threads(fresh_tokens, monkeypatch):
    calls = []
    real = tokens.load_encoding

    def counting(name, source=None):
        calls.append(name)
        return real(name, source)

    monkeypatch.setattr(tokens, "load_encoding", counting)
    barrier = threading.Barrier(8)
    results = []

    def work():
        barrier.wait()
        results.append(get_encoding("cl100k_base"))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["cl100k_base"]
    assert len({id(encoding) for encoding in results}) == 1


def test_import_loads_nothing():
    code = (
        "import storage.tokens as t\n"
        "assert t._loaded == {}\n"
        "assert t._count_cached.cache_info().currsize == 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the ASCII fast path (storage._token_pieces) is tiktoken's count, exactly ----------------------

# One character of each kind the patterns tell apart: lower and upper letters (the contraction
# letters among them), digits, each ASCII White_Space character, the separators Python's \s takes
# but Unicode's does not (\x1c-\x1f), the apostrophe, "/" (o200k joins it to line ends), other
# punctuation and a control character.
_KINDS = "asZT0 \t\n\r\x0b\x0c\x1c\x1f'/!\x00"


def _counters(name):
    encoding = get_encoding(name)
    return encoding, PieceCounter(encoding), PieceCounter(encoding, memo_pieces=3)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_ascii_patterns_cut_every_short_text_as_tiktoken_does(name):
    """Every text of up to 4 characters over _KINDS (88,000 texts): the same count, with a
    big and a tiny (always clearing) memo."""
    encoding, counter, tiny = _counters(name)
    assert counter._findall is not None  # the fast path is on for the shipped encodings
    for text in map("".join, chain.from_iterable(product(_KINDS, repeat=n) for n in range(5))):
        expected = len(encoding.encode_ordinary(text))
        assert counter(text) == expected == tiny(text), repr(text)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
@given(
    st.lists(
        st.one_of(
            st.characters(max_codepoint=127),
            st.sampled_from(["'s", "'LL", "'Ve", " 12345", "\r\n", " /\n", "  ", "Hello", "x'd"]),
        ),
        max_size=60,
    ).map("".join)
)
@settings(max_examples=400, deadline=None)
def test_ascii_text_counts_as_tiktoken_counts(name, text):
    encoding, counter, tiny = _counters(name)
    assert counter(text) == len(encoding.encode_ordinary(text)) == tiny(text)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_the_repositorys_own_text_counts_as_tiktoken_counts(name):
    """Code, Markdown and YAML: real text, with indentation, line ends and symbols."""
    encoding, counter, _ = _counters(name)
    root = Path(__file__).resolve().parent.parent
    files = sorted(root.glob("storage/*.py")) + sorted(root.glob("docs/*.md"))
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        for chunk in (text, *text.split("\n\n")):
            assert counter(chunk) == len(encoding.encode_ordinary(chunk)), path


def test_every_shipped_encoding_has_its_ascii_pattern():
    assert set(ASCII_PATTERNS) == set(tokens.SPECS)


def test_non_ascii_text_is_left_to_tiktoken():
    encoding = get_encoding("o200k_base")
    counter = PieceCounter(encoding)
    text = "Grüße, naïve café – 東京 🚀 'S"
    with mock.patch.object(counter, "_findall", side_effect=AssertionError("fast path")):
        assert counter(text) == len(encoding.encode_ordinary(text))
    assert count_text(text) == len(encoding.encode_ordinary(text))
