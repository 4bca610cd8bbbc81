"""Finding and curating stored captures: filters, pages, edits and stats (the query contract).

Every store implements the same read/curate surface (``storage.base.Store``); the admin API,
the Stored Completions API and the CLI all build a ``CaptureFilter`` with ``parse_filter`` from
``name -> [values]`` parameters, so one filter language is validated in one place:

=================  =========================================================================
``tag``            ``key:value``, repeatable, every one must match
``model``          the returned model, else the requested one
``endpoint``       ``chat/completions``, ``responses``, ``completions``, ``embeddings``
``outcome``        ``completed``, ``upstream_error``, ``upstream_timeout``,
                   ``client_disconnected``, ``interrupted``
``status``         upstream HTTP status, 100-599
``since``          created at or after: unix seconds or ISO 8601 (``2026-11-28T10:00:00Z``)
``until``          created before (same forms)
``has_tool_calls`` ``true`` / ``false``
``feedback``       ``positive`` (score > 0), ``negative`` (< 0), ``neutral`` (= 0), ``any``,
                   ``none`` (no feedback yet)
``excluded``       ``true`` / ``false``: marked excluded from training
``search``         full-text query over prompt and answer text (SQLite FTS5 syntax; plain
                   words match captures containing all of them)
=================  =========================================================================

Pages are newest first by default and cursor-paginated by capture id (ids are time-sortable
UUIDv7): ``after`` is the last id of the previous page.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from storage.models import OUTCOMES, CaptureRecord, Outcome

Feedback = Literal["positive", "negative", "neutral", "any", "none"]
FEEDBACK_VALUES: tuple[Feedback, ...] = get_args(Feedback)
Order = Literal["desc", "asc"]
ENDPOINTS: tuple[str, ...] = ("chat/completions", "responses", "completions", "embeddings")

MAX_PAGE = 1000  # the largest page a caller may ask for
DEFAULT_PAGE = 50
MAX_TAGS_PER_FILTER = 20
MAX_TAG_KEY = 64
MAX_TAG_VALUE = 256
MAX_NOTE = 4096
MAX_SEARCH = 512

_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.:\-/]{1,64}$")


class QueryError(ValueError):
    """A filter, cursor or edit that cannot be used; ``param`` names the culprit."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET
"""In a ``CapturePatch``: leave the field as it is (``None`` clears it)."""


@dataclass(frozen=True, slots=True)
class CaptureFilter:
    """Conditions a capture must all meet. The empty filter matches every capture."""

    tags: tuple[tuple[str, str], ...] = ()
    model: str | None = None
    endpoint: str | None = None
    outcome: Outcome | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None
    has_tool_calls: bool | None = None
    feedback: Feedback | None = None
    excluded: bool | None = None
    search: str | None = None
    # Scoping, never parsed from parameters: only captures made with this key fingerprint.
    key_fingerprint: str | None = None
    # Only completed chat completions that carry a response id (the Stored Completions list).
    stored_completions: bool = False

    def is_empty(self) -> bool:
        return self == CaptureFilter()


@dataclass(frozen=True, slots=True)
class Curation:
    """What people added to a capture after the fact; the teacher's record stays untouched."""

    feedback_score: float | None = None  # -1 … 1
    feedback_note: str | None = None
    excluded: bool = False  # keep out of training datasets
    corrected_response: dict[str, Any] | None = None  # preferred by export over the original
    updated_at: float | None = None  # last curation edit (unix seconds)


@dataclass(frozen=True, slots=True)
class StoredCapture:
    record: CaptureRecord
    curation: Curation


