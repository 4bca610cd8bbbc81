"""The admin API's filter and page parameters: their JSON Schemas and the check that holds to them.

One table describes each parameter once. ``/admin/openapi.json`` publishes these schemas, and
every request is checked against the very same schemas before ``storage.query`` parses it, so
what the document promises and what the server accepts cannot drift apart (schemathesis checks
both directions, T19). The checks here are deliberately a little stricter than
``storage.query`` (which the CLI also uses): booleans are ``true``/``false`` only, times are
unix seconds or an ISO 8601 date/date-time, and patterns match the whole value.

Query strings carry every value as text; JSON bodies (the bulk routes) carry integers and
booleans as JSON numbers and booleans, and ``tag`` as a string or a list of strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from storage.datasets import SPLITS, DatasetSpec, Split, parse_spec
from storage.export import FORMATS
from storage.jobs import JOB_ID_PATTERN
from storage.models import OUTCOMES
from storage.query import (
    DEFAULT_PAGE,
    ENDPOINTS,
    FEEDBACK_VALUES,
    MAX_PAGE,
    MAX_SEARCH,
    MAX_TAG_VALUE,
    MAX_TAGS_PER_FILTER,
    CaptureFilter,
    CapturePatch,
    Order,
    QueryError,
    parse_filter,
    parse_limit,
    parse_order,
    parse_patch,
)

# Patterns are ECMA-262 and Python alike; they are always matched against the whole value.
CAPTURE_ID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
TAG_KEY_PATTERN: Final = "^[A-Za-z0-9_.:/-]{1,64}$"
TAG_VALUE_PATTERN: Final = "^[^\\x00-\\x1f\\x7f]*$"
# ``key:value``: the key ends at the first colon, so it cannot hold one here.
TAG_FILTER_PATTERN: Final = f"^[A-Za-z0-9_./-]{{1,64}}:[^\\x00-\\x1f\\x7f]{{0,{MAX_TAG_VALUE}}}$"
TIME_PATTERN: Final = (
    "^([0-9]{1,11}(\\.[0-9]{1,9})?"
    "|[0-9]{4}-[0-9]{2}-[0-9]{2}"
    "([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)$"
)

_TIME_DOC = "unix seconds, or an ISO 8601 date or date-time (no zone means UTC)"

FILTER_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "tag": {
        "type": "array",
        "maxItems": MAX_TAGS_PER_FILTER,
        "items": {"type": "string", "pattern": TAG_FILTER_PATTERN},
        "description": "key:value; repeatable, every tag must match",
    },
    "model": {
        "type": "string",
        "minLength": 1,
        "maxLength": 256,
        "description": "the returned model, else the requested one",
    },
    "endpoint": {"type": "string", "enum": list(ENDPOINTS)},
    "outcome": {"type": "string", "enum": list(OUTCOMES)},
    "status": {
        "type": "integer",
        "minimum": 100,
        "maximum": 599,
        "description": "upstream HTTP status",
    },
    "since": {
        "type": "string",
        "pattern": TIME_PATTERN,
        "description": f"created at or after: {_TIME_DOC}",
    },
    "until": {
        "type": "string",
        "pattern": TIME_PATTERN,
        "description": f"created before: {_TIME_DOC}",
    },
    "has_tool_calls": {"type": "boolean"},
    "feedback": {
        "type": "string",
        "enum": list(FEEDBACK_VALUES),
        "description": "positive (score > 0), negative (< 0), neutral (= 0), any, none",
    },
    "excluded": {"type": "boolean", "description": "marked excluded from training"},
    "search": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_SEARCH,
        "description": "full-text query over prompt and answer text (SQLite FTS5 syntax)",
    },
}

PAGE_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "after": {
        "type": "string",
        "pattern": CAPTURE_ID_PATTERN,
        "description": "the last id of the previous page (exclusive)",
    },
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    "order": {"type": "string", "enum": ["desc", "asc"], "default": "desc"},
}

_COMPILED: dict[str, re.Pattern[str]] = {}


def matches(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern`` whole (as JSON Schema's anchored patterns do)."""
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        compiled = _COMPILED[pattern] = re.compile(pattern)
    return compiled.fullmatch(value) is not None


def is_capture_id(value: str) -> bool:
    return matches(CAPTURE_ID_PATTERN, value)


def is_tag_key(value: object) -> bool:
    return isinstance(value, str) and matches(TAG_KEY_PATTERN, value)


