"""storage.export: every format's exact lines, manifests, atomic files, changed snapshots, and
the hf files through Hugging Face ``datasets`` and a chat template (offline, no torch)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from storage._export_formats import (
    hf_message,
    hf_prompt_completion_row,
    hf_row,
    openai_chat_row,
)
from storage.datasets import (
    Dataset,
    DatasetChanged,
    DatasetItem,
    DatasetPair,
    TokenStats,
)
from storage.examples import Example, build_example
from storage.export import (
    FORMATS,
    DatasetNotFound,
    ExportError,
    export_dataset,
    export_lines,
)
from storage.query import Conversation, Curation, StoredCapture
from storage.validate import validate_jsonl
from tests.conftest import make_capture

pytestmark = pytest.mark.anyio

# -- captures and a store that holds a dataset of them ------------------------------------------

SYSTEM = {"role": "developer", "content": "Be brief."}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
]


def chat_capture(
    messages: list[dict[str, Any]],
    answer: dict[str, Any],
    *,
    curation: Curation | None = None,
    **request: Any,
) -> StoredCapture:
    body = {"model": "gpt-4o-mini", "messages": messages, **request}
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
    }
    record = make_capture(
        request_body=orjson.dumps(body),
        response=response,
        response_body=orjson.dumps(response),
    )
    return StoredCapture(record, curation or Curation())


def text_capture(user: str = "Say hello.", answer: str = "Hello there!", **kw: Any):
    return chat_capture(
        [SYSTEM, {"role": "user", "content": user}],
        {"role": "assistant", "content": answer},
        **kw,
    )


def tool_capture(order: str = "1234") -> StoredCapture:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_order", "arguments": f'{{"order_id":"{order}"}}'},
    }
    return chat_capture(
        [
            {"role": "system", "content": "You are the Acme support bot."},
            {"role": "user", "content": f"Where is order {order}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"status":"shipped"}'},
        ],
        {"role": "assistant", "content": f"Order {order} has shipped."},
        tools=TOOLS,
        parallel_tool_calls=False,
    )


def weather_capture() -> StoredCapture:
    call = {
        "id": "call_w",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
    }
    return chat_capture(
        [{"role": "user", "content": "Weather in Oslo?"}],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        tools=TOOLS,
    )


def example_of(stored: StoredCapture, **kw: Any) -> Example:
    built = build_example(stored, **kw)
    assert isinstance(built, Example), built
    return built


@dataclass
class FakeStore:
    """The dataset part of ``Store``: one dataset, its items, pairs and captures."""

    dataset: Dataset
    items: list[tuple[DatasetItem, StoredCapture | None]]
    pairs: list[tuple[DatasetPair, StoredCapture | None, StoredCapture | None]] = field(
        default_factory=list
    )
    conversations: dict[str, Conversation] = field(default_factory=dict)
    batch: int = 2

    async def get_dataset(self, name: str) -> Dataset | None:
        return self.dataset if name == self.dataset.name else None

    async def dataset_items(self, name: str, split=None, *, batch: int = 500) -> AsyncIterator:
        rows = [row for row in self.items if split is None or row[0].split == split]
        for start in range(0, len(rows), self.batch):
            yield rows[start : start + self.batch]

    async def dataset_pairs(self, name: str, split=None, *, batch: int = 500) -> AsyncIterator:
        rows = [row for row in self.pairs if split is None or row[0].split == split]
        for start in range(0, len(rows), self.batch):
            yield rows[start : start + self.batch]

    async def conversation(self, capture_id: str) -> Conversation | None:
        return self.conversations.get(capture_id)


def make_dataset(counts: dict[str, int], name: str = "support-v1") -> Dataset:
    stats = TokenStats(2, 40, 15, 20.0, 25, 25, 10, 0.0001)
    return Dataset(
        name=name,
        created_at=1_700_000_000.0,
        spec={"name": name, "filter": {"tag": ["task:support"]}, "validation": 0.1},
        content_hash="ab" * 32,
        counts=counts,
        considered=sum(counts.values()) + 1,
        rejected={"refusal": 1},
        tokens={"train": stats},
        leakage={"shared_prompts": 0, "removed": 0},
        version="0.1.0",
    )


def store_of(*captures: StoredCapture, splits: tuple[str, ...] = ()) -> FakeStore:
    items = []
    for position, stored in enumerate(captures):
        split = splits[position] if splits else "train"
        digest = example_of(stored).content_hash
        items.append((DatasetItem(position, stored.record.id, split, digest), stored))
    counts = {s: sum(1 for i, _ in items if i.split == s) for s in ("train", "validation")}
    return FakeStore(make_dataset(counts), items)


async def lines_of(store: FakeStore, fmt: str, split: str | None = "train") -> bytes:
    return b"".join([chunk async for chunk in export_lines(store, "support-v1", fmt, split)])


# -- openai-chat ----------------------------------------------------------------------------------

TEXT_LINE = (
    b'{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say '
    b'hello."},{"role":"assistant","content":"Hello there!","weight":1}]}\n'
)


async def test_openai_chat_text_line_is_exact() -> None:
    assert await lines_of(store_of(text_capture()), "openai-chat") == TEXT_LINE


async def test_openai_chat_tools_line_has_weights_and_string_arguments() -> None:
    line = await lines_of(store_of(tool_capture()), "openai-chat")
    tools = orjson.dumps(TOOLS).decode()
    assert line.decode() == (
        '{"messages":[{"role":"system","content":"You are the Acme support bot."},'
        '{"role":"user","content":"Where is order 1234?"},'
        '{"role":"assistant","tool_calls":[{"id":"call_1","type":"function","function":'
        '{"name":"lookup_order","arguments":"{\\"order_id\\":\\"1234\\"}"}}],"weight":0},'
        '{"role":"tool","content":"{\\"status\\":\\"shipped\\"}","tool_call_id":"call_1"},'
        '{"role":"assistant","content":"Order 1234 has shipped.","weight":1}],'
        f'"tools":{tools},"parallel_tool_calls":false}}\n'
    )


def test_openai_chat_row_writes_object_arguments_as_json_text() -> None:
    example = replace(
        example_of(weather_capture()),
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "w", "arguments": {}}},
                    {"id": "b", "type": "function", "function": {"name": "w", "arguments": None}},
                    {"id": "c", "type": "custom"},
                ],
            },
        ],
    )
    calls = openai_chat_row(example)["messages"][1]["tool_calls"]
    assert [c.get("function", {}).get("arguments") for c in calls] == ["{}", "{}", None]


async def test_split_none_exports_every_split_in_order() -> None:
    store = store_of(
        text_capture("a"),
        text_capture("b"),
        text_capture("c"),
        splits=("train", "validation", "train"),
    )
    users = [
        json.loads(line)["messages"][1]["content"]
        for line in (await lines_of(store, "openai-chat", None)).splitlines()
    ]
    assert users == ["a", "b", "c"]
    only = (await lines_of(store, "openai-chat", "validation")).splitlines()
    assert [json.loads(line)["messages"][1]["content"] for line in only] == ["b"]


async def test_responses_chain_is_rebuilt_from_the_conversation() -> None:
    def response(rid: str, text: str) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "response",
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text}],
                }
            ],
        }

    first = StoredCapture(
        make_capture(
            endpoint="responses",
            request_body=b'{"model":"gpt-4o-mini","instructions":"Be brief.","input":"Hi"}',
            response=response("resp_1", "Hello"),
            response_id="resp_1",
        ),
        Curation(),
    )
    second = StoredCapture(
        make_capture(
            endpoint="responses",
            request_body=b'{"model":"gpt-4o-mini","input":"More","previous_response_id":"resp_1"}',
            response=response("resp_2", "Sure"),
            response_id="resp_2",
            previous_response_id="resp_1",
        ),
        Curation(),
    )
    chain = Conversation([first, second], complete=True)
    example = example_of(second, chain=chain.captures)
    store = FakeStore(
        make_dataset({"train": 1}),
        [(DatasetItem(0, second.record.id, "train", example.content_hash), second)],
        conversations={second.record.id: chain},
    )
    assert await lines_of(store, "openai-chat") == (
        b'{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello",'
        b'"weight":0},{"role":"user","content":"More"},{"role":"assistant","content":"Sure",'
        b'"weight":1}]}\n'
    )
    store.conversations.clear()  # the chain's start is gone: the example no longer builds
    with pytest.raises(DatasetChanged, match="1 of 1 examples changed"):
        await lines_of(store, "openai-chat")


# -- openai-dpo -----------------------------------------------------------------------------------


def pair_store(*pairs: tuple[str, StoredCapture | None, StoredCapture | None]) -> FakeStore:
    rows = [
        (
            DatasetPair(
                n,
                "train",
                kind,  # type: ignore[arg-type]
                better.record.id if better else "gone",
                worse.record.id if worse else "gone",
            ),
            better,
            worse,
        )
        for n, (kind, better, worse) in enumerate(pairs)
    ]
    return FakeStore(make_dataset({"train": len(rows)}), [], rows)


async def test_openai_dpo_from_a_correction() -> None:
    corrected = text_capture(curation=Curation(corrected_response={"content": "Hi!"}))
    line = await lines_of(pair_store(("correction", corrected, corrected)), "openai-dpo")
    assert line == (
        b'{"input":{"messages":[{"role":"system","content":"Be brief."},{"role":"user",'
        b'"content":"Say hello."}]},"preferred_output":[{"role":"assistant","content":"Hi!"}],'
        b'"non_preferred_output":[{"role":"assistant","content":"Hello there!"}]}\n'
    )


async def test_openai_dpo_from_opposite_feedback() -> None:
    prompt = "Summarise this ticket: printer jams on tray 2."
    good = text_capture(
        prompt, "Printer jams when using tray 2.", curation=Curation(feedback_score=1)
    )
    bad = text_capture(prompt, "The user has a problem.", curation=Curation(feedback_score=-1))
    line = await lines_of(pair_store(("feedback", good, bad)), "openai-dpo")
    assert json.loads(line) == {
        "input": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": prompt},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "Printer jams when using tray 2."}],
        "non_preferred_output": [{"role": "assistant", "content": "The user has a problem."}],
    }


async def test_openai_dpo_pairs_that_no_longer_hold_are_changed() -> None:
    prompt = "Summarise the ticket."
    good = text_capture(prompt, "Good.", curation=Curation(feedback_score=1))
    bad = text_capture(prompt, "Bad.", curation=Curation(feedback_score=-1))
    neutral = text_capture(prompt, "Meh.", curation=Curation(feedback_score=0))
    other = text_capture("Another prompt.", "Bad.", curation=Curation(feedback_score=-1))
    uncorrected = text_capture()
    store = pair_store(
        ("feedback", good, bad),  # still holds
        ("feedback", None, bad),  # preferred capture deleted
        ("feedback", good, None),  # rejected capture deleted
        ("feedback", good, neutral),  # feedback cleared since
        ("feedback", good, other),  # not the same prompt
        ("correction", uncorrected, uncorrected),  # correction removed
    )
    chunks = []
    with pytest.raises(DatasetChanged, match="5 of 6 preference pairs changed"):
        async for chunk in export_lines(store, "support-v1", "openai-dpo", "train"):
            chunks.append(chunk)
    assert len(b"".join(chunks).splitlines()) == 1  # every good row comes first


# -- hf and hf-prompt-completion ------------------------------------------------------------------


def test_hf_rows_are_chat_template_ready() -> None:
    example = example_of(tool_capture())
    row = hf_row(example)
    assert row["tools"] == orjson.dumps(TOOLS).decode()
    assert row["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"order_id": "1234"}
    assert all("weight" not in m for m in row["messages"])
    split = hf_prompt_completion_row(example)
    assert split["prompt"] == row["messages"][:-1]
    assert split["completion"] == [{"role": "assistant", "content": "Order 1234 has shipped."}]
    assert hf_row(example_of(text_capture()))["messages"][0]["role"] == "system"
    assert hf_row(example_of(text_capture()))["tools"] is None


def test_hf_message_flattens_text_parts_and_keeps_the_rest() -> None:
    text = [{"type": "text", "text": "a"}, {"type": "output_text", "text": "b"}]
    assert hf_message({"role": "user", "content": text}) == {"role": "user", "content": "ab"}
    image = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert hf_message({"role": "user", "content": image})["content"] == image
    calls = [
        {"id": "a", "function": {"name": "f", "arguments": ""}},
        {"id": "b", "function": {"name": "f", "arguments": "not json"}},
        {"id": "c", "function": {"name": "f", "arguments": {"x": 1}}},
        {"id": "d", "type": "custom"},
    ]
    out = hf_message({"role": "assistant", "tool_calls": calls})["tool_calls"]
    assert [c.get("function", {}).get("arguments") for c in out] == [{}, "not json", {"x": 1}, None]


# -- files and manifests --------------------------------------------------------------------------


async def test_export_writes_the_file_and_its_manifest(tmp_path: Path) -> None:
    store = store_of(text_capture(), tool_capture(), text_capture("Hi."), splits=("train",) * 3)
    out = tmp_path / "train.jsonl"
    seen: list[tuple[int, int]] = []
    manifest = await export_dataset(
        store, "support-v1", "openai-chat", "train", out, progress=lambda d, t: seen.append((d, t))
    )
    data = out.read_bytes()
    assert data == await lines_of(store, "openai-chat") and data.startswith(TEXT_LINE)
    assert seen == [(2, 3), (3, 3)]
    written = json.loads((tmp_path / "train.jsonl.manifest.json").read_bytes())
    assert written == manifest
    assert manifest["file"] == {
        "name": "train.jsonl",
        "encoding": "jsonl",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    from importlib.metadata import version

    dataset = store.dataset
    assert manifest["lines"] == 3
    assert manifest["stillroom_version"] == version("stillroom")
    assert {k: manifest[k] for k in ("object", "dataset", "format", "split")} == {
        "object": "dataset.export",
        "dataset": "support-v1",
        "format": "openai-chat",
        "split": "train",
    }
    assert manifest["content_hash"] == dataset.content_hash
    assert manifest["spec"] == dataset.spec and manifest["counts"] == dataset.counts
    assert manifest["rejected"] == {"refusal": 1} and manifest["leakage"] == dataset.leakage
    assert manifest["tokens"]["train"]["estimated_cost_per_epoch"] == 0.0001
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train.jsonl",
        "train.jsonl.manifest.json",
    ]


async def test_exports_are_byte_identical(tmp_path: Path) -> None:
    for fmt in ("openai-chat", "hf", "hf-prompt-completion"):
        outputs = []
        for n, suffix in enumerate((".jsonl", ".jsonl", ".parquet", ".parquet")):
            if suffix == ".parquet" and fmt == "openai-chat":
                continue
            store = store_of(text_capture(), tool_capture(), weather_capture())
            out = tmp_path / f"{fmt}{n}{suffix}"
            await export_dataset(store, "support-v1", fmt, "train", out)
            outputs.append(out.read_bytes())
        assert outputs[0] == outputs[1]
        assert outputs[2:3] == outputs[3:4]


async def test_a_changed_dataset_leaves_no_file(tmp_path: Path) -> None:
    edited = text_capture()
    store = store_of(text_capture(), edited, tool_capture())
    store.items[1] = (replace(store.items[1][0], content_hash="00" * 32), edited)
    store.items[2] = (store.items[2][0], None)  # deleted since
    out = tmp_path / "train.jsonl"
    out.write_bytes(b"previous export\n")
    for fmt, name in (("openai-chat", "train.jsonl"), ("hf", "train.parquet")):
        with pytest.raises(DatasetChanged, match="2 of 3 examples changed"):
            await export_dataset(store, "support-v1", fmt, "train", tmp_path / name)
    assert out.read_bytes() == b"previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


async def test_export_refuses_bad_requests(tmp_path: Path, monkeypatch) -> None:
    store = store_of(text_capture())
    out = tmp_path / "x.jsonl"
    with pytest.raises(ExportError, match="unknown format 'csv'; known: openai-chat"):
        await export_dataset(store, "support-v1", "csv", "train", out)
    with pytest.raises(ExportError, match="unknown split 'test'"):
        await export_dataset(store, "support-v1", "hf", "test", out)
    with pytest.raises(ExportError, match="openai-chat is JSONL only"):
        await export_dataset(store, "support-v1", "openai-chat", "train", tmp_path / "x.parquet")
    with pytest.raises(ExportError, match="output folder .* does not exist"):
        await export_dataset(store, "support-v1", "hf", "train", tmp_path / "no" / "x.jsonl")
    with pytest.raises(DatasetNotFound, match="no dataset named 'other'"):
        await export_dataset(store, "other", "hf", "train", out)
    with pytest.raises(DatasetNotFound):
        await lines_of(replace(store, dataset=make_dataset({}, name="other")), "hf")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # not installed
    with pytest.raises(ExportError, match=r"pip install 'stillroom\[hf\]'"):
        await export_dataset(store, "support-v1", "hf", "train", tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []
    assert FORMATS == ("openai-chat", "openai-dpo", "hf", "hf-prompt-completion")


async def test_openai_exports_pass_the_validator(tmp_path: Path) -> None:
    captures = [text_capture(f"Question {n}?") for n in range(8)]
    store = store_of(*captures, tool_capture(), tool_capture("99"), weather_capture())
    out = tmp_path / "train.jsonl"
    await export_dataset(store, "support-v1", "openai-chat", "train", out)
    report = validate_jsonl(out, max_tokens=65_536)
    assert report.ok, report.to_json()
    assert report.examples == 11
    prompt = "Summarise the ticket."
    pairs = []
    for n in range(10):
        good = text_capture(f"{prompt} {n}", "Good.", curation=Curation(feedback_score=1))
        bad = text_capture(f"{prompt} {n}", "Bad.", curation=Curation(feedback_score=-1))
        fixed = text_capture(f"{n}", curation=Curation(corrected_response={"content": "Hi!"}))
        pairs += [("feedback", good, bad), ("correction", fixed, fixed)]
    dpo = tmp_path / "dpo.jsonl"
    seen: list[tuple[int, int]] = []
    await export_dataset(
        pair_store(*pairs),
        "support-v1",
        "openai-dpo",
        "train",
        dpo,
        progress=lambda *a: seen.append(a),
    )
    assert seen[-1] == (20, 20) and len(seen) == 10
    report = validate_jsonl(dpo, fmt="openai-dpo", max_tokens=65_536)
    assert report.ok, report.to_json()
    assert report.examples == 20


# -- Hugging Face datasets, chat templates and TRL ------------------------------------------------

# A Qwen2.5-like template: tools in the system turn, tool calls and results in tags, the
# arguments rendered with tojson (so text arguments would show up encoded twice).
CHAT_TEMPLATE = """\
{%- if tools %}<|system|>Tools:{% for tool in tools %} {{ tool | tojson }}{% endfor %}<|end|>
{% endif %}
{%- for message in messages %}<|{{ message.role }}|>
{%- if message.content is string %}{{ message.content }}{% endif %}
{%- for call in message.tool_calls or [] %}<tool_call>{"name": "{{ call.function.name }}", \
"arguments": {{ call.function.arguments | tojson }}}</tool_call>{% endfor %}<|end|>
{% endfor %}
{%- if add_generation_prompt %}<|assistant|>{% endif %}"""


def offline_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "<eos>": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, eos_token="<eos>", unk_token="[UNK]"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_rows(path: Path, fmt: str, cache: Path) -> list[dict[str, Any]]:
    from datasets import Features, Json, List, Value, load_dataset

    columns = ("messages",) if fmt == "hf" else ("prompt", "completion")
    features = Features({**{c: List(Json()) for c in columns}, "tools": Value("string")})
    kind = "parquet" if path.suffix == ".parquet" else "json"
    extra = {"features": features} if kind == "json" else {}
    loaded = load_dataset(kind, data_files=str(path), split="train", cache_dir=str(cache), **extra)
    assert loaded.features == features
    return list(loaded)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("fmt", ["hf", "hf-prompt-completion"])
async def test_hf_exports_load_with_datasets_and_render(
    tmp_path: Path, fmt: str, suffix: str
) -> None:
    store = store_of(text_capture(), tool_capture(), weather_capture(), tool_capture("77"))
    out = tmp_path / f"train{suffix}"
    manifest = await export_dataset(store, "support-v1", fmt, "train", out)
    assert manifest["file"]["encoding"] == suffix[1:] and manifest["lines"] == 4
    expected = [json.loads(line) for line in (await lines_of(store, fmt)).splitlines()]
    rows = load_rows(out, fmt, tmp_path / "cache")
    assert rows == expected  # each message verbatim: no keys merged in from other rows
    weather = rows[2]["messages" if fmt == "hf" else "completion"][-1]["tool_calls"][0]
    assert weather["function"]["arguments"] == {"city": "Oslo"}

    tokenizer = offline_tokenizer()
    for row in rows:
        tools = json.loads(row["tools"]) if row["tools"] else None
        conversation = row["messages"] if fmt == "hf" else row["prompt"] + row["completion"]
        text = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False)
        assert text.endswith("<|end|>\n")
        if tools:
            assert '"name": "lookup_order"' in text
    text = tokenizer.apply_chat_template(
        rows[1]["messages"] if fmt == "hf" else rows[1]["prompt"],
        tools=json.loads(rows[1]["tools"]),
        tokenize=False,
    )
    assert '"arguments": {"order_id": "1234"}' in text  # an object, not JSON text in a string


async def test_trl_applies_its_chat_template_to_hf_rows(tmp_path: Path) -> None:
    # TRL's own chat-template helpers, as its SFTTrainer applies them (the train extra).
    import trl.data_utils as data_utils

    store = store_of(tool_capture())
    tokenizer = offline_tokenizer()
    for fmt in ("hf", "hf-prompt-completion"):
        row = json.loads(await lines_of(store, fmt))
        tools = json.loads(row.pop("tools"))
        out = data_utils.apply_chat_template(row, tokenizer, tools=tools)
        assert '"arguments": {"order_id": "1234"}' in "".join(out.values())
    both = {
        **hf_row(example_of(tool_capture())),
        **hf_prompt_completion_row(example_of(tool_capture())),
    }
    both.pop("tools")
    with pytest.raises(KeyError, match="Invalid keys"):  # why hf is two formats, not one
        data_utils.apply_chat_template(both, tokenizer)


# -- with the SQLite store and create_dataset -----------------------------------------------------


async def test_real_store_exports_are_reproducible_and_refuse_changes(tmp_path: Path) -> None:
    from storage.datasets import DatasetSpec, create_dataset
    from storage.query import CapturePatch
    from storage.sqlite import SQLiteStore

    captures = [text_capture(f"Question {n}?", f"Answer {n}.") for n in range(12)]
    captures += [
        text_capture("Fix me.", "Wrong."),
        text_capture("Rate me.", "Helpful."),
        text_capture("Rate me.", "Unhelpful."),
    ]
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        await store.migrate()
        await store.write_batch([stored.record for stored in captures])
        for stored, patch in zip(
            captures[-3:],
            (
                CapturePatch(corrected_response={"content": "Right."}),
                CapturePatch(feedback_score=1),
                CapturePatch(feedback_score=-1),
            ),
            strict=True,
        ):
            await store.update_capture(stored.record.id, patch)
        outputs: dict[str, list[bytes]] = {}
        for name in ("run-a", "run-b"):
            await create_dataset(store, DatasetSpec(name=name, validation=0.0))
            for fmt in FORMATS:
                out = tmp_path / f"{name}.{fmt}.jsonl"
                await export_dataset(store, name, fmt, "train", out)
                outputs.setdefault(fmt, []).append(out.read_bytes())
        for fmt, (first, second) in outputs.items():
            assert first == second, fmt
        assert len(outputs["openai-chat"][0].splitlines()) == 14  # the -1 capture is left out
        preferred = [
            json.loads(line)["preferred_output"][0]["content"]
            for line in outputs["openai-dpo"][0].splitlines()
        ]
        assert preferred == ["Right.", "Helpful."]
        await store.update_capture(
            captures[0].record.id, CapturePatch(corrected_response={"content": "New."})
        )
        with pytest.raises(DatasetChanged, match="1 of 14 examples changed"):
            await export_dataset(store, "run-a", "openai-chat", "train", tmp_path / "x.jsonl")
    finally:
        await store.close()
