"""JSON for the graders: parsing answers, the request's ``response_format``, compiled schema
validators (jsonschema-rs, cached per schema, remote ``$ref`` never fetched) and a hashable,
type-strict form of parsed JSON for comparing tool-call arguments.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, cast

import orjson

from proxy.types import JSONObject

if TYPE_CHECKING:
    import jsonschema_rs

NOT_JSON = object()
_MAX_VALIDATORS = 256


def loads(text: str | None) -> object:
    """The parsed JSON, or ``NOT_JSON``."""
    if text is None:
        return NOT_JSON
    try:
        return cast(object, orjson.loads(text))
    except orjson.JSONDecodeError:
        return NOT_JSON


def is_json_document(text: str | None) -> bool:
    """The text is a JSON object or array (a bare ``42`` or ``"yes"`` is plain text here)."""
    return isinstance(loads(text), dict | list)


def asks_for_json(request: JSONObject | None) -> bool:
    """The request's ``response_format`` is ``json_object`` or ``json_schema``."""
    response_format = (request or {}).get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def request_schema(request: JSONObject | None) -> object:
    """The request's ``response_format.json_schema.schema``, or ``None``."""
    response_format = (request or {}).get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    return spec.get("schema") if isinstance(spec, dict) else None


def canonical(value: object) -> str:
    """Keys sorted, no whitespace: the cache key of a schema's validator."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def schema_error(schema: JSONObject) -> str | None:
    """Why ``schema`` cannot be compiled (the error's first line), or ``None`` when it can."""
    import jsonschema_rs

    try:
        jsonschema_rs.validator_for(schema, offline=True)
    except (ValueError, jsonschema_rs.ReferencingError) as exc:  # ValidationError: ValueError
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


@lru_cache(maxsize=_MAX_VALIDATORS)
def validator(schema: str) -> jsonschema_rs.Validator | None:
    """The compiled validator for a canonical schema text, or ``None`` when it cannot be
    compiled (importing jsonschema-rs costs ~15 ms, so on first use)."""
    import jsonschema_rs

    try:
        return jsonschema_rs.validator_for(schema, offline=True)
    except (ValueError, jsonschema_rs.ReferencingError):  # ValidationError is a ValueError
        return None


def frozen(value: object, raw: str) -> object:
    """A hashable, type-strict form of parsed JSON (``True`` stays apart from ``1``);
    text that is not JSON stays text."""
    if value is NOT_JSON:
        return ("text", raw.strip())
    if isinstance(value, dict):
        return ("object", frozenset((k, frozen(v, raw)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(frozen(v, raw) for v in value))
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, float) and value.is_integer():
        return ("number", int(value))
    if isinstance(value, int | float):
        return ("number", value)
    return ("string", value)
