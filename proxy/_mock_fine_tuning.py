"""Fine-tuning jobs for the mock upstream: ``/v1/fine_tuning/jobs`` as OpenAI answers it.

    POST /v1/fine_tuning/jobs               create (checks model, files, method, suffix)
    GET  /v1/fine_tuning/jobs               list, newest first (after, limit)
    GET  /v1/fine_tuning/jobs/{id}          retrieve: each retrieve moves the job one step
    GET  /v1/fine_tuning/jobs/{id}/events   events, newest first (after, limit)
    POST /v1/fine_tuning/jobs/{id}/cancel   cancel (400 once the job has finished)

A job walks ``validating_files`` → ``queued`` → ``running`` → ``succeeded`` over three
retrieves, with events on the way (metrics events while running), and ends with
``fine_tuned_model = "ft:<base>:stillroom-mock:<suffix>:<8 of the id>"``. Failures, as OpenAI
reports them (an ``error`` object on a ``failed`` job): a training file of fewer than 10 lines
fails at validation (``invalid_training_file``, OpenAI's message); the suffix ``mock-fail``
fails while running (``server_error``). Create refuses, with a 400 error envelope, a model that
is not one of the mock's chat models (nor ``ft:…``) and a file id it does not know.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from proxy._mock_files import FileStore
from proxy._mock_payloads import MODELS, InvalidRequest

MAX_JOBS = 1_000
MIN_LINES = 10
FAIL_SUFFIX = "mock-fail"
_TERMINAL = ("succeeded", "failed", "cancelled")
_TRAINABLE = tuple(m for m in MODELS if not m.startswith(("text-embedding", "gpt-3.5")))


class NotFound(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class MockJob:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    method: dict[str, Any]
    metadata: dict[str, Any] | None
    lines: int
    created_at: int
    status: str = "validating_files"
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None
    trained_tokens: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        hyperparameters = self.method.get(self.method.get("type", "supervised"), {}).get(
            "hyperparameters", {}
        )
        return {
            "object": "fine_tuning.job",
            "id": self.id,
            "model": self.model,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": "org-stillroom-mock",
            "result_files": [],
            "status": self.status,
            "validation_file": self.validation_file,
            "training_file": self.training_file,
            "hyperparameters": hyperparameters,
            "trained_tokens": self.trained_tokens,
            "error": self.error,
            "user_provided_suffix": self.suffix,
            "seed": self.seed,
            "estimated_finish": None,
            "integrations": [],
            "metadata": self.metadata,
            "method": self.method,
        }


class FineTuning:
    """The mock's files and jobs (in memory, bounded)."""

    def __init__(self) -> None:
        self.files = FileStore()
        self._jobs: dict[str, MockJob] = {}
        self._seq = 0

    def answer(
        self, method: str, path: str, query: bytes, content_type: bytes, body: bytes
    ) -> tuple[int, dict[str, Any]] | None:
        """(status, JSON) for a Files or fine-tuning route; None for any other path.

        Raises ``InvalidRequest`` (400) and ``NotFound`` (404).
        """
        params = {k: v[-1] for k, v in parse_qs(query.decode("latin-1")).items()}
        parts = path.strip("/").split("/")[1:]  # without "v1"
        if parts[:1] == ["files"]:
            if method == "POST" and len(parts) == 1:
                return 200, self.files.upload(content_type, body)
            if method == "GET" and len(parts) == 1:
                return 200, self.files.listing()
            if method == "GET" and len(parts) == 2:
                found = self.files.get(parts[1])
                if found is None:
                    raise NotFound(f"No such File object: {parts[1]}", "id")
                return 200, found.as_json()
            return None
        if parts[:2] != ["fine_tuning", "jobs"]:
            return None
        rest = parts[2:]
        if not rest:
            if method == "POST":
                return 200, self._create(_json(body)).as_json()
            if method == "GET":
                return 200, self._list(params)
            return None
        job = self._jobs.get(rest[0])
        if job is None:
            raise NotFound(f"No such fine-tuning job: {rest[0]}.", "fine_tuning_job_id")
        if method == "GET" and len(rest) == 1:
            _advance(job)
            return 200, job.as_json()
        if method == "GET" and rest[1:] == ["events"]:
            return 200, _page(list(reversed(job.events)), params)
        if method == "POST" and rest[1:] == ["cancel"]:
            if job.status in _TERMINAL:
                raise InvalidRequest(f"Job has already completed: {job.id}")
            job.status, job.finished_at = "cancelled", int(time.time())
            _event(job, "Fine-tuning job cancelled")
            return 200, job.as_json()
        return None

    def _create(self, body: dict[str, Any]) -> MockJob:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("Missing required parameter: 'model'.", "model")
        if model not in _TRAINABLE and not model.startswith(_TRAINABLE + ("ft:",)):
            raise InvalidRequest(
                f"Model {model} is not available for fine-tuning or does not exist.", "model"
            )
        training = self._file(body.get("training_file"), "training_file")
        validation_id = body.get("validation_file")
        if validation_id is not None:
            self._file(validation_id, "validation_file")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not 1 <= len(suffix) <= 64):
            raise InvalidRequest("suffix must be a string of 1 to 64 characters.", "suffix")
        method = body.get("method") or {"type": "supervised", "supervised": {}}
        if not isinstance(method, dict) or method.get("type") not in (
            "supervised",
            "dpo",
            "reinforcement",
        ):
            raise InvalidRequest("method.type must be supervised, dpo or reinforcement.", "method")
        seed = body.get("seed")
        metadata = body.get("metadata")
        self._seq += 1
        job = MockJob(
            id="ftjob-" + hashlib.sha256(b"job%d" % self._seq).hexdigest()[:24],
            model=model,
            training_file=training.id,
            validation_file=validation_id,
            suffix=suffix,
            seed=seed if isinstance(seed, int) else 42,
            method=method,
            metadata=metadata if isinstance(metadata, dict) else None,
            lines=sum(1 for line in training.content.splitlines() if line.strip()),
            created_at=int(time.time()),
        )
        _event(job, f"Validating training file: {training.id}")
        self._jobs[job.id] = job
        while len(self._jobs) > MAX_JOBS:
            del self._jobs[next(iter(self._jobs))]
        return job

    def _file(self, file_id: object, param: str) -> Any:
        found = self.files.get(file_id) if isinstance(file_id, str) else None
        if found is None:
            raise InvalidRequest(f"invalid {param}: {file_id!s:.80}", param)
        return found

    def _list(self, params: dict[str, str]) -> dict[str, Any]:
        jobs = [job.as_json() for job in reversed(self._jobs.values())]
        page = _page(jobs, params)
        del page["first_id"], page["last_id"]
        return page


