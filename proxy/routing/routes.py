"""Routes: which client requests a student may answer, and how (the admin API's JSON; pure).

A route matches what the client asks for, a ``model`` name and optionally ``tags`` that must all
be on the request, and names a ``student``: any OpenAI-compatible endpoint (``stillroom student
serve``, vLLM, a provider's fine-tuned model). Its ``mode``:

* ``off``: the teacher only.
* ``shadow``: the client gets the teacher; ``shadow_rate`` of eligible requests are also sent
  to the student afterwards (bounded queue, ``max_concurrency``, ``timeout_s``) and the pair is
  scored and kept.
* ``canary``: ``percent`` of stable keys (a sticky hash; ``proxy.routing.decide``) get the
  student; the teacher answers the rest and stands behind the student as fallback.
* ``full``: the student answers every eligible request, the teacher is the fallback and is
  still shadowed at ``full_shadow_rate`` to keep measuring drift and collecting data.

Moving up (off → shadow → canary → full) to canary or full needs evidence (``promotion`` in
``proxy.routing.admin``); moving down is always allowed, and ``rollback`` moves a route back to
its ``previous_mode`` when the student's fallback rate over a sliding window passes a threshold.
Stored as a ``route`` document (``storage.documents``) named by ``name``; its version makes a
change visible to every replica sharing the store within ``STILLROOM_ROUTES_REFRESH``.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, Literal, get_args

Mode = Literal["off", "shadow", "canary", "full"]
MODES: Final[tuple[Mode, ...]] = get_args(Mode)
RANK: Final = {mode: n for n, mode in enumerate(MODES)}
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_GRADERS: Final[tuple[dict[str, Any], ...]] = (
    {"type": "tool_call_match", "name": "tool_calls", "arguments": "exact"},
    {"type": "text_similarity", "name": "rouge_l", "evaluation_metric": "rouge_l"},
)


class RouteError(ValueError):
    """A bad route; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Student:
    base_url: str  # includes /v1
    model: str  # the model name sent to the student
    api_key_env: str | None = None  # an environment variable holding its key (never the key)

    @property
    def label(self) -> str:
        return self.model


@dataclass(frozen=True, slots=True)
class Rollback:
    window_s: float = 60.0
    min_requests: int = 10
    max_fallback_rate: float = 0.2


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    model: str
    student: Student
    mode: Mode = "off"
    tags: dict[str, str] = field(default_factory=dict)
    percent: float = 0.0
    shadow_rate: float = 1.0
    full_shadow_rate: float = 0.05
    max_concurrency: int = 4
    timeout_s: float = 30.0
    max_prompt_chars: int = 32_000
    tools: tuple[str, ...] | None = None  # tool names the student knows; None: any
    rollback: Rollback = field(default_factory=Rollback)
    previous_mode: Mode | None = None
    graders: tuple[dict[str, Any], ...] = DEFAULT_GRADERS
    thresholds: dict[str, float] = field(default_factory=dict)  # grader name -> min mean
    min_shadow_pairs: int = 20

    @property
    def served_by(self) -> str:
        return f"student:{self.name}"

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["tools"] = list(self.tools) if self.tools is not None else None
        body["graders"] = list(self.graders)
        return body

    def with_mode(self, mode: Mode, percent: float | None = None) -> Route:
        return replace(
            self,
            mode=mode,
            percent=self.percent if percent is None else percent,
            previous_mode=self.mode if mode != self.mode else self.previous_mode,
        )


FIELDS: Final = (
    "name", "model", "student", "mode", "tags", "percent", "shadow_rate", "full_shadow_rate",
    "max_concurrency", "timeout_s", "max_prompt_chars", "tools", "rollback", "previous_mode",
    "graders", "thresholds", "min_shadow_pairs",
)  # fmt: skip


