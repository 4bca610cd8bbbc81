"""The routes' parts of ``/admin/openapi.json``: paths and component schemas.

Answers mirror ``proxy.routing.routes.Route.to_json`` (plus ``object`` and ``version``) and
``proxy.admin.routes.events_page``/``shadow_page``; bodies mirror ``parse_route`` and
``RouteService.update``. Objects are closed, as in ``proxy.admin._schemas``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.admin._schema_parts import closed as _closed
from proxy.admin._schema_parts import nullable as _nullable
from proxy.admin._schema_parts import ref as _ref
from proxy.admin.routes import (
    KEY_ENV_PATTERN,
    MAX_EVAL_ID,
    ROUTE_EVENT_SCHEMAS,
    ROUTE_NAME_PATTERN,
)
from proxy.routing.routes import MODES

ROUTE_ERRORS = {
    "400-route-update": "bad parameter or body, or a promotion to canary or full without "
    "evidence (code promotion_required)",
    "404-route": "no such route (unknown or malformed name)",
    "409-route-create": "a route with this name exists (code route_exists)",
    "409-route-update": "the route changed since that version was read (code version_conflict)",
}
_GRADER_TYPES = (
    "string_check",
    "text_similarity",
    "json_valid",
    "json_schema",
    "tool_call_match",
    "score_model",
)


def _number(low: float, high: float, description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high, "description": description}


def _integer(low: int, high: int, description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, "description": description}


def _route_fields() -> dict[str, Any]:
    """What a create body may hold (every field of a route); a PATCH holds any of them."""
    name = {"type": "string", "pattern": ROUTE_NAME_PATTERN}
    model = {"type": "string", "minLength": 1, "maxLength": 256}
    mode = {"enum": list(MODES)}
    return {
        "name": name,
        "model": {**model, "description": "the model name clients ask for"},
        "student": {
            "description": "any OpenAI-compatible endpoint; a PATCH replaces it whole",
            **_closed(
                {
                    "base_url": {
                        "type": "string",
                        "minLength": 1,
                        "description": "http(s) URL including /v1, without credentials",
                    },
                    "model": {**model, "description": "the model name sent to the student"},
                    "api_key_env": {
                        "anyOf": [{"type": "null"}, {"type": "string", "pattern": KEY_ENV_PATTERN}],
                        "description": "an environment variable of the server holding the "
                        "student's key (the key itself is never stored)",
                    },
                },
                optional=("api_key_env",),
            ),
        },
        "mode": {
            **mode,
            "description": "off, shadow, canary or full; a new route starts off or in shadow, "
            "and canary or full need evidence (eval_id) or force",
        },
        "tags": {
            "type": "object",
            "propertyNames": {"minLength": 1},
            "additionalProperties": {"type": "string"},
            "description": "tags a request must all carry for the route to match",
        },
        "percent": _number(0, 100, "canary: the share of stable keys the student answers"),
        "shadow_rate": _number(0, 1, "shadow: the share of requests also sent to the student"),
        "full_shadow_rate": _number(0, 1, "full: the share still sent to the teacher too"),
        "max_concurrency": _integer(1, 256, "student requests in flight at most (shadow)"),
        "timeout_s": _number(0.1, 600, "the student's first-byte (and shadow) timeout"),
        "max_prompt_chars": _integer(1, 10_000_000, "longer prompts stay with the teacher"),
        "tools": {
            "anyOf": [
                {"type": "null"},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
            ],
            "description": "the tool names the student knows (null: any)",
        },
        "rollback": {
            "description": "back to previous_mode when the student's fallback rate passes this",
            **_closed(
                {
                    "window_s": _number(1, 86_400, "the sliding window"),
                    "min_requests": _integer(1, 1_000_000, "requests in the window at least"),
                    "max_fallback_rate": _number(0, 1, "the fallback share that rolls back"),
                },
                optional=("window_s", "min_requests", "max_fallback_rate"),
            ),
        },
        "previous_mode": {"anyOf": [{"type": "null"}, mode]},
        "graders": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "name"],
                        "properties": {
                            "type": {"enum": list(_GRADER_TYPES)},
                            "name": {"type": "string", "minLength": 1, "maxLength": 128},
                        },
                    },
                },
            ],
            "description": "how shadow pairs are scored (eval graders; null: the defaults)",
        },
        "thresholds": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
            "description": "grader name -> the minimum mean over shadow pairs for promotion",
        },
        "min_shadow_pairs": _integer(0, 1_000_000, "shadow pairs a promotion needs at least"),
    }


def route_component_schemas() -> dict[str, Any]:
    fields = _route_fields()
    number = {"type": "number"}
    integer = {"type": "integer"}
    mode = {"enum": list(MODES)}
    route = _closed(
        {
            "object": {"const": "route"},
            "name": fields["name"],
            "model": {"type": "string"},
            "student": _closed(
                {
                    "base_url": {"type": "string"},
                    "model": {"type": "string"},
                    "api_key_env": _nullable("string"),
                }
            ),
            "mode": mode,
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "percent": number,
            "shadow_rate": number,
            "full_shadow_rate": number,
            "max_concurrency": integer,
            "timeout_s": number,
            "max_prompt_chars": integer,
            "tools": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"type": "string"}}]},
            "rollback": _closed(
                {"window_s": number, "min_requests": integer, "max_fallback_rate": number}
            ),
            "previous_mode": {"anyOf": [{"type": "null"}, mode]},
            "graders": {"type": "array", "items": {"type": "object"}},
            "thresholds": {"type": "object", "additionalProperties": number},
            "min_shadow_pairs": integer,
            "version": {"type": "integer", "description": "send it back in a PATCH"},
        }
    )
    summary = _closed(
        {
            "mean": _nullable("number"),
            "low": _nullable("number"),
            "high": _nullable("number"),
            "n": integer,
            "method": {"type": "string"},
        }
    )
    return {
        "RouteSpec": {
            "description": "a new route (starts off or in shadow)",
            **_closed(fields, optional=tuple(name for name in fields if name not in _REQUIRED)),
        },
        "RoutePatch": {
            "description": "the fields to change, plus the version read, the evidence for a "
            "promotion (eval_id) or force",
            **_closed(
                {
                    **fields,
                    "version": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "the version read; another one is a 409",
                    },
                    "eval_id": {
                        "anyOf": [
                            {"type": "null"},
                            {"type": "string", "minLength": 1, "maxLength": MAX_EVAL_ID},
                        ],
                        "description": "a passing eval of this route's student (promotion)",
                    },
                    "force": {"type": "boolean", "description": "promote without evidence"},
                },
                optional=(*fields, "version", "eval_id", "force"),
            ),
        },
        "Route": route,
        "RouteList": _closed(
            {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Route")}}
        ),
        "RouteDeleted": _closed(
            {
                "object": {"const": "route.deleted"},
                "name": fields["name"],
                "deleted": {"const": True},
            }
        ),
        "RouteEventList": _closed(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": _closed(
                        {
                            "object": {"const": "route.event"},
                            "id": integer,
                            "route": {"type": "string"},
                            "created_at": number,
                            "message": {"type": "string"},
                            "data": {"type": "object"},
                        }
                    ),
                },
                "last_id": integer,
                "has_more": {"type": "boolean"},
            }
        ),
        "ShadowPairList": _closed(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": _closed(
                        {
                            "object": {"const": "route.shadow_pair"},
                            "id": integer,
                            "route": {"type": "string"},
                            "created_at": number,
                            "capture_id": {
                                **_nullable("string"),
                                "description": "the teacher's capture",
                            },
                            "student_capture_id": {
                                **_nullable("string"),
                                "description": "full mode: the student's own capture",
                            },
                            "scores": {
                                "type": "object",
                                "additionalProperties": _nullable("number"),
                            },
                            "error": _nullable("string"),
                            "student": _nullable("object"),
                            "teacher": _nullable("object"),
                            "student_latency_ms": _nullable("number"),
                            "teacher_latency_ms": _nullable("number"),
                        }
                    ),
                },
                "last_id": integer,
                "has_more": {"type": "boolean"},
                "summary": _closed(
                    {
                        "pairs": integer,
                        "student_failures": integer,
                        "graders": {"type": "object", "additionalProperties": summary},
                    }
                ),
            }
        ),
    }


_REQUIRED = ("name", "model", "student")

Operation = Callable[..., dict[str, Any]]
Query = Callable[[str, dict[str, Any]], dict[str, Any]]
Ok = Callable[[str, str], dict[str, Any]]
Links = Callable[..., dict[str, Any]]


def route_paths(operation: Operation, query: Query, ok: Ok, links: Links) -> dict[str, Any]:
    """The ``/admin/routes`` paths, built with ``proxy.admin.openapi``'s helpers."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": ROUTE_NAME_PATTERN},
    }
    by_name = ("getRoute", "updateRoute", "deleteRoute", "listRouteEvents", "getRouteShadow")
    pages = [query(param, schema) for param, schema in ROUTE_EVENT_SCHEMAS.items()]
    return {
        "/admin/routes": {
            "get": operation(
                "listRoutes",
                "Every route, by name",
                {
                    **ok("the routes", "RouteList"),
                    "links": links("/data/0/name", *by_name, param="name"),
                },
                ("400",),
            ),
            "post": operation(
                "createRoute",
                "Create a route (mode off or shadow); it applies to the next request",
                {**ok("the route", "Route"), "links": links("/name", *by_name, param="name")},
                ("400", "409-route-create", "413"),
                body="RouteSpec",
                ok_status="201",
            ),
        },
        "/admin/routes/{name}": {
            "parameters": [name],
            "get": operation(
                "getRoute",
                "One route, with its version",
                ok("the route", "Route"),
                ("400", "404-route"),
            ),
            "patch": operation(
                "updateRoute",
                "Change a route's fields or mode; moving up to canary or full needs eval_id "
                "(a passing eval of its student) and enough good shadow pairs, or force",
                {
                    **ok("the changed route", "Route"),
                    "links": links("/name", *by_name, param="name"),
                },
                ("400-route-update", "404-route", "409-route-update", "413"),
                body="RoutePatch",
            ),
            "delete": operation(
                "deleteRoute",
                "Delete a route with its events and shadow pairs",
                ok("deleted", "RouteDeleted"),
                ("400", "404-route"),
            ),
        },
        "/admin/routes/{name}/events": {
            "parameters": [name],
            "get": operation(
                "listRouteEvents",
                "A route's events (changes, promotions, rollbacks), oldest first; next page: "
                "after=<last_id>",
                ok("a page of events", "RouteEventList"),
                ("400", "404-route"),
                parameters=pages,
            ),
        },
        "/admin/routes/{name}/shadow": {
            "parameters": [name],
            "get": operation(
                "getRouteShadow",
                "A route's shadow pairs, oldest first, and per grader the mean with its 95% "
                "interval over them; next page: after=<last_id>",
                ok("a page of shadow pairs and the summary", "ShadowPairList"),
                ("400", "404-route"),
                parameters=pages,
            ),
        },
    }
