"""JSON Schemas of what the admin API reads and answers (components of /admin/openapi.json).

Answers mirror ``proxy.admin.serialize`` and ``storage.query.Stats``; bodies mirror
``storage.query.parse_patch`` and ``proxy.admin.params``. Objects are closed
(``additionalProperties: false``), so a field added on one side only fails schemathesis'
response-schema check (T19).
"""

from __future__ import annotations

from typing import Any

from proxy.admin._job_schemas import job_component_schemas
from proxy.admin._schema_parts import closed as closed_object
from proxy.admin._schema_parts import nullable as nullable
from proxy.admin._schema_parts import ref as ref
from proxy.admin.params import (
    CAPTURE_ID_PATTERN,
    DATASET_NAME_PATTERN,
    FILTER_SCHEMAS,
    TAG_KEY_PATTERN,
    TAG_VALUE_PATTERN,
)
from storage.datasets import SPLITS
from storage.export import FORMATS
from storage.models import OUTCOMES
from storage.query import MAX_NOTE, MAX_TAG_VALUE, MAX_TAGS_PER_FILTER


def component_schemas() -> dict[str, Any]:
    usage = {
        name: nullable("integer")
        for name in (
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "cached_tokens",
            "reasoning_tokens",
        )
    }
    summary: dict[str, Any] = {
        "id": {"type": "string", "pattern": CAPTURE_ID_PATTERN},
        "object": {"const": "capture"},
        "created_at": {"type": "number"},
        "endpoint": {"type": "string"},
        "method": {"type": "string"},
        "path": {"type": "string"},
        "model": nullable("string"),
        "requested_model": nullable("string"),
        "returned_model": nullable("string"),
        "stream": {"type": "boolean"},
        "status": nullable("integer"),
        "outcome": {"enum": list(OUTCOMES)},
        "error": nullable("string"),
        "latency_ms": nullable("number"),
        "ttft_ms": nullable("number"),
        "usage": closed_object(usage),
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "response_id": nullable("string"),
        "previous_response_id": nullable("string"),
        "upstream_request_id": nullable("string"),
        "retry_count": nullable("integer"),
        "key_fingerprint": nullable("string"),
        "has_tool_calls": {"type": "boolean"},
        "request_bytes": {"type": "integer", "minimum": 0},
        "response_bytes": {"type": "integer", "minimum": 0},
        "response_truncated": {"type": "boolean"},
        "curation": ref("Curation"),
        "preview": {"type": "string", "maxLength": 160},
    }
    detail = {
        **summary,
        "request": ref("Body"),
        "response_content_type": nullable("string"),
        "response_body": ref("Body"),
        "response": nullable("object"),
        "conversation": {"anyOf": [{"type": "null"}, ref("Conversation")]},
    }
    tag_keys = {"type": "string", "pattern": TAG_KEY_PATTERN}
    # In a JSON body ``tag`` may also be one string.
    filter_props = {
        name: {"anyOf": [schema["items"], schema]} if schema["type"] == "array" else schema
        for name, schema in FILTER_SCHEMAS.items()
    }
    return {
        "Error": closed_object(
            {
                "error": closed_object(
                    {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": nullable("string"),
                        "code": nullable("string"),
                    }
                )
            }
        ),
        "Curation": closed_object(
            {
                "feedback": {
                    "anyOf": [
                        {"type": "null"},
                        closed_object({"score": nullable("number"), "note": nullable("string")}),
                    ]
                },
                "excluded": {"type": "boolean"},
                "corrected_response": nullable("object"),
                "updated_at": nullable("number"),
            }
        ),
        "Body": {
            "description": "a body as JSON, as UTF-8 text, or as base64 when neither",
            "oneOf": [
                closed_object({"json": {}}),
                closed_object({"text": {"type": "string"}}),
                closed_object({"base64": {"type": "string"}}),
            ],
        },
        "Conversation": closed_object(
            {
                "complete": {"type": "boolean"},
                "missing_response_id": nullable("string"),
                "capture_ids": {
                    "type": "array",
                    "items": {"type": "string", "pattern": CAPTURE_ID_PATTERN},
                },
                "response_ids": {"type": "array", "items": nullable("string")},
            }
        ),
        "Capture": closed_object(summary),
        "CaptureDetail": closed_object(detail, optional=("conversation",)),
        "CaptureList": closed_object(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("Capture")},
                "first_id": nullable("string"),
                "last_id": nullable("string"),
                "has_more": {"type": "boolean"},
            }
        ),
        "CaptureDeleted": closed_object(
            {
                "object": {"const": "capture.deleted"},
                "id": {"type": "string", "pattern": CAPTURE_ID_PATTERN},
                "deleted": {"const": True},
            }
        ),
        "BulkUpdated": closed_object(
            {"object": {"const": "capture.bulk_update"}, "updated": {"type": "integer"}}
        ),
        "BulkDeleted": closed_object(
            {"object": {"const": "capture.bulk_delete"}, "deleted": {"type": "integer"}}
        ),
        "Stats": _stats_schema(),
        **_dataset_schemas(filter_props),
        **job_component_schemas(),
        "Filter": {
            "description": "the filter language of the query parameters, JSON-typed",
            **closed_object(filter_props, optional=tuple(filter_props)),
        },
        "Patch": {
            "description": "a curation edit; at least one field",
            "minProperties": 1,
            **closed_object(
                {
                    "add_tags": {
                        "type": "object",
                        "maxProperties": MAX_TAGS_PER_FILTER,
                        "propertyNames": tag_keys,
                        "additionalProperties": {
                            "type": "string",
                            "maxLength": MAX_TAG_VALUE,
                            "pattern": TAG_VALUE_PATTERN,
                        },
                    },
                    "remove_tags": {"type": "array", "items": tag_keys},
                    "feedback": {
                        "anyOf": [
                            {"type": "null"},
                            closed_object(
                                {
                                    "score": {"type": "number", "minimum": -1, "maximum": 1},
                                    "note": {
                                        "type": ["string", "null"],
                                        "maxLength": MAX_NOTE,
                                    },
                                },
                                optional=("note",),
                            ),
                        ]
                    },
                    "excluded": {"type": "boolean"},
                    "corrected_response": nullable("object"),
                },
                optional=(
                    "add_tags",
                    "remove_tags",
                    "feedback",
                    "excluded",
                    "corrected_response",
                ),
            ),
        },
        "BulkUpdate": closed_object(
            {"filter": ref("Filter"), "patch": ref("Patch"), "all": {"type": "boolean"}},
            optional=("filter", "all"),
        ),
        "BulkDelete": closed_object(
            {"filter": ref("Filter"), "all": {"type": "boolean"}},
            optional=("filter", "all"),
        ),
    }


