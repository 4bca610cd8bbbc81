"""``stillroom student serve``: a tiny random Llama (and a LoRA adapter on it) behind a real
loopback server, driven by the official openai SDK; the tool-call parser and stream gate with
plain strings; the CLI's one-line errors; a scripted student for tool calls and disconnects."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import threading
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from proxy.cli import cli
from proxy.errors import InvalidRequest
from proxy.student.app import SERVED_BY, create_student_app
from proxy.student.model import (
    Generation,
    PromptError,
    SamplingParams,
    load_student,
    pick_device,
)
from proxy.student.request import parse_chat_request
from proxy.student.source import StudentLoadError, resolve_student
from proxy.student.toolcalls import ToolCallGate, split_tool_calls
from tests._server import serve_in_thread
from tests._tiny_model import build_tiny_model

CORPUS = [
    "Hello! How can I help you today?",
    "The weather in Oslo is cold and clear.",
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
    "Paris is the capital of France. Berlin is the capital of Germany.",
] * 8
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
HELLO = [{"role": "user", "content": "Hello, who are you?"}]
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-student", CORPUS)


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model (freshly initialised: B = 0, so it changes nothing)."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapters") / "tiny-adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`; not ours
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        model = get_peft_model(
            base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
        )
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_dir)
    return out


def _serve_student(path: Path, **options):
    from proxy.student.model import load_student

    return serve_in_thread(
        create_student_app(functools.partial(load_student, path, device="cpu"), **options)
    )


@pytest.fixture(scope="module")
def student_url(tiny_dir):
    with _serve_student(tiny_dir, max_new_tokens=12) as url:
        yield url


@pytest.fixture
def client(student_url):
    with openai.OpenAI(base_url=student_url + "/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)


def _prompt_tokens(tokenizer, messages, tools=None) -> int:
    ids = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return len(ids)


# -- the real tiny model over HTTP -----------------------------------------------------------


def test_models_lists_the_student(client):
    assert [m.id for m in client.models.list()] == ["tiny-student"]
    assert client.models.retrieve("tiny-student").owned_by == "stillroom"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_healthz_and_unknown_routes(student_url):
    assert httpx.get(student_url + "/healthz").json() == {"status": "ok", "model": "tiny-student"}
    missing = httpx.get(student_url + "/v1/embeddings")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_chat_completion(client, tokenizer):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=8
    )
    assert raw.headers[SERVED_BY] == "student:tiny-student"
    answer = raw.parse()
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == "tiny-student"  # whatever the client asked for
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.prompt_tokens == _prompt_tokens(tokenizer, HELLO)
    assert 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 8
    again = client.chat.completions.create(model="x", messages=HELLO, max_tokens=8)
    assert again.choices[0].message.content == choice.message.content  # greedy


def test_streamed_chat_matches_the_plain_answer(client):
    plain = client.chat.completions.create(model="x", messages=HELLO, max_tokens=10)
    chunks = list(
        client.chat.completions.create(
            model="x",
            messages=HELLO,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == plain.choices[0].finish_reason and not any(finish[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done(student_url):
    body = {"model": "x", "messages": HELLO, "max_tokens": 4, "stream": True}
    reply = httpx.post(student_url + "/v1/chat/completions", json=body)
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers[SERVED_BY] == "student:tiny-student"
    events = reply.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert '"usage"' not in reply.text  # not asked for


def test_sampling_with_a_seed_repeats_and_stop_cuts(client):
    ask = functools.partial(
        client.chat.completions.create,
        model="x",
        messages=HELLO,
        max_tokens=12,
        temperature=1.5,
        seed=7,
    )
    text = ask().choices[0].message.content
    assert ask().choices[0].message.content == text
    assert len(text) >= 4, text
    stop = text[2:4]
    cut = ask(stop=[stop, "never appears"]).choices[0]
    assert cut.message.content == text[: text.find(stop)] and cut.finish_reason == "stop"
    streamed = ask(stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.message.content


def test_tools_reach_the_chat_template(client, tokenizer):
    def prompt_tokens(**extra):
        answer = client.chat.completions.create(model="x", messages=HELLO, max_tokens=1, **extra)
        return answer.usage.prompt_tokens

    assert prompt_tokens(tools=[WEATHER_TOOL]) == _prompt_tokens(tokenizer, HELLO, [WEATHER_TOOL])
    assert prompt_tokens(tools=[WEATHER_TOOL]) > prompt_tokens()
    assert prompt_tokens(tools=[WEATHER_TOOL], tool_choice="none") == prompt_tokens()


def test_a_tool_call_conversation_is_rendered(client, tokenizer):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "cold and clear"},
    ]
    answer = client.chat.completions.create(
        model="x", messages=messages, tools=[WEATHER_TOOL], max_tokens=2
    )
    rendered = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                }
            ],
        },
        {"role": "tool", "content": "cold and clear"},
    ]
    assert answer.usage.prompt_tokens == _prompt_tokens(tokenizer, rendered, [WEATHER_TOOL])


def test_n_above_one_is_refused(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x", messages=HELLO, n=2)
    error = caught.value.response.json()["error"]
    assert error["param"] == "n" and error["type"] == "invalid_request_error"
    assert caught.value.response.headers[SERVED_BY] == "student:tiny-student"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b'{"model": "x"}', "messages"),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": true}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}',
         "messages[0].content[0]"),
    ],
)  # fmt: skip
def test_bad_bodies_get_openai_errors(student_url, body, param):
    reply = httpx.post(
        student_url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_a_prompt_longer_than_the_context_is_refused(client):
    long = " ".join(f"word{n}" for n in range(1500))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": long}])
    error = caught.value.response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in error["message"]


# -- LoRA adapters and job directories ---------------------------------------------------------


def test_an_adapter_directory_serves_like_its_base(adapter_dir, client):
    expected = client.chat.completions.create(model="x", messages=HELLO, max_tokens=6)
    with _serve_student(adapter_dir) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as adapted:
            assert [m.id for m in adapted.models.list()] == ["tiny-adapter"]
            answer = adapted.chat.completions.create(model="x", messages=HELLO, max_tokens=6)
    assert answer.choices[0].message.content == expected.choices[0].message.content


def test_a_job_directory_prefers_merged(tmp_path, tiny_dir, adapter_dir):
    job = tmp_path / "ftjob-local-1"
    shutil.copytree(adapter_dir, job / "adapter")
    source = resolve_student(job)
    assert (source.name, source.adapter_dir, source.model_dir) == (
        "ftjob-local-1",
        job / "adapter",
        tiny_dir,
    )
    shutil.copytree(tiny_dir, job / "merged")
    source = resolve_student(job)
    assert (source.name, source.adapter_dir, source.model_dir) == (
        "ftjob-local-1",
        None,
        job / "merged",
    )


# -- the CLI -----------------------------------------------------------------------------------


def _serve_cli(*args: str):
    result = CliRunner().invoke(cli, ["student", "serve", *args], prog_name="stillroom")
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: "Qwen/Qwen2.5-0.5B", "never downloads"),
        (lambda tmp: str(tmp / "missing"), "no such directory"),
        (lambda tmp: str(tmp), "no model here"),
        (lambda tmp: str(_file(tmp / "config.json", "{}").parent), "no weights"),
        (lambda tmp: str(_file(tmp / "model.txt", "x")), "not a directory"),
        (lambda tmp: str(_adapter_on(tmp, "Qwen/Qwen2.5-0.5B")), "is not a local directory"),
        (lambda tmp: str(_adapter_on(tmp, "")), "no base_model_name_or_path"),
        (lambda tmp: str(_adapter_on(tmp, str(tmp))), "no config.json"),
        (lambda tmp: str(_file(tmp / "adapter_config.json", "{").parent), "unreadable"),
        (lambda tmp: str(_file(tmp / "adapter_config.json", "{}").parent), "no adapter_model"),
    ],
)
def test_bad_model_paths_are_one_line_errors(tmp_path, make, message):
    result = _serve_cli("--model", make(tmp_path))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr and result.stdout == ""


def test_a_model_without_a_chat_template_is_refused(tmp_path, tiny_dir):
    copy = shutil.copytree(tiny_dir, tmp_path / "plain")
    (copy / "chat_template.jinja").unlink()
    result = _serve_cli("--model", str(copy))
    assert result.exit_code == 2 and "no chat template" in result.stderr


def test_serve_builds_the_app_and_runs_it(tiny_dir, monkeypatch):
    import proxy.server

    ran = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test
    monkeypatch.setattr(proxy.server, "configure_logging", lambda level: None)
    monkeypatch.setattr(proxy.server, "run", lambda config: ran.append(config) or len(ran) == 1)
    args = ["--model", str(tiny_dir), "--port", "0", "--served-model-name", "tiny:v1"]
    assert _serve_cli(*args, "--device", "cpu").exit_code == 0
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert ran[0].app._load.keywords == {"device": "cpu", "name": "tiny:v1"}
    assert ran[0].app._max_new_tokens == 512 and (ran[0].host, ran[0].port) == ("127.0.0.1", 0)
    assert _serve_cli(*args).exit_code == 3  # run() says the server never started


def test_a_served_name_must_fit_in_a_header(tiny_dir):
    result = _serve_cli("--model", str(tiny_dir), "--served-model-name", "my student")
    assert result.exit_code == 2 and "printable ASCII" in result.stderr


def test_a_missing_train_extra_is_one_line(tiny_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    result = _serve_cli("--model", str(tiny_dir))
    assert result.exit_code == 2
    assert "pip install 'stillroom[train]'" in result.stderr and result.stderr.count("\n") == 1


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _adapter_on(tmp: Path, base: str) -> Path:
    _file(tmp / "adapter_config.json", json.dumps({"base_model_name_or_path": base}))
    return _file(tmp / "adapter_model.safetensors", "").parent


# -- a scripted student: tool calls end to end, disconnects ------------------------------------


class ScriptedStudent:
    """Answers with a fixed text in small pieces; with ``endless`` it writes until stopped."""

    name = "scripted"
    context_length = 4096

    def __init__(self, text: str = "", *, endless: bool = False) -> None:
        self.text = text
        self.endless = endless
        self.stopped = threading.Event()

    def encode_chat(self, messages, tools=None):
        return [0] * (len(json.dumps([messages, tools])) // 8)

    def generate(self, prompt, params, *, on_text=None, should_stop=None):
        pieces = [self.text[i : i + 5] for i in range(0, len(self.text), 5)]
        sent: list[str] = []
        for n in range(100_000 if self.endless else len(pieces)):
            if should_stop is not None and should_stop():
                self.stopped.set()
                break
            piece = pieces[n] if not self.endless else "tick "
            sent.append(piece)
            if on_text is not None:
                on_text(piece)
            if self.endless:
                threading.Event().wait(0.002)
        return Generation("".join(sent), len(prompt), len(sent), "stop")


@pytest.fixture
def scripted():
    def start(student: ScriptedStudent):
        return serve_in_thread(create_student_app(lambda: student))

    return start


TOOL_TEXT = (
    'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
    '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>'
)


def test_tool_calls_reach_the_sdk(scripted):
    with scripted(ScriptedStudent(TOOL_TEXT)) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            answer = client.chat.completions.create(
                model="gpt-4o", messages=HELLO, tools=[WEATHER_TOOL]
            )
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o", messages=HELLO, tools=[WEATHER_TOOL], stream=True
                )
            )
            untooled = client.chat.completions.create(model="gpt-4o", messages=HELLO)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Oslo"},
        {"city": "Paris"},
    ]
    assert all(CALL_ID.match(c.id) and c.type == "function" for c in calls)

    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Let me check." and "<tool" not in text
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather"), (1, "get_weather")]
    assert json.loads(deltas[0].function.arguments) == {"city": "Oslo"}
    assert all(CALL_ID.match(d.id) and d.type == "function" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # without tools in the request the text is only text
    assert untooled.choices[0].message.content == TOOL_TEXT
    assert untooled.choices[0].message.tool_calls is None


def _start_lifespan(app) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "lifespan", "state": {}}, receive, send))
    return sent


def test_a_model_that_cannot_load_is_one_log_line(tmp_path, tiny_dir, caplog):
    """uvicorn then exits with STARTUP_FAILURE (see test_serve_builds_the_app_and_runs_it)."""
    broken = shutil.copytree(tiny_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    app = create_student_app(functools.partial(load_student, broken, device="cpu"))
    assert _start_lifespan(app) == [{"type": "lifespan.startup.failed", "message": ""}]
    [line] = [m for m in caplog.messages if "could not load" in m]
    assert line.startswith("could not load the student: ") and "\n" not in line


def test_a_client_that_gives_up_stops_a_plain_answer(scripted):
    student = ScriptedStudent(endless=True)
    body = {"model": "x", "messages": HELLO}
    with scripted(student) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.3)
        assert student.stopped.wait(10)


def test_a_client_that_leaves_stops_the_generation(scripted):
    student = ScriptedStudent(endless=True)
    body = {"model": "x", "messages": HELLO, "stream": True}
    with scripted(student) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as reply:
            lines = reply.iter_lines()
            assert next(lines).startswith("data: ")
            assert '"tick' in next(line for line in lines if "tick" in line)
        assert student.stopped.wait(10)


class FailingStudent(ScriptedStudent):
    def generate(self, prompt, params, *, on_text=None, should_stop=None):
        if on_text is not None:
            on_text("partial ")
        raise RuntimeError("CUDA out of memory")


class PickyStudent(ScriptedStudent):
    def encode_chat(self, messages, tools=None):
        raise PromptError("the model's chat template refused the messages: roles must alternate")


def test_a_failing_model_answers_openai_errors(scripted, caplog):
    with scripted(FailingStudent()) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="x", messages=HELLO)
            assert caught.value.response.json()["error"]["code"] == "generation_failed"
            with pytest.raises(openai.APIError, match="failed while generating"):
                list(client.chat.completions.create(model="x", messages=HELLO, stream=True))
    assert caplog.messages.count("generation failed") == 2


def test_a_template_refusal_is_a_400(scripted):
    with scripted(PickyStudent()) as url:
        reply = httpx.post(url + "/v1/chat/completions", json={"messages": HELLO})
    assert reply.status_code == 400 and reply.headers[SERVED_BY] == "student:scripted"
    assert reply.json()["error"]["param"] == "messages"
    assert "roles must alternate" in reply.json()["error"]["message"]


def test_the_python_api(tiny_dir):
    """What the local training backend and evals use: load_student, chat/generate."""
    student = load_student(tiny_dir, device="cpu", name="local")
    assert (student.name, student.device, student.context_length) == ("local", "cpu", 2048)
    pieces: list[str] = []
    prompt = student.encode_chat(HELLO)
    answer = student.generate(prompt, SamplingParams(max_new_tokens=3), on_text=pieces.append)
    assert answer == student.chat(HELLO, SamplingParams(max_new_tokens=3))
    assert (answer.prompt_tokens, answer.completion_tokens) == (len(prompt), 3)
    assert answer.finish_reason == "length" and "".join(pieces) == answer.text
    assert pick_device("auto") in ("cpu", "cuda")
    with pytest.raises(StudentLoadError, match="unknown device"):
        pick_device("tpu")


# -- the parser and the stream gate, with strings ----------------------------------------------


def _names_and_arguments(calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_one_call():
    content, calls = split_tool_calls(
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    )
    assert content is None
    assert _names_and_arguments(calls) == [("get_weather", {"city": "Oslo"})]
    assert calls[0]["type"] == "function" and CALL_ID.match(calls[0]["id"])
    assert calls[0]["function"]["arguments"] == '{"city":"Oslo"}'


def test_two_calls_after_text():
    content, calls = split_tool_calls(
        'Checking both.\n<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"x": [1, 2]}}\n</tool_call>'
    )
    assert content == "Checking both."
    assert _names_and_arguments(calls) == [("a", {}), ("b", {"x": [1, 2]})]
    assert calls[0]["id"] != calls[1]["id"]


def test_string_arguments_are_kept_as_written():
    _, calls = split_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"q\\": 1}"}</tool_call>')
    assert calls[0]["function"]["arguments"] == '{"q": 1}'
    _, calls = split_tool_calls('<tool_call>{"name": "f"}</tool_call>')
    assert calls[0]["function"]["arguments"] == "{}"
    _, calls = split_tool_calls('<tool_call>{"name": "f", "parameters": {"a": "é"}}</tool_call>')
    assert calls[0]["function"]["arguments"] == '{"a":"é"}'


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": 3}</tool_call>',
        '<tool_call>["f"]</tool_call>',
        'Hi <tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": </tool_call>',
        '<tool_call>{"name": "f", "arguments": {"city": "Os',  # cut off by max_tokens
    ],
)
def test_malformed_calls_leave_the_text_as_content(text):
    assert split_tool_calls(text) == (text, [])


def test_an_unclosed_last_call_counts_when_complete():
    content, calls = split_tool_calls('Sure. <tool_call>{"name": "f", "arguments": {"a": 1}}\n')
    assert content == "Sure." and _names_and_arguments(calls) == [("f", {"a": 1})]


def test_text_without_calls_is_unchanged():
    assert split_tool_calls("  plain <tool answer\n") == ("  plain <tool answer\n", [])
    assert split_tool_calls("") == ("", [])


@pytest.mark.parametrize(
    "text",
    [
        TOOL_TEXT,
        "plain text with a < sign and <tool but no call  \n",
        "<tool_call>{broken}</tool_call> and more",
        '  \n<tool_call>{"name": "f", "arguments": {}}</tool_call>',
        "ends with a partial <tool_ca",
    ],
)
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_the_gate_agrees_with_the_parser(text, size):
    gate = ToolCallGate()
    sent = "".join(gate.feed(text[i : i + size]) for i in range(0, len(text), size))
    assert "<tool_call>" not in sent and "<tool_ca" not in sent.removesuffix("<tool_ca")
    rest, calls = gate.finish()
    content, expected = split_tool_calls(text)
    assert sent + rest == (content or "")
    assert _names_and_arguments(calls) == _names_and_arguments(expected)


def test_the_gate_streams_plain_text_promptly():
    gate = ToolCallGate()
    assert gate.feed("Hello") == "Hello"
    assert gate.feed(" wor") == " wor"
    assert gate.feed("ld <") == "ld"  # "<" may open a tool call, " " may precede one
    assert gate.feed("b>") == " <b>"
    assert gate.finish() == ("", [])


# -- the request parser ------------------------------------------------------------------------


def _call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_requests_are_converted_for_the_template():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    calls = [_call("c1", "f", '{"x": 1}'), _call("c2", "g", "not json")]
    other = {"type": "function", "function": {"name": "other"}}
    chat = parse_chat_request(
        json.dumps(
            {
                "model": "anything",
                "messages": [
                    {"role": "developer", "content": parts},
                    {"role": "assistant", "content": None, "tool_calls": calls},
                ],
                "tools": [WEATHER_TOOL, other],
                "tool_choice": {"type": "function", "function": {"name": "other"}},
                "max_tokens": 5,
                "max_completion_tokens": 7,
                "stop": "END",
                "stream": True,
                "stream_options": {"include_usage": True},
                "n": 1,
            }
        ).encode()
    )
    assert chat.messages[0] == {"role": "system", "content": "a\nb"}
    assert chat.messages[1]["content"] == ""
    assert [c["function"]["arguments"] for c in chat.messages[1]["tool_calls"]] == [
        {"x": 1},
        "not json",
    ]
    assert [t["function"]["name"] for t in chat.tools] == ["other"]
    assert (chat.max_tokens, chat.stop, chat.stream, chat.include_usage) == (
        7,
        ("END",),
        True,
        True,
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tool_choice": {"type": "function", "function": {"name": "no"}}, "tools": [WEATHER_TOOL]},
         "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"stream_options": []}, "stream_options"),
        ({"stream": "yes"}, "stream"),
        ({"model": 3}, "model"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": 3}]},
         "messages[0].tool_call_id"),
        ({"messages": [{"role": "assistant", "tool_calls": {"a": 1}}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
         "messages[0].tool_calls[0].function"),
        ({"tools": {}}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ],
)  # fmt: skip
def test_bad_fields_name_their_param(extra, param):
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(json.dumps({"messages": HELLO, **extra}).encode())
    assert caught.value.param == param


def test_a_model_without_a_tokenizer_is_refused(tmp_path):
    _file(tmp_path / "config.json", "{}")
    _file(tmp_path / "model.safetensors", "")
    with pytest.raises(StudentLoadError, match="no tokenizer"):
        resolve_student(tmp_path)
