"""Training jobs: what was asked for, where it runs, and what happened (the store's types).

A job trains a student from one dataset snapshot (its name and content hash are kept, so the
job says exactly which examples it saw) on one backend (``openai``: an OpenAI-compatible
fine-tuning provider; ``local`` later). Its ``status`` uses OpenAI's job statuses, whatever the
backend: ``validating_files`` → ``queued`` → ``running`` → ``succeeded`` | ``failed`` |
``cancelled``. Events (the provider's, and our own: created, launched, retried…) are kept in
order with a store-assigned sequence number, which is also the cursor to read them from.

Credentials are never part of a job: the provider's base URL is kept (it says where the job
lives), its API key comes from the settings or a flag each time the provider is called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from storage.datasets import check_name

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: Final[tuple[JobStatus, ...]] = get_args(JobStatus)
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})
Method = Literal["sft", "dpo"]
METHODS: Final[tuple[Method, ...]] = get_args(Method)
Backend = Literal["openai", "local"]
BACKENDS: Final[tuple[Backend, ...]] = get_args(Backend)
EventLevel = Literal["info", "warn", "error"]
JOB_ID_PREFIX: Final = "ftjob-"
JOB_ID_PATTERN: Final = "^ftjob-[0-9a-f]{32}$"
MAX_HYPERPARAMETERS: Final = 32
MAX_SUFFIX: Final = 64
MAX_MODEL: Final = 256
MAX_SEED: Final = 2_147_483_647
DEFAULT_BASE_MODEL: Final = "gpt-4o-mini-2024-07-18"


def new_job_id() -> str:
    """``ftjob-`` and a UUIDv7's 32 hex digits: time-sortable, unguessable."""
    from storage.ids import new_capture_id

    return JOB_ID_PREFIX + new_capture_id().replace("-", "")


def is_job_id(value: str) -> bool:
    return (
        len(value) == 38
        and value.startswith(JOB_ID_PREFIX)
        and all(c in "0123456789abcdef" for c in value[6:])
    )


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed, in OpenAI's shape (``code`` and ``param`` may be None)."""

    message: str
    code: str | None = None
    param: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param}

    @staticmethod
    def from_json(value: dict[str, Any]) -> JobError:
        return JobError(str(value.get("message") or ""), value.get("code"), value.get("param"))


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    backend: str
    status: str  # a JobStatus; a provider's unknown status (e.g. "paused") is kept as given
    dataset: str
    dataset_hash: str
    base_model: str
    method: str
    hyperparameters: dict[str, Any]
    created_at: float
    updated_at: float
    suffix: str | None = None
    seed: int | None = None
    provider_url: str | None = None  # never the key
    provider_job_id: str | None = None
    provider_files: dict[str, str] = field(default_factory=dict)  # split -> provider file id
    fine_tuned_model: str | None = None
    error: JobError | None = None
    finished_at: float | None = None

    @property
    def is_terminal(self) -> bool:
        return is_terminal(self.status)

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "training.job",
            "id": self.id,
            "backend": self.backend,
            "status": self.status,
            "dataset": {"name": self.dataset, "content_hash": self.dataset_hash},
            "base_model": self.base_model,
            "method": self.method,
            "hyperparameters": self.hyperparameters,
            "suffix": self.suffix,
            "seed": self.seed,
            "provider": {
                "url": self.provider_url,
                "job_id": self.provider_job_id,
                "files": self.provider_files,
            },
            "fine_tuned_model": self.fine_tuned_model,
            "error": self.error.to_json() if self.error is not None else None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """A change to a job; None leaves a field as it is. ``finished_at`` is set by the store
    when the status becomes terminal."""

    status: str | None = None
    provider_job_id: str | None = None
    provider_files: dict[str, str] | None = None
    fine_tuned_model: str | None = None
    error: JobError | None = None

    def is_empty(self) -> bool:
        return all(
            value is None
            for value in (
                self.status,
                self.provider_job_id,
                self.provider_files,
                self.fine_tuned_model,
                self.error,
            )
        )


