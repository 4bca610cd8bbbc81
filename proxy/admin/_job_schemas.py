"""The training-job parts of ``/admin/openapi.json``: paths and component schemas.

Answers mirror ``storage.jobs.Job.to_json`` and ``JobEvent.to_json``; the body mirrors
``storage.jobs.parse_job_spec``. Objects are closed, as in ``proxy.admin._schemas``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.admin._schema_parts import closed as _closed
from proxy.admin._schema_parts import nullable as _nullable
from proxy.admin._schema_parts import ref as _ref
from proxy.admin.params import DATASET_NAME_PATTERN, JOB_EVENT_SCHEMAS, JOB_LIST_SCHEMAS
from storage.jobs import (
    BACKENDS,
    JOB_ID_PATTERN,
    MAX_HYPERPARAMETERS,
    MAX_MODEL,
    MAX_SEED,
    MAX_SUFFIX,
    METHODS,
)

JOB_ERRORS = {
    "404-job": "no such training job (unknown or malformed id)",
    "404-job-dataset": "no such dataset",
    "409-cancel": "the job has finished, or the provider refused or could not be reached",
}


def job_component_schemas() -> dict[str, Any]:
    job_id = {"type": "string", "pattern": JOB_ID_PATTERN}
    hyperparameters = {
        "type": "object",
        "maxProperties": MAX_HYPERPARAMETERS,
        "propertyNames": {"minLength": 1, "maxLength": 64},
        "additionalProperties": {
            "anyOf": [
                {"type": "number"},
                {"type": "boolean"},
                {"type": "string", "minLength": 1, "maxLength": 64},
            ]
        },
        "description": 'sent to the provider as given, e.g. {"n_epochs": 3} for OpenAI',
    }
    error = _closed(
        {"code": _nullable("string"), "message": {"type": "string"}, "param": _nullable("string")}
    )
    return {
        "JobSpec": {
            "description": "what to train: a dataset, a base model, a method, hyperparameters",
            **_closed(
                {
                    "dataset": {"type": "string", "pattern": DATASET_NAME_PATTERN},
                    "backend": {"enum": list(BACKENDS), "default": "openai"},
                    "base_model": {"type": "string", "minLength": 1, "maxLength": MAX_MODEL},
                    "method": {"enum": list(METHODS), "default": "sft"},
                    "hyperparameters": hyperparameters,
                    "suffix": {"type": "string", "minLength": 1, "maxLength": MAX_SUFFIX},
                    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                },
                optional=("backend", "base_model", "method", "hyperparameters", "suffix", "seed"),
            ),
        },
        "Job": _closed(
            {
                "object": {"const": "training.job"},
                "id": job_id,
                "backend": {"type": "string"},
                "status": {
                    "type": "string",
                    "description": "validating_files, queued, running, succeeded, failed, "
                    "cancelled (a provider's other status is shown as given)",
                },
                "dataset": _closed(
                    {
                        "name": {"type": "string", "pattern": DATASET_NAME_PATTERN},
                        "content_hash": {"type": "string"},
                    }
                ),
                "base_model": {"type": "string"},
                "method": {"type": "string"},
                "hyperparameters": {"type": "object"},
                "suffix": _nullable("string"),
                "seed": _nullable("integer"),
                "provider": _closed(
                    {
                        "url": _nullable("string"),
                        "job_id": _nullable("string"),
                        "files": {"type": "object", "additionalProperties": {"type": "string"}},
                    }
                ),
                "fine_tuned_model": _nullable("string"),
                "error": {"anyOf": [{"type": "null"}, error]},
                "created_at": {"type": "number"},
                "updated_at": {"type": "number"},
                "finished_at": _nullable("number"),
            }
        ),
        "JobList": _closed(
            {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Job")},
                "first_id": _nullable("string"),
                "last_id": _nullable("string"),
                "has_more": {"type": "boolean"},
            }
        ),
        "JobEventList": _closed(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": _closed(
                        {
                            "object": {"const": "training.job.event"},
                            "id": {"type": "integer"},
                            "job_id": job_id,
                            "created_at": {"type": "number"},
                            "level": {"type": "string"},
                            "message": {"type": "string"},
                            "data": _nullable("object"),
                        }
                    ),
                },
                "last_id": _nullable("integer"),
                "has_more": {"type": "boolean"},
            }
        ),
    }


Operation = Callable[..., dict[str, Any]]
Query = Callable[[str, dict[str, Any]], dict[str, Any]]
Ok = Callable[[str, str], dict[str, Any]]
Links = Callable[..., dict[str, Any]]


def job_paths(operation: Operation, query: Query, ok: Ok, links: Links) -> dict[str, Any]:
    """The ``/admin/jobs`` paths, built with ``proxy.admin.openapi``'s helpers."""
    job_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
    }
    by_id = ("getJob", "listJobEvents", "cancelJob")
    return {
        "/admin/jobs": {
            "get": operation(
                "listJobs",
                "Training jobs, newest first; next page: after=<last_id>",
                {**ok("a page of jobs", "JobList"), "links": links("/data/0/id", *by_id)},
                ("400",),
                parameters=[query(n, s) for n, s in JOB_LIST_SCHEMAS.items()],
            ),
            "post": operation(
                "createJob",
                "Start training on a dataset with the server's fine-tuning provider (answers "
                "at once; the job is launched in the background)",
                {**ok("the job", "Job"), "links": links("/id", *by_id)},
                ("400", "404-job-dataset", "413"),
                body="JobSpec",
                ok_status="201",
            ),
        },
        "/admin/jobs/{id}": {
            "parameters": [job_id],
            "get": operation(
                "getJob",
                "One job: status, provider ids, fine-tuned model, error",
                ok("the job", "Job"),
                ("400", "404-job"),
            ),
        },
        "/admin/jobs/{id}/events": {
            "parameters": [job_id],
            "get": operation(
                "listJobEvents",
                "A job's events, oldest first; next page: after=<last_id>",
                ok("a page of events", "JobEventList"),
                ("400", "404-job"),
                parameters=[query(n, s) for n, s in JOB_EVENT_SCHEMAS.items()],
            ),
        },
        "/admin/jobs/{id}/cancel": {
            "parameters": [job_id],
            "post": operation(
                "cancelJob",
                "Cancel a job that has not finished (at the provider too)",
                ok("the cancelled job", "Job"),
                ("400", "404-job", "409-cancel"),
            ),
        },
    }
