"""``/admin/openapi.json``: the admin API described as OpenAPI 3.1, written out as Python data.

Parameter schemas come from ``proxy.admin.params`` (the same ones requests are checked
against), bodies and answers from ``proxy.admin._schemas``. tests/test_admin_schema.py runs
schemathesis against the served document (T19).
"""

from __future__ import annotations

import functools
from typing import Any

from proxy.admin._schemas import component_schemas, ref
from proxy.admin.params import CAPTURE_ID_PATTERN, FILTER_SCHEMAS, PAGE_SCHEMAS

JSON = "application/json"


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    param: dict[str, Any] = {"name": name, "in": "query", "required": False}
    if "description" in schema:
        param["description"] = schema.pop("description")
    if schema["type"] == "array":
        param.update(style="form", explode=True)
    param["schema"] = schema
    return param


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref(schema)}}}


def _links(pointer: str, *operations: str) -> dict[str, Any]:
    """Where a response's capture id leads (schemathesis' stateful phase follows these)."""
    return {
        operation[0].upper() + operation[1:]: {
            "operationId": operation,
            "parameters": {"id": f"$response.body#{pointer}"},
        }
        for operation in operations
    }


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": ref(schema)}}}


_ERRORS = {
    "400": "bad parameter or body",
    "401": "missing or wrong admin token",
    "404": "no such capture (unknown or malformed id)",
    "413": "body over 1 MiB",
    "422": 'empty filter without "all": true',
    "503": "the store failed or is not open",
}


def _operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    errors: tuple[str, ...],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    for status in ("401", *errors, "503"):
        responses[status] = _error_response(_ERRORS[status])
    out: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if parameters:
        out["parameters"] = parameters
    if body:
        out["requestBody"] = _body(body)
    out["responses"] = dict(sorted(responses.items()))
    return out


_BY_ID = ("getCapture", "updateCapture", "deleteCapture")


def _paths() -> dict[str, Any]:
    filters = [_query(name, schema) for name, schema in FILTER_SCHEMAS.items()]
    pages = [_query(name, schema) for name, schema in PAGE_SCHEMAS.items()]
    capture_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": CAPTURE_ID_PATTERN},
    }
    return {
        "/admin/captures": {
            "get": _operation(
                "listCaptures",
                "Captures matching a filter, newest first; next page: after=<last_id>",
                {
                    **_ok("a page of captures", "CaptureList"),
                    "links": _links("/data/0/id", *_BY_ID),
                },
                ("400",),
                parameters=filters + pages,
            )
        },
        "/admin/captures/{id}": {
            "parameters": [capture_id],
            "get": _operation(
                "getCapture",
                "One capture with its request, raw response, reassembled response and, for "
                "a Responses API call, its conversation",
                {**_ok("the capture", "CaptureDetail"), "links": _links("/id", *_BY_ID)},
                ("404",),
            ),
            "patch": _operation(
                "updateCapture",
                "Curate one capture: tags, feedback, exclusion, corrected answer",
                {**_ok("the updated capture", "Capture"), "links": _links("/id", *_BY_ID)},
                ("400", "404", "413"),
                body="Patch",
            ),
            "delete": _operation(
                "deleteCapture",
                "Hard-delete one capture (its text is gone from the files)",
                _ok("deleted", "CaptureDeleted"),
                ("404",),
            ),
        },
        "/admin/captures/update": {
            "post": _operation(
                "updateCaptures",
                'Curate every capture matching a filter (an empty one needs "all": true)',
                _ok("how many changed", "BulkUpdated"),
                ("400", "413", "422"),
                body="BulkUpdate",
            )
        },
        "/admin/captures/delete": {
            "post": _operation(
                "deleteCaptures",
                'Hard-delete every capture matching a filter (an empty one needs "all": true)',
                _ok("how many were deleted", "BulkDeleted"),
                ("400", "413", "422"),
                body="BulkDelete",
            )
        },
        "/admin/stats": {
            "get": _operation(
                "getStats",
                "Counts by model, endpoint, outcome, tag and day; token sums; bytes on disk",
                _ok("the figures", "Stats"),
                ("400",),
                parameters=filters,
            )
        },
        "/admin/openapi.json": {
            "get": _operation(
                "getOpenAPI",
                "This document",
                {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}},
                (),
            )
        },
    }


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stillroom admin API",
            "version": "1",
            "description": "Browse, curate and delete captured exchanges (docs/admin-api.md).",
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": component_schemas(),
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document (built once, on first use)."""
    return _document()