def parse_route(body: object, *, name: str | None = None) -> Route:
    """Check a route's JSON (``POST /admin/routes``, or a stored one); raises ``RouteError``."""
    if not isinstance(body, dict):
        raise RouteError("the body must be a JSON object")
    for key in body:
        if key not in FIELDS:
            raise RouteError(f"unknown field {key!r:.60}; known: {', '.join(FIELDS)}", key)
    name = name if name is not None else body.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise RouteError("name must be 1-64 letters, digits, '.', '_' or '-'", "name")
    model = body.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise RouteError("model (the model name clients ask for) is required", "model")
    mode = body.get("mode", "off")
    if mode not in MODES:
        raise RouteError(f"mode must be one of {', '.join(MODES)}", "mode")
    previous = body.get("previous_mode")
    if previous is not None and previous not in MODES:
        raise RouteError(f"previous_mode must be one of {', '.join(MODES)}", "previous_mode")
    percent = _number(body, "percent", 0.0, 0.0, 100.0)
    if mode == "canary" and not percent > 0:
        raise RouteError("a canary route needs percent, above 0 and at most 100", "percent")
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools)
    ):
        raise RouteError("tools must be a list of tool names, or null for any", "tools")
    return Route(
        name=name,
        model=model,
        student=_student(body.get("student")),
        mode=mode,
        tags=_tags(body.get("tags", {})),
        percent=percent,
        shadow_rate=_number(body, "shadow_rate", 1.0, 0.0, 1.0),
        full_shadow_rate=_number(body, "full_shadow_rate", 0.05, 0.0, 1.0),
        max_concurrency=int(_number(body, "max_concurrency", 4, 1, 256, integer=True)),
        timeout_s=_number(body, "timeout_s", 30.0, 0.1, 600.0),
        max_prompt_chars=int(
            _number(body, "max_prompt_chars", 32_000, 1, 10_000_000, integer=True)
        ),
        tools=tuple(tools) if tools is not None else None,
        rollback=_rollback(body.get("rollback", {})),
        previous_mode=previous,
        graders=_graders(body.get("graders")),
        thresholds=_thresholds(body.get("thresholds", {})),
        min_shadow_pairs=int(_number(body, "min_shadow_pairs", 20, 0, 1_000_000, integer=True)),
    )


def _number(
    body: dict[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    *,
    integer: bool = False,
) -> float:
    value = body.get(key, default)
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or (integer and not float(value).is_integer())
        or not low <= value <= high
    ):
        kind = "an integer" if integer else "a number"
        raise RouteError(f"{key} must be {kind} from {low:g} to {high:g}", key)
    return float(value)


def _student(value: object) -> Student:
    if not isinstance(value, dict):
        raise RouteError(
            'student is required: {"base_url": "http://host:port/v1", "model": "name"}',
            "student",
        )
    unknown = set(value) - {"base_url", "model", "api_key_env"}
    if unknown:
        raise RouteError(f"unknown student field {sorted(unknown)[0]!r:.60}", "student")
    url = value.get("base_url")
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.password
        or parts.query
    ):
        raise RouteError(
            "student.base_url must be an http(s) URL with /v1 and no credentials", "student"
        )
    model = value.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 256:
        raise RouteError("student.model is required", "student")
    env = value.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", env)):
        raise RouteError(
            "student.api_key_env must name an environment variable (the key is never stored)",
            "student",
        )
    return Student(str(url).rstrip("/"), model, env)


def _tags(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise RouteError("tags must be an object of string keys and values", "tags")
    return dict(value)


def _rollback(value: object) -> Rollback:
    if not isinstance(value, dict):
        raise RouteError("rollback must be an object", "rollback")
    unknown = set(value) - {"window_s", "min_requests", "max_fallback_rate"}
    if unknown:
        raise RouteError(f"unknown rollback field {sorted(unknown)[0]!r:.60}", "rollback")
    try:
        return Rollback(
            window_s=_number(value, "window_s", 60.0, 1.0, 86_400.0),
            min_requests=int(_number(value, "min_requests", 10, 1, 1_000_000, integer=True)),
            max_fallback_rate=_number(value, "max_fallback_rate", 0.2, 0.0, 1.0),
        )
    except RouteError as exc:
        raise RouteError(f"rollback.{exc.message}", "rollback") from None


def _graders(value: object) -> tuple[dict[str, Any], ...]:
    if value is None:
        return DEFAULT_GRADERS
    from proxy.evals.graders import GraderError, parse_grader

    if not isinstance(value, list) or not value:
        raise RouteError("graders must be a non-empty list of grader objects", "graders")
    for grader in value:
        try:
            parse_grader(grader)
        except GraderError as exc:
            raise RouteError(f"graders: {exc}", "graders") from None
    return tuple(value)


def _thresholds(value: object) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and 0 <= v <= 1
        for k, v in value.items()
    ):
        raise RouteError(
            "thresholds must map grader names to a minimum mean from 0 to 1", "thresholds"
        )
    return {k: float(v) for k, v in value.items()}
