"""A synthetic distillation task with one tool, for training checks that must show learning.

The teacher answers every "weather in <city>" question with one call,
``get_weather({"city": <city>})``. Each capture asks about a different made-up city, so a student
only scores on held-out captures if it learned to call the tool and copy the city from the
question, not if it memorised cities. Used by the slow SmolLM2 test
(tests/test_train_smollm2_slow.py) and the GPU check (bench/gpu_train_check.py).

``captures(n)`` makes ``CaptureRecord``s as the proxy records them; ``score(calls, city)`` says
whether a student's answer is the teacher's call.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

SYSTEM = "You are a weather assistant. Use the tools to answer."
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name."}},
            "required": ["city"],
        },
    },
}
QUESTIONS = (
    "What's the weather in {city}?",
    "Is it raining in {city} right now?",
    "How warm is it in {city} today?",
    "Weather for {city}, please.",
    "Do I need an umbrella in {city}?",
)
_ONSETS = ("B", "D", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z")
_VOWELS = ("a", "e", "i", "o", "u")
_ENDINGS = ("ria", "mont", "ville", "burg", "dale", "ton", "stad", "nes")


def city(n: int) -> str:
    """The n-th made-up city name, distinct for n < 2,400."""
    onset = _ONSETS[n % len(_ONSETS)]
    vowel = _VOWELS[(n // len(_ONSETS)) % len(_VOWELS)]
    middle = "lkrnst"[(n // 60) % 6]
    ending = _ENDINGS[(n // 360) % len(_ENDINGS)]
    return f"{onset}{vowel}{middle}o{ending}"


def messages(n: int) -> list[dict[str, Any]]:
    question = QUESTIONS[n % len(QUESTIONS)].format(city=city(n))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def teacher_call(n: int) -> dict[str, Any]:
    return {
        "id": f"call_{n:024x}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city(n)})},
    }


def captures(count: int, *, start: int = 0, tags: dict[str, str] | None = None) -> list[Any]:
    """``count`` captures of the teacher answering questions ``start``… (storage records)."""
    from storage.ids import new_capture_id
    from storage.models import CaptureRecord, Usage

    records = []
    for n in range(start, start + count):
        body = {"model": "gpt-4o-mini", "messages": messages(n), "tools": [TOOL]}
        response = {
            "id": f"chatcmpl-{uuid.UUID(int=n).hex[:24]}",
            "object": "chat.completion",
            "created": 1_700_000_000 + n,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [teacher_call(n)],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 60, "completion_tokens": 12, "total_tokens": 72},
        }
        records.append(
            CaptureRecord(
                id=new_capture_id(),
                created_at=1_700_000_000.0 + n,
                endpoint="chat/completions",
                method="POST",
                path="/v1/chat/completions",
                requested_model="gpt-4o-mini",
                returned_model="gpt-4o-mini-2024-07-18",
                stream=False,
                request_body=json.dumps(body).encode(),
                response_body=json.dumps(response).encode(),
                response_truncated=False,
                response_content_type="application/json",
                response=response,
                status=200,
                outcome="completed",
                error=None,
                latency_ms=300.0,
                ttft_ms=250.0,
                usage=Usage(input_tokens=60, output_tokens=12, total_tokens=72),
                tags=dict(tags or {"task": "weather"}),
                upstream_request_id=None,
                retry_count=0,
                key_fingerprint="fp_tooltask",
                response_id=str(response["id"]),
                previous_response_id=None,
                has_tool_calls=True,
            )
        )
    return records


def city_of(question: str) -> str | None:
    """The city a question of this task asks about."""
    for template in QUESTIONS:
        head, _, tail = template.partition("{city}")
        if question.startswith(head) and question.endswith(tail):
            return question[len(head) : len(question) - len(tail)]
    return None


def score(tool_calls: list[dict[str, Any]] | None, expected_city: str) -> bool:
    """True when the answer is exactly one ``get_weather`` call for ``expected_city``."""
    if not tool_calls or len(tool_calls) != 1:
        return False
    function = tool_calls[0].get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "")
    except ValueError:
        return False
    return function.get("name") == "get_weather" and arguments == {"city": expected_city}
