"""The evals' parts of ``/admin/openapi.json``: paths and component schemas.

Answers mirror the documents ``proxy.evals.runner.run_eval`` stores (``running_document``, then
the report of ``proxy.evals.report.build_report``) and the graded examples it keeps as items;
the body mirrors ``proxy.evals.runner.parse_eval_spec``. Objects are closed, as in
``proxy.admin._schemas``; a grader's own keys and a message are left open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.admin._schema_parts import closed as _closed
from proxy.admin._schema_parts import nullable as _nullable
from proxy.admin._schema_parts import ref as _ref
from proxy.admin.evals import EVAL_ID_PATTERN, EVAL_ITEM_SCHEMAS, EVAL_LIST_SCHEMAS
from proxy.admin.params import DATASET_NAME_PATTERN
from proxy.admin.routes import KEY_ENV_PATTERN
from proxy.evals.spec import SPLITS

EVAL_ERRORS = {
    "400-eval-create": "bad body, or no examples in the dataset's split (code dataset_empty)",
    "404-eval": "no such eval (unknown or malformed id)",
    "404-eval-dataset": "no such dataset",
    "409-eval-delete": "the eval is still running (code eval_running)",
    "429-eval": "the server already runs as many evals as it allows (code too_many_evals)",
}
_GRADER_TYPES = (
    "string_check",
    "text_similarity",
    "json_valid",
    "json_schema",
    "tool_call_match",
    "score_model",
)
_STATUSES = ("running", "completed", "failed")


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "null"}, schema]}


def _spec_schema() -> dict[str, Any]:
    """The body: what ``parse_eval_spec`` accepts (only ``dataset`` and ``student``
    required)."""
    endpoint = _closed(
        {
            "base_url": {
                "type": "string",
                "minLength": 1,
                "description": "http(s) URL including /v1, without credentials",
            },
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
            "api_key_env": {
                **_or_null({"type": "string", "pattern": KEY_ENV_PATTERN}),
                "description": "an environment variable of the server holding the key (the "
                "key itself is never stored)",
            },
        },
        optional=("api_key_env",),
    )
    fraction = {"type": "number", "minimum": 0, "maximum": 1}
    threshold = {
        "anyOf": [
            {"type": "null"},
            {**fraction, "description": "the least mean"},
            {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "min_mean": _or_null(fraction),
                    "min_lower_bound": _or_null(fraction),
                    "min_n": _or_null({"type": "integer", "minimum": 1}),
                },
            },
        ]
    }
    fields: dict[str, Any] = {
        "dataset": {"type": "string", "pattern": DATASET_NAME_PATTERN},
        "student": {**endpoint, "description": "any OpenAI-compatible endpoint"},
        "split": {"enum": list(SPLITS), "default": "holdout"},
        "graders": {
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
            "description": "OpenAI-shaped grader objects with unique names (default: exact "
            "match, tool calls, JSON validity, ROUGE-L, chrF)",
        },
        "thresholds": {
            "type": "object",
            "additionalProperties": threshold,
            "description": "grader name -> the least mean, or {min_mean, min_lower_bound, "
            "min_n}; the verdict passes when every one holds",
        },
        "judge": {
            **_or_null(endpoint),
            "description": "where score_model graders ask the judge (required with them)",
        },
        "limit": {
            **_or_null({"type": "integer", "minimum": 1, "maximum": 1_000_000}),
            "description": "evaluate at most this many examples",
        },
        "concurrency": {
            **_or_null({"type": "integer", "minimum": 1, "maximum": 64}),
            "description": "student requests in flight at once (null: 4)",
        },
        "timeout_s": {
            "type": "number",
            "minimum": 0.1,
            "maximum": 3600,
            "default": 60,
            "description": "seconds the student may take for one answer",
        },
        "name": {**_or_null({"type": "string", "minLength": 1, "maxLength": 128})},
    }
    return {
        "description": "what to evaluate: a dataset split, a student, graders, thresholds",
        **_closed(fields, optional=tuple(n for n in fields if n not in ("dataset", "student"))),
    }


def eval_component_schemas() -> dict[str, Any]:
    number, integer, string = {"type": "number"}, {"type": "integer"}, {"type": "string"}
    scores = {"type": "object", "additionalProperties": _nullable("number")}
    message = {"type": "object", "description": "a chat message (role, content, tool_calls)"}
    endpoint = _closed({"base_url": string, "model": string, "api_key_env": _nullable("string")})
    summary = _closed(
        {
            "mean": _nullable("number"),
            "low": _nullable("number"),
            "high": _nullable("number"),
            "n": integer,
            "method": string,
        }
    )
    side = _closed({"median": _nullable("number"), "p95": _nullable("number"), "n": integer})
    compare = _closed({"student": side, "teacher": side, "ratio": _nullable("number")})
    rate = _nullable("number")
    judge = _closed(
        {
            "wins": integer,
            "ties": integer,
            "losses": integer,
            "win_rate": rate,
            "tie_rate": rate,
            "loss_rate": rate,
            "errors": integer,
        }
    )
    spec = _closed(
        {
            "dataset": string,
            "student": endpoint,
            "split": string,
            "graders": {"type": "array", "items": {"type": "object"}},
            "thresholds": {"type": "object"},
            "judge": _or_null(endpoint),
            "limit": _nullable("integer"),
            "concurrency": integer,
            "timeout_s": number,
            "name": _nullable("string"),
        }
    )
    worst = _closed(
        {
            "capture_id": string,
            "mean_score": number,
            "scores": _or_null(scores),
            "prompt": _or_null({"type": "array", "items": message}),
            "teacher": _or_null(message),
            "student": _or_null(message),
            "error": _nullable("string"),
        }
    )
    report = {
        "graders": {
            "type": "object",
            "additionalProperties": summary,
            "description": "per grader: the mean with its 95% interval",
        },
        "by_tag": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": summary},
            "description": "key=value -> grader -> summary, for tags on two examples or more",
        },
        "judge": _or_null(judge),
        "latency_ms": compare,
        "output_tokens": compare,
        "errors": {**integer, "description": "examples the student did not answer"},
        "worst": {"type": "array", "items": worst},
        "verdict": _closed(
            {
                "passed": {"type": "boolean"},
                "reasons": {"type": "array", "items": string},
                "thresholds": {"type": "object"},
            }
        ),
    }
    evaluation = _closed(
        {
            "object": {"const": "eval"},
            "id": {**string, "description": "eval- and 32 hex digits (time-sortable)"},
            "spec": spec,
            "student": endpoint,
            "status": {
                "enum": list(_STATUSES),
                "description": "running, then completed (with the report) or failed (error)",
            },
            "created_at": number,
            "total": {**integer, "description": "examples to answer"},
            "done": {**integer, "description": "answered so far (saved about once a second)"},
            "finished_at": number,
            "error": {
                **string,
                "description": 'why it failed ("interrupted": the server stopped)',
            },  # fmt: skip
            **report,
        },
        optional=("done", "finished_at", "error", *report),
    )
    item = _closed(
        {
            "id": {**integer, "description": "the cursor: pass the last one read as after"},
            "type": {"const": "example"},
            "capture_id": string,
            "tags": {"type": "object", "additionalProperties": string},
            "prompt": {"type": "array", "items": message},
            "teacher": message,
            "student": _or_null(message),
            "error": _nullable("string"),
            "scores": scores,
            "judge": _nullable("object"),
            "teacher_latency_ms": _nullable("number"),
            "student_latency_ms": _nullable("number"),
            "teacher_tokens": _nullable("integer"),
            "student_tokens": _nullable("integer"),
        }
    )
    return {
        "EvalSpec": _spec_schema(),
        "Eval": evaluation,
        "EvalList": _closed(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Eval")},
                "first_id": _nullable("string"),
                "last_id": _nullable("string"),
                "has_more": {"type": "boolean"},
            }
        ),
        "EvalItemList": _closed(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": item},
                "last_id": _nullable("integer"),
                "has_more": {"type": "boolean"},
            }
        ),
        "EvalDeleted": _closed(
            {"object": {"const": "eval.deleted"}, "id": string, "deleted": {"const": True}}
        ),
    }


Operation = Callable[..., dict[str, Any]]
Query = Callable[[str, dict[str, Any]], dict[str, Any]]
Ok = Callable[[str, str], dict[str, Any]]
Links = Callable[..., dict[str, Any]]


def eval_paths(operation: Operation, query: Query, ok: Ok, links: Links) -> dict[str, Any]:
    """The ``/admin/evals`` paths, built with ``proxy.admin.openapi``'s helpers."""
    eval_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": EVAL_ID_PATTERN},
    }
    by_id = ("getEval", "listEvalItems", "deleteEval")
    return {
        "/admin/evals": {
            "get": operation(
                "listEvals",
                "Evals, newest first; next page: after=<last_id>",
                {**ok("a page of evals", "EvalList"), "links": links("/data/0/id", *by_id)},
                ("400",),
                parameters=[query(n, s) for n, s in EVAL_LIST_SCHEMAS.items()],
            ),
            "post": operation(
                "createEval",
                "Evaluate a student on a dataset split against the teacher (answers at once "
                "with the running eval; poll it until its status is not running)",
                {**ok("the running eval", "Eval"), "links": links("/id", *by_id)},
                ("400-eval-create", "404-eval-dataset", "413", "429-eval"),
                body="EvalSpec",
                ok_status="201",
            ),
        },
        "/admin/evals/{id}": {
            "parameters": [eval_id],
            "get": operation(
                "getEval",
                "One eval: its progress while it runs, then its report",
                ok("the eval", "Eval"),
                ("400", "404-eval"),
            ),
            "delete": operation(
                "deleteEval",
                "Delete an eval that is not running, with its graded examples",
                ok("deleted", "EvalDeleted"),
                ("400", "404-eval", "409-eval-delete"),
            ),
        },
        "/admin/evals/{id}/items": {
            "parameters": [eval_id],
            "get": operation(
                "listEvalItems",
                "An eval's graded examples (prompt, teacher, student, scores), in the order "
                "graded; next page: after=<last_id>",
                ok("a page of graded examples", "EvalItemList"),
                ("400", "404-eval"),
                parameters=[query(n, s) for n, s in EVAL_ITEM_SCHEMAS.items()],
            ),
        },
    }