def parse_list_params(
    params: Mapping[str, Sequence[str]],
) -> tuple[CaptureFilter, str | None, int, Order]:
    """``GET /admin/captures``: the filter, ``after``, ``limit`` and ``order``."""
    where = parse_query_filter(params, page=True)
    after = _single(params, "after")
    limit = _single(params, "limit")
    order = _single(params, "order")
    return where, after, parse_limit(limit), parse_order(order)


def parse_query_filter(params: Mapping[str, Sequence[str]], *, page: bool = False) -> CaptureFilter:
    """A filter from query parameters, checked against the published schemas first."""
    allowed = FILTER_SCHEMAS | PAGE_SCHEMAS if page else FILTER_SCHEMAS
    for name, raws in params.items():
        schema = allowed.get(name)
        if schema is None:
            raise QueryError(
                f"unknown parameter {name!r:.80}; known: {', '.join(allowed)}", param=name
            )
        if schema["type"] == "array":
            if len(raws) > schema["maxItems"]:
                raise QueryError(f"at most {schema['maxItems']} {name} parameters", param=name)
            for raw in raws:
                _check_text(name, raw, schema["items"])
        else:
            if len(raws) > 1:
                raise QueryError(f"{name} given more than once", param=name)
            for raw in raws:
                _check_text(name, raw, schema)
    return parse_filter(params, ignore=PAGE_SCHEMAS)


def parse_body_filter(value: object, param: str = "filter") -> CaptureFilter:
    """A filter from a JSON object (the bulk routes): the same names, JSON-typed values."""
    if not isinstance(value, dict):
        raise QueryError(f"{param} must be an object of filter parameters", param=param)
    params: dict[str, list[str]] = {}
    for name, item in value.items():
        schema = FILTER_SCHEMAS.get(name)
        if schema is None:
            known = ", ".join(FILTER_SCHEMAS)
            raise QueryError(
                f"unknown filter {name!r:.80}; known: {known}", param=f"{param}.{name}"
            )
        if schema["type"] == "array":
            items = [item] if isinstance(item, str) else item
            if not isinstance(items, list) or len(items) > schema["maxItems"]:
                raise QueryError(
                    f"{name} must be a string or a list of at most {schema['maxItems']} strings",
                    param=f"{param}.{name}",
                )
            params[name] = [_json_to_text(f"{param}.{name}", v, schema["items"]) for v in items]
        else:
            params[name] = [_json_to_text(f"{param}.{name}", item, schema)]
    try:
        return parse_filter(params)
    except QueryError as exc:
        raise QueryError(
            exc.message, param=f"{param}.{exc.param}" if exc.param else param
        ) from None


def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    raws = params.get(name)
    return raws[0] if raws else None


def _check_text(name: str, raw: str, schema: Mapping[str, Any]) -> None:
    """A query-string value against a scalar schema (string, integer or boolean)."""
    kind = schema["type"]
    if kind == "integer":
        if not matches("[0-9]{1,9}", raw):
            raise QueryError(f"{name} must be an integer, got {raw!r:.80}", param=name)
        _check_range(name, int(raw), schema)
    elif kind == "boolean":
        if raw not in ("true", "false"):
            raise QueryError(f"{name} must be true or false, got {raw!r:.80}", param=name)
    else:
        _check_string(name, raw, schema)