@dataclass(frozen=True, slots=True)
class NewJobEvent:
    """An event to record; ``source_id`` (the provider's event id) makes recording idempotent."""

    message: str
    level: str = "info"
    data: dict[str, Any] | None = None
    created_at: float | None = None  # None: now
    source_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobEvent:
    seq: int  # the cursor: events come in seq order
    job_id: str
    created_at: float
    level: str
    message: str
    data: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "training.job.event",
            "id": self.seq,
            "job_id": self.job_id,
            "created_at": self.created_at,
            "level": self.level,
            "message": self.message,
            "data": self.data,
        }


# -- the request to start a job (the admin API's body; the CLI builds the same) -----------------


class JobSpecError(ValueError):
    """A bad job request; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class JobSpec:
    dataset: str
    backend: str = "openai"
    base_model: str = DEFAULT_BASE_MODEL
    method: str = "sft"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None


SPEC_FIELDS: Final = (
    "dataset",
    "backend",
    "base_model",
    "method",
    "hyperparameters",
    "suffix",
    "seed",
)


def parse_job_spec(body: object) -> JobSpec:
    """Check ``POST /admin/jobs``' body; raises ``JobSpecError``.

    ``hyperparameters`` go to the provider as given (OpenAI wants ``n_epochs``, ``batch_size``,
    ``learning_rate_multiplier``; other providers other names), each a number, a string such as
    ``"auto"``, or a boolean.
    """
    if not isinstance(body, dict):
        raise JobSpecError("the body must be a JSON object")
    for name in body:
        if name not in SPEC_FIELDS:
            raise JobSpecError(
                f"unknown field {name!r:.80}; known: {', '.join(SPEC_FIELDS)}", param=name
            )
    if "dataset" not in body:
        raise JobSpecError("dataset is required: the name of the dataset to train on", "dataset")
    dataset = body["dataset"]
    try:
        check_name(dataset)
    except ValueError as exc:
        raise JobSpecError(str(exc), "dataset") from None
    backend = body.get("backend", "openai")
    if backend not in BACKENDS:
        raise JobSpecError(f"backend must be one of {', '.join(BACKENDS)}", "backend")
    method = body.get("method", "sft")
    if method not in METHODS:
        raise JobSpecError(f"method must be one of {', '.join(METHODS)}", "method")
    base_model = body.get("base_model", DEFAULT_BASE_MODEL)
    if not _is_text(base_model, MAX_MODEL):
        raise JobSpecError(f"base_model must be 1-{MAX_MODEL} printable characters", "base_model")
    suffix = body.get("suffix")
    if suffix is not None and not _is_text(suffix, MAX_SUFFIX):
        raise JobSpecError(f"suffix must be 1-{MAX_SUFFIX} printable characters", "suffix")
    seed = body.get("seed")
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED
    ):
        raise JobSpecError(f"seed must be an integer from 0 to {MAX_SEED}", "seed")
    return JobSpec(
        dataset=dataset,
        backend=backend,
        base_model=base_model,
        method=method,
        hyperparameters=_hyperparameters(body.get("hyperparameters", {})),
        suffix=suffix,
        seed=seed,
    )


def _is_text(value: object, limit: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= limit and value.isprintable()


def _hyperparameters(value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > MAX_HYPERPARAMETERS:
        raise JobSpecError(
            f"hyperparameters must be an object of at most {MAX_HYPERPARAMETERS} entries",
            "hyperparameters",
        )
    for key, item in value.items():
        if not _is_text(key, 64):
            raise JobSpecError("hyperparameter names are 1-64 characters", "hyperparameters")
        is_number = isinstance(item, int | float) and not isinstance(item, bool)
        if is_number and not math.isfinite(item):
            is_number = False
        if not (is_number or isinstance(item, bool) or _is_text(item, 64)):
            raise JobSpecError(
                f"hyperparameters.{key} must be a number, a boolean or a short string "
                '(e.g. "auto")',
                "hyperparameters",
            )
    return dict(value)
