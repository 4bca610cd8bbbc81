"""``/admin/openapi.json``: the admin API described as OpenAPI 3.1, written out as Python data.

Parameter schemas come from ``proxy.admin.params`` (the same ones requests are checked
against), bodies and answers from ``proxy.admin._schemas``. tests/test_admin_schema.py runs
schemathesis against the served document (T19).
"""

from __future__ import annotations

import functools
from typing import Any

from proxy.admin._eval_schemas import EVAL_ERRORS, eval_component_schemas, eval_paths
from proxy.admin._job_schemas import JOB_ERRORS, job_paths
from proxy.admin._route_schemas import ROUTE_ERRORS, route_component_schemas, route_paths
from proxy.admin._schemas import component_schemas, ref
from proxy.admin.params import (
    CAPTURE_ID_PATTERN,
    DATASET_NAME_PATTERN,
    EXPORT_SCHEMAS,
    FILTER_SCHEMAS,
    PAGE_SCHEMAS,
)

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


def _links(pointer: str, *operations: str, param: str = "id") -> dict[str, Any]:
    """Where a response's capture id (or dataset name) leads (schemathesis' stateful phase
    follows these)."""
    return {
        operation[0].upper() + operation[1:]: {
            "operationId": operation,
            "parameters": {param: f"$response.body#{pointer}"},
        }
        for operation in operations
    }


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": ref(schema)}}}


_ERRORS = {
    "400": "bad parameter or body",
    "401": "missing or wrong admin token",
    "404": "no such capture (unknown or malformed id)",
    "404-dataset": "no such dataset (unknown or malformed name)",
    "409-create": "a dataset with this name exists (code dataset_exists)",
    "409-export": "the dataset's captures were deleted or edited since (code dataset_changed)",
    "409-pending": "captures are on their way to the store and did not arrive within 5 s: this "
    "one may be among them (code capture_not_stored_yet; retry after Retry-After seconds)",
    "413": "body over 1 MiB",
    "422": 'empty filter without "all": true',
    "503": "the store failed or is not open",
    **JOB_ERRORS,
    **ROUTE_ERRORS,
    **EVAL_ERRORS,
}


def _operation(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    errors: tuple[str, ...],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    ok_status: str = "200",
) -> dict[str, Any]:
    """An operation; ``errors`` are keys of ``_ERRORS`` (``404-dataset`` documents a 404)."""
    responses: dict[str, Any] = {ok_status: ok}
    for error in ("401", *errors, "503"):
        responses[error.partition("-")[0]] = _error_response(_ERRORS[error])
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
                ("404", "409-pending"),
            ),
            "patch": _operation(
                "updateCapture",
                "Curate one capture: tags, feedback, exclusion, corrected answer",
                {**_ok("the updated capture", "Capture"), "links": _links("/id", *_BY_ID)},
                ("400", "404", "409-pending", "413"),
                body="Patch",
            ),
            "delete": _operation(
                "deleteCapture",
                "Hard-delete one capture (its text is gone from the files)",
                _ok("deleted", "CaptureDeleted"),
                ("404", "409-pending"),
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
        **_dataset_paths(),
        **job_paths(_operation, _query, _ok, _links),
        **route_paths(_operation, _query, _ok, _links),
        **eval_paths(_operation, _query, _ok, _links),
        "/admin/openapi.json": {
            "get": _operation(
                "getOpenAPI",
                "This document",
                {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}},
                (),
            )
        },
    }


_BY_NAME = ("getDataset", "deleteDataset", "exportDataset", "getExportManifest")


def _dataset_paths() -> dict[str, Any]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": DATASET_NAME_PATTERN},
    }
    export = [_query(param, schema) for param, schema in EXPORT_SCHEMAS.items()]
    jsonl = {
        "description": "the export file, streamed (JSON Lines); a stream cut short (no final "
        "chunk) means the dataset changed part way",
        "headers": {
            header: {"description": text, "schema": {"type": "string"}}
            for header, text in (
                ("X-Stillroom-Content-Hash", "the dataset's content hash"),
                ("X-Stillroom-Examples", "examples in the split"),
                ("Link", "the manifest, rel=describedby"),
            )
        },
        "content": {"application/jsonl": {"schema": {"type": "string"}}},
    }
    return {
        "/admin/datasets": {
            "get": _operation(
                "listDatasets",
                "Every dataset, newest first",
                {
                    **_ok("the datasets", "DatasetList"),
                    "links": _links("/data/0/name", *_BY_NAME, param="name"),
                },
                (),
            ),
            "post": _operation(
                "createDataset",
                "Snapshot the captures a filter matches as a dataset: quality gates, dedupe, "
                "splits, token counts",
                {
                    **_ok("the dataset", "Dataset"),
                    "links": _links("/name", *_BY_NAME, param="name"),
                },
                ("400", "409-create", "413"),
                body="DatasetSpec",
                ok_status="201",
            ),
        },
        "/admin/datasets/{name}": {
            "parameters": [name],
            "get": _operation(
                "getDataset",
                "One dataset: its filter, counts per split, rejections, token statistics",
                _ok("the dataset", "Dataset"),
                ("404-dataset",),
            ),
            "delete": _operation(
                "deleteDataset",
                "Delete a dataset's snapshot (never the captures)",
                _ok("deleted", "DatasetDeleted"),
                ("404-dataset",),
            ),
        },
        "/admin/datasets/{name}/export": {
            "parameters": [name],
            "get": _operation(
                "exportDataset",
                "One split in one training format, streamed as JSON Lines",
                jsonl,
                ("400", "404-dataset", "409-export"),
                parameters=export,
            ),
        },
        "/admin/datasets/{name}/export/manifest": {
            "parameters": [name],
            "get": _operation(
                "getExportManifest",
                "The manifest `stillroom datasets export` writes beside the file",
                _ok("the manifest", "ExportManifest"),
                ("400", "404-dataset", "409-export"),
                parameters=export,
            ),
        },
    }


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Stillroom admin API",
            "version": "1",
            "description": "Browse, curate and delete captured exchanges; build and export "
            "datasets; train students, evaluate them and route traffic to them "
            "(docs/admin-api.md).",
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **component_schemas(),
                **route_component_schemas(),
                **eval_component_schemas(),
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document (built once, on first use)."""
    return _document()