def _json_to_text(name: str, value: object, schema: Mapping[str, Any]) -> str:
    """A JSON value against a scalar schema; its query-string form for ``parse_filter``."""
    kind = schema["type"]
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise QueryError(f"{name} must be an integer", param=name)
        _check_range(name, value, schema)
        return str(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise QueryError(f"{name} must be true or false", param=name)
        return "true" if value else "false"
    if not isinstance(value, str):
        raise QueryError(f"{name} must be a string", param=name)
    _check_string(name, value, schema)
    return value


def _check_range(name: str, value: int, schema: Mapping[str, Any]) -> None:
    if not schema["minimum"] <= value <= schema["maximum"]:
        raise QueryError(
            f"{name} must be {schema['minimum']}-{schema['maximum']}, got {value}", param=name
        )


def _check_string(name: str, value: str, schema: Mapping[str, Any]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        raise QueryError(
            f"{name} must be one of {', '.join(schema['enum'])}, got {value!r:.80}", param=name
        )
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        raise QueryError(
            f"{name} must be {schema.get('minLength', 0)}-{schema['maxLength']} characters",
            param=name,
        )
    if "pattern" in schema and not matches(schema["pattern"], value):
        raise QueryError(f"{name} is malformed: {value!r:.80}", param=name)


def parse_body_patch(body: object, param: str | None = None) -> CapturePatch:
    """A curation edit (``storage.query.parse_patch``), tag keys matched whole first.

    ``param`` prefixes the culprit's name when the edit is nested (``patch`` in a bulk body).
    """
    try:
        if isinstance(body, dict):
            add = body.get("add_tags")
            remove = body.get("remove_tags")
            keys = list(add) if isinstance(add, dict) else []
            if any(not is_tag_key(key) for key in keys):
                raise QueryError(
                    "add_tags keys must be 1-64 letters, digits or _ . : - /", param="add_tags"
                )
            if isinstance(remove, list) and any(not is_tag_key(key) for key in remove):
                raise QueryError("remove_tags must be a list of tag keys", param="remove_tags")
        return parse_patch(body)
    except QueryError as exc:
        if param is None:
            raise
        raise QueryError(
            exc.message, param=f"{param}.{exc.param}" if exc.param else param
        ) from None


# -- datasets ----------------------------------------------------------------------------------

# ``storage.datasets.check_name``: 1-64 of a-z 0-9 - _ . starting with a letter or digit.
DATASET_NAME_PATTERN: Final = "^[a-z0-9][a-z0-9._-]{0,63}$"
DEFAULT_EXPORT_FORMAT: Final = "openai-chat"
DEFAULT_EXPORT_SPLIT: Final = "train"

EXPORT_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "format": {
        "type": "string",
        "enum": list(FORMATS),
        "default": DEFAULT_EXPORT_FORMAT,
        "description": "openai-chat (OpenAI SFT chat), openai-dpo (OpenAI preference pairs), "
        "hf (Hugging Face datasets / TRL messages), hf-prompt-completion (TRL prompt and "
        "completion: only the answer is trained)",
    },
    "split": {
        "type": "string",
        "enum": list(SPLITS),
        "default": DEFAULT_EXPORT_SPLIT,
        "description": "which split to export",
    },
}


def is_dataset_name(value: str) -> bool:
    return matches(DATASET_NAME_PATTERN, value)


def parse_export_params(params: Mapping[str, Sequence[str]]) -> tuple[str, Split]:
    """``GET /admin/datasets/{name}/export``: the format and the split (with their defaults)."""
    for name, raws in params.items():
        schema = EXPORT_SCHEMAS.get(name)
        if schema is None:
            known = ", ".join(EXPORT_SCHEMAS)
            raise QueryError(f"unknown parameter {name!r:.80}; known: {known}", param=name)
        if len(raws) > 1:
            raise QueryError(f"{name} given more than once", param=name)
        _check_string(name, raws[0], schema)
    fmt = _single(params, "format") or DEFAULT_EXPORT_FORMAT
    split = _single(params, "split") or DEFAULT_EXPORT_SPLIT
    return fmt, cast(Split, split)


def parse_body_spec(body: object) -> DatasetSpec:
    """``POST /admin/datasets``: ``storage.datasets.parse_spec`` after the published schema's
    own check of the filter (JSON-typed, as in the bulk routes; culprits named ``filter.x``)."""
    if isinstance(body, dict):
        if "filter" in body:
            parse_body_filter(body["filter"])
        tokens = body.get("max_tokens")
        if isinstance(tokens, float) and tokens.is_integer():  # 4096.0 is an integer in JSON
            body = {**body, "max_tokens": int(tokens)}
    return parse_spec(body)


# -- training jobs (proxy.admin.jobs) -------------------------------------------------------------

JOB_LIST_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "after": {
        "type": "string",
        "pattern": JOB_ID_PATTERN,
        "description": "the last id of the previous page (exclusive)",
    },
    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
}
JOB_EVENT_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "after": {
        "type": "integer",
        "minimum": 0,
        "maximum": 999_999_999,
        "default": 0,
        "description": "the last event id already read (events come oldest first)",
    },
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}


def parse_page_params(
    params: Mapping[str, Sequence[str]], schemas: Mapping[str, Mapping[str, Any]]
) -> dict[str, str | int]:
    """Query parameters against ``schemas`` (scalars, each at most once), with the defaults;
    integers come back as ``int``."""
    out: dict[str, str | int] = {}
    for name, raws in params.items():
        schema = schemas.get(name)
        if schema is None:
            raise QueryError(
                f"unknown parameter {name!r:.80}; known: {', '.join(schemas)}", param=name
            )
        if len(raws) > 1:
            raise QueryError(f"{name} given more than once", param=name)
        _check_text(name, raws[0], schema)
        out[name] = int(raws[0]) if schema["type"] == "integer" else raws[0]
    for name, schema in schemas.items():
        if name not in out and "default" in schema:
            out[name] = schema["default"]
    return out