def _json(body: bytes) -> dict[str, Any]:
    import orjson

    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(value, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return value


def _page(items: list[dict[str, Any]], params: dict[str, str]) -> dict[str, Any]:
    after = params.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(params["limit"]) if params.get("limit", "").isdigit() else 20
    shown = items[: max(limit, 1)]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(items) > len(shown),
    }


def _event(
    job: MockJob, message: str, level: str = "info", data: dict[str, Any] | None = None
) -> None:
    seq = len(job.events) + 1
    job.events.append(
        {
            "object": "fine_tuning.job.event",
            "id": "ftevent-" + hashlib.sha256(f"{job.id}:{seq}".encode()).hexdigest()[:24],
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "type": "metrics" if data else "message",
            "data": data,
        }
    )


def _advance(job: MockJob) -> None:
    """One step of the walk (called on each retrieve)."""
    now = int(time.time())
    if job.status == "validating_files":
        if job.lines < MIN_LINES:
            job.status, job.finished_at = "failed", now
            job.error = {
                "code": "invalid_training_file",
                "message": "The job failed due to an invalid training file. Expected file to "
                f"have at least {MIN_LINES} lines, but got {job.lines}.",
                "param": "training_file",
            }
            _event(job, job.error["message"], "error")
            return
        job.status = "queued"
        _event(job, "Files validated, moving job to queued state")
    elif job.status == "queued":
        job.status = "running"
        _event(job, "Fine-tuning job started")
        for step in (1, 2, 3):
            loss = round(2.0 / step, 4)
            _event(
                job,
                f"Step {step}/3: training loss={loss}",
                data={"step": step, "train_loss": loss, "total_steps": 3},
            )
    elif job.status == "running":
        job.finished_at = now
        if job.suffix == FAIL_SUFFIX:
            job.status = "failed"
            job.error = {
                "code": "server_error",
                "message": "The job failed due to an internal error.",
                "param": None,
            }
            _event(job, job.error["message"], "error")
            return
        job.status = "succeeded"
        job.trained_tokens = job.lines * 100
        job.fine_tuned_model = (
            f"ft:{job.model}:stillroom-mock:{job.suffix or ''}:{job.id[len('ftjob-') :][:8]}"
        )
        _event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        _event(job, "The job has successfully completed")
