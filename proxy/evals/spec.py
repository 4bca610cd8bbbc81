"""What an eval runs: ``EvalSpec`` and its check, ``parse_eval_spec`` (``POST /admin/evals``'
body; ``stillroom eval run`` builds the same), raising ``EvalError`` with the field's name.

The student (and the judge) is an ``Endpoint``: a base URL with ``/v1``, a model name, and the
name of an environment variable holding its key (never the key). The default graders are exact
match, tool calls, JSON validity, ROUGE-L and chrF.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from proxy.evals.graders import GraderError, parse_graders
from proxy.evals.stats import parse_thresholds

DEFAULT_GRADERS: Final[tuple[dict[str, Any], ...]] = (
    {"type": "string_check", "name": "exact_match", "operation": "eq"},
    {"type": "tool_call_match", "name": "tool_calls", "arguments": "exact"},
    {"type": "json_valid", "name": "json_valid"},
    {"type": "text_similarity", "name": "rouge_l", "evaluation_metric": "rouge_l"},
    {"type": "text_similarity", "name": "chrf", "evaluation_metric": "chrf"},
)
SPLITS: Final = ("holdout", "validation", "train")

Progress = Callable[[int, int], None]


class EvalError(ValueError):
    """A bad eval request, or one that cannot run; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_eval") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str  # with /v1
    model: str
    api_key_env: str | None = None

    def key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass(frozen=True, slots=True)
class EvalSpec:
    dataset: str
    student: Endpoint
    split: str = "holdout"
    graders: tuple[dict[str, Any], ...] = DEFAULT_GRADERS
    thresholds: dict[str, Any] = field(default_factory=dict)
    judge: Endpoint | None = None  # where score_model graders send the judge (the proxy)
    limit: int | None = None
    concurrency: int = 4
    timeout_s: float = 60.0
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["graders"] = list(self.graders)
        return body


def parse_eval_spec(body: object) -> EvalSpec:
    """Check ``POST /admin/evals``' body (the CLI builds the same); raises ``EvalError``."""
    if not isinstance(body, dict):
        raise EvalError("the body must be a JSON object")
    known = {"dataset", "student", "split", "graders", "thresholds", "judge", "limit",
             "concurrency", "timeout_s", "name"}  # fmt: skip
    for key in body:
        if key not in known:
            raise EvalError(f"unknown field {key!r:.60}; known: {', '.join(sorted(known))}", key)
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise EvalError("dataset is required", "dataset")
    split = body.get("split", "holdout")
    if split not in SPLITS:
        raise EvalError(f"split must be one of {', '.join(SPLITS)}", "split")
    graders = body.get("graders", list(DEFAULT_GRADERS))
    try:
        parsed = parse_graders(graders)
        thresholds = body.get("thresholds", {})
        parse_thresholds(thresholds, {g.name for g in parsed})
    except GraderError as exc:
        raise EvalError(exc.message, exc.param) from None
    judge = _endpoint(body["judge"], "judge") if body.get("judge") is not None else None
    if any(g.needs_judge for g in parsed) and judge is None:
        raise EvalError("a score_model grader needs judge: {base_url, model}", "judge")
    return EvalSpec(
        dataset=dataset,
        student=_endpoint(body.get("student"), "student"),
        split=split,
        graders=tuple(graders),
        thresholds=dict(thresholds),
        judge=judge,
        limit=_int(body, "limit", None, 1, 1_000_000),
        concurrency=_int(body, "concurrency", 4, 1, 64) or 4,
        timeout_s=_float(body, "timeout_s", 60.0, 0.1, 3600.0),
        name=_name(body.get("name")),
    )


def _endpoint(value: object, param: str) -> Endpoint:
    from proxy.routing.routes import RouteError, _student

    try:
        student = _student(value)
    except RouteError as exc:
        raise EvalError(exc.message.replace("student", param), param) from None
    return Endpoint(student.base_url, student.model, student.api_key_env)


def _int(body: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise EvalError(f"{key} must be an integer from {low} to {high}", key)
    return value


def _float(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise EvalError(f"{key} must be a number from {low:g} to {high:g}", key)
    return float(value)


def _name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise EvalError("name must be 1-128 characters", "name")
    return value