@dataclass(frozen=True, slots=True)
class Page:
    items: list[StoredCapture]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        return self.items[-1].record.id if self.items else None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A Responses API chain, oldest first, ending with the capture asked about."""

    captures: list[StoredCapture]
    complete: bool  # False when the chain's start (some previous_response_id) was not captured
    missing_response_id: str | None = None  # the previous_response_id that was not found


@dataclass(frozen=True, slots=True)
class CapturePatch:
    """A curation edit. ``UNSET`` leaves a field alone; ``None`` clears it."""

    add_tags: Mapping[str, str] = field(default_factory=dict)
    remove_tags: tuple[str, ...] = ()
    feedback_score: float | None | _Unset = UNSET
    feedback_note: str | None | _Unset = UNSET
    excluded: bool | _Unset = UNSET
    corrected_response: dict[str, Any] | None | _Unset = UNSET

    def is_empty(self) -> bool:
        return self == CapturePatch()


@dataclass(frozen=True, slots=True)
class Stats:
    captures: int
    by_model: dict[str, int]  # "" for captures without a model
    by_endpoint: dict[str, int]
    by_outcome: dict[str, int]
    by_tag: dict[str, dict[str, int]]  # key -> value -> count (top values per key)
    by_day: dict[str, int]  # "YYYY-MM-DD" (UTC) -> count
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    with_feedback: int
    excluded: int
    store_bytes: int  # database files on disk (main file + WAL), or the server's figure

    def to_json(self) -> dict[str, Any]:
        return {
            "captures": self.captures,
            "by_model": self.by_model,
            "by_endpoint": self.by_endpoint,
            "by_outcome": self.by_outcome,
            "by_tag": self.by_tag,
            "by_day": self.by_day,
            "tokens": {
                "input": self.input_tokens,
                "output": self.output_tokens,
                "total": self.total_tokens,
                "cached": self.cached_tokens,
                "reasoning": self.reasoning_tokens,
            },
            "with_feedback": self.with_feedback,
            "excluded": self.excluded,
            "store_bytes": self.store_bytes,
        }


# -- parsing ------------------------------------------------------------------------------------

FILTER_PARAMS: tuple[str, ...] = (
    "tag",
    "model",
    "endpoint",
    "outcome",
    "status",
    "since",
    "until",
    "has_tool_calls",
    "feedback",
    "excluded",
    "search",
)
_REPEATABLE = {"tag"}


def is_capture_id(value: str) -> bool:
    """A well-formed capture id (lowercase UUIDv7 text)."""
    return bool(_ID_RE.fullmatch(value))


def check_capture_id(value: str, param: str = "id") -> str:
    if not isinstance(value, str) or not is_capture_id(value):
        raise QueryError(f"{param} must be a capture id (a UUIDv7), got {value!r:.80}", param=param)
    return value


def parse_bool(raw: str, param: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise QueryError(f"{param} must be true or false, got {raw!r:.80}", param=param)


def parse_time(raw: str, param: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (no zone means UTC)."""
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise QueryError(
                f"{param} must be unix seconds or an ISO 8601 time, got {raw!r:.80}", param=param
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(value) or value < 0 or value > 1e11:
        raise QueryError(f"{param} is out of range: {raw!r:.80}", param=param)
    return value


def parse_tag(raw: str, param: str = "tag") -> tuple[str, str]:
    """``key:value`` (a filter tag)."""
    key, sep, value = raw.partition(":")
    key = key.strip()
    value = value.strip()
    if not sep or not key:
        raise QueryError(f"{param} must look like key:value, got {raw!r:.80}", param=param)
    check_tag(key, value, param)
    return key, value


def check_tag(key: str, value: str, param: str = "tags") -> None:
    if not isinstance(key, str) or not _TAG_KEY_RE.fullmatch(key):
        raise QueryError(
            f"tag key {key!r:.80} must be 1-{MAX_TAG_KEY} letters, digits or _ . : - /",
            param=param,
        )
    if not isinstance(value, str) or len(value) > MAX_TAG_VALUE:
        raise QueryError(
            f"tag {key!r} value must be a string of at most {MAX_TAG_VALUE} characters",
            param=param,
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise QueryError(f"tag {key!r} value contains control characters", param=param)


def parse_filter(
    params: Mapping[str, Sequence[str]], *, ignore: Iterable[str] = ()
) -> CaptureFilter:
    """Build a filter from query-style parameters; unknown names are refused.

    ``ignore`` names parameters the caller handles itself (``after``, ``limit``, ``order``).
    """
    skipped = set(ignore)
    values: dict[str, Any] = {}
    tags: list[tuple[str, str]] = []
    for name, raws in params.items():
        if name in skipped:
            continue
        if name not in FILTER_PARAMS:
            known = ", ".join(FILTER_PARAMS)
            raise QueryError(f"unknown filter {name!r:.80}; known: {known}", param=name)
        if not raws:
            continue
        if len(raws) > 1 and name not in _REPEATABLE:
            raise QueryError(f"{name} given more than once", param=name)
        if name == "tag":
            if len(raws) > MAX_TAGS_PER_FILTER:
                raise QueryError(f"at most {MAX_TAGS_PER_FILTER} tag filters", param=name)
            tags.extend(parse_tag(raw) for raw in raws)
            continue
        raw = raws[0]
        values[name] = _parse_one(name, raw)
    return CaptureFilter(tags=tuple(dict.fromkeys(tags)), **values)


def filter_json(where: CaptureFilter) -> dict[str, Any]:
    """The filter as parameters ``parse_filter`` reads back (scoping fields are left out)."""
    out: dict[str, Any] = {}
    if where.tags:
        out["tag"] = [f"{key}:{value}" for key, value in where.tags]
    for name in FILTER_PARAMS[1:]:
        value = getattr(where, name)
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _parse_one(name: str, raw: str) -> Any:
    if not isinstance(raw, str):
        raise QueryError(f"{name} must be a string", param=name)
    if name in ("model",):
        if not raw or len(raw) > 256:
            raise QueryError(f"{name} must be 1-256 characters", param=name)
        return raw
    if name == "endpoint":
        if raw not in ENDPOINTS:
            raise QueryError(f"endpoint must be one of {', '.join(ENDPOINTS)}", param=name)
        return raw
    if name == "outcome":
        if raw not in OUTCOMES:
            raise QueryError(f"outcome must be one of {', '.join(OUTCOMES)}", param=name)
        return raw
    if name == "status":
        if not (raw.isascii() and raw.isdigit()) or not 100 <= int(raw) <= 599:
            raise QueryError(f"status must be an HTTP status 100-599, got {raw!r:.80}", param=name)
        return int(raw)
    if name in ("since", "until"):
        return parse_time(raw, name)
    if name in ("has_tool_calls", "excluded"):
        return parse_bool(raw, name)
    if name == "feedback":
        if raw not in FEEDBACK_VALUES:
            raise QueryError(f"feedback must be one of {', '.join(FEEDBACK_VALUES)}", param=name)
        return raw
    if name == "search":
        text = raw.strip()
        if not text or len(text) > MAX_SEARCH:
            raise QueryError(f"search must be 1-{MAX_SEARCH} characters", param=name)
        return text
    raise AssertionError(name)  # pragma: no cover - FILTER_PARAMS and this switch agree


def parse_limit(raw: str | None, *, default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise QueryError(f"limit must be an integer 1-{maximum}, got {raw!r:.80}", param="limit")
    return int(raw)


def parse_order(raw: str | None) -> Order:
    if raw is None:
        return "desc"
    if raw not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, got {raw!r:.80}", param="order")
    return "asc" if raw == "asc" else "desc"


def parse_patch(body: object) -> CapturePatch:
    """A curation edit from its JSON object (the admin API's PATCH body).

    ``{"add_tags": {"k": "v"}, "remove_tags": ["k"], "feedback": {"score": 1, "note": "…"}
    | null, "excluded": true, "corrected_response": {…} | null}``
    """
    if not isinstance(body, dict):
        raise QueryError("the body must be a JSON object", param=None)
    known = {"add_tags", "remove_tags", "feedback", "excluded", "corrected_response"}
    for name in body:
        if name not in known:
            raise QueryError(
                f"unknown field {name!r:.80}; known: {', '.join(sorted(known))}", param=name
            )
    kwargs: dict[str, Any] = {}
    add = body.get("add_tags", {})
    if not isinstance(add, dict):
        raise QueryError("add_tags must be an object of key: value strings", param="add_tags")
    for key, value in add.items():
        check_tag(key, value, "add_tags")
    if len(add) > MAX_TAGS_PER_FILTER:
        raise QueryError(f"at most {MAX_TAGS_PER_FILTER} tags per edit", param="add_tags")
    kwargs["add_tags"] = dict(add)
    remove = body.get("remove_tags", [])
    if not isinstance(remove, list) or not all(isinstance(k, str) for k in remove):
        raise QueryError("remove_tags must be a list of tag keys", param="remove_tags")
    for key in remove:
        check_tag(key, "", "remove_tags")
    kwargs["remove_tags"] = tuple(dict.fromkeys(remove))
    if "feedback" in body:
        feedback = body["feedback"]
        if feedback is None:
            kwargs["feedback_score"] = None
            kwargs["feedback_note"] = None
        else:
            kwargs.update(_parse_feedback(feedback))
    if "excluded" in body:
        excluded = body["excluded"]
        if not isinstance(excluded, bool):
            raise QueryError("excluded must be true or false", param="excluded")
        kwargs["excluded"] = excluded
    if "corrected_response" in body:
        corrected = body["corrected_response"]
        if corrected is not None and not isinstance(corrected, dict):
            raise QueryError(
                "corrected_response must be a response object or null", param="corrected_response"
            )
        kwargs["corrected_response"] = corrected
    patch = CapturePatch(**kwargs)
    if patch.is_empty():
        raise QueryError(
            "nothing to change: give add_tags, remove_tags, feedback, excluded or "
            "corrected_response",
            param=None,
        )
    return patch


def _parse_feedback(feedback: object) -> dict[str, Any]:
    if not isinstance(feedback, dict):
        raise QueryError("feedback must be an object {score, note} or null", param="feedback")
    unknown = set(feedback) - {"score", "note"}
    if unknown:
        raise QueryError(f"unknown feedback field {sorted(unknown)[0]!r:.80}", param="feedback")
    if "score" not in feedback:
        raise QueryError("feedback needs a score from -1 to 1", param="feedback.score")
    score = feedback["score"]
    if (
        isinstance(score, bool)
        or not isinstance(score, int | float)
        or not math.isfinite(score)
        or not -1 <= score <= 1
    ):
        raise QueryError("feedback score must be a number from -1 to 1", param="feedback.score")
    note = feedback.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise QueryError(
            f"feedback note must be a string of at most {MAX_NOTE} characters",
            param="feedback.note",
        )
    return {"feedback_score": float(score), "feedback_note": note}