def _stats_schema() -> dict[str, Any]:
    counts = {"type": "object", "additionalProperties": {"type": "integer"}}
    tokens = {
        name: {"type": "integer"} for name in ("input", "output", "total", "cached", "reasoning")
    }
    return closed_object(
        {
            "object": {"const": "stats"},
            "captures": {"type": "integer"},
            "by_model": counts,
            "by_endpoint": counts,
            "by_outcome": counts,
            "by_tag": {"type": "object", "additionalProperties": counts},
            "by_day": counts,
            "tokens": closed_object(tokens),
            "with_feedback": {"type": "integer"},
            "excluded": {"type": "integer"},
            "store_bytes": {"type": "integer"},
        }
    )


def _dataset_schemas(filter_props: dict[str, Any]) -> dict[str, Any]:
    """``POST /admin/datasets``' body (``storage.datasets.parse_spec``) and ``Dataset.to_json``."""
    name = {"type": "string", "pattern": DATASET_NAME_PATTERN}
    share = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
    options: dict[str, Any] = {
        "validation": {**share, "default": 0.1, "description": "share of examples to validate"},
        "holdout": {**share, "default": 0, "description": "share held out (never trained on)"},
        "holdout_by": {
            "enum": ["hash", "time"],
            "default": "hash",
            "description": "hash of the prompt (reproducible), or time (the newest)",
        },
        "dedupe": {
            "enum": ["exact", "near"],
            "default": "exact",
            "description": "merge exact duplicates, or near ones too",
        },
        "max_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": 10_000_000,
            "description": "longer examples are left out, never cut",
        },
        "price_per_million": {
            "type": "number",
            "minimum": 0,
            "maximum": 1_000_000,
            "description": "training price per million tokens, for the cost estimate",
        },
    }
    counts = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    per_split = {"type": "object", "propertyNames": {"enum": list(SPLITS)}}
    token_stats = closed_object(
        {
            "examples": {"type": "integer"},
            "total": {"type": "integer"},
            "min": {"type": "integer"},
            "mean": {"type": "number"},
            "max": {"type": "integer"},
            "p95": {"type": "integer"},
            "answer_total": {"type": "integer"},
            "estimated_cost_per_epoch": {"type": "number"},
        }
    )
    stored_filter = {
        "description": "the filter as query parameters (every value a string, tag a list)",
        "type": "object",
        "additionalProperties": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
        },
    }
    stored_spec = closed_object(
        {
            "name": name,
            "filter": stored_filter,
            **{
                key: {k: v for k, v in value.items() if k != "default"}
                for key, value in options.items()
            },
        }
    )
    return {
        "DatasetSpec": {
            "description": "what to take (a filter) and how to split, dedupe and limit it",
            **closed_object(
                {
                    "name": name,
                    "filter": ref("Filter"),
                    **options,
                },
                optional=("filter", *options),
            ),
        },
        "Dataset": closed_object(
            {
                "object": {"const": "dataset"},
                "name": name,
                "created_at": {"type": "number"},
                "spec": stored_spec,
                "content_hash": {"type": "string"},
                "counts": {**per_split, **counts},
                "considered": {"type": "integer", "minimum": 0},
                "rejected": counts,
                "tokens": {**per_split, "additionalProperties": token_stats},
                "leakage": counts,
                "version": {"type": "string"},
            }
        ),
        "DatasetList": closed_object(
            {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Dataset")}}
        ),
        "DatasetDeleted": closed_object(
            {"object": {"const": "dataset.deleted"}, "name": name, "deleted": {"const": True}}
        ),
        "ExportManifest": closed_object(
            {
                "object": {"const": "dataset.export"},
                "dataset": name,
                "content_hash": {"type": "string"},
                "format": {"enum": list(FORMATS)},
                "split": {"enum": list(SPLITS)},
                "file": closed_object(
                    {
                        "name": {"type": "string"},
                        "encoding": {"const": "jsonl"},
                        "bytes": {"type": "integer", "minimum": 0},
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    }
                ),
                "lines": {"type": "integer", "minimum": 0},
                "spec": stored_spec,
                "counts": {**per_split, **counts},
                "considered": {"type": "integer", "minimum": 0},
                "rejected": counts,
                "tokens": {**per_split, "additionalProperties": token_stats},
                "leakage": counts,
                "dataset_created_at": {"type": "number"},
                "dataset_version": {"type": "string"},
                "stillroom_version": {"type": "string"},
                "created_at": {"type": "number"},
            }
        ),
    }
