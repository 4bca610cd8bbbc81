"""``OpenAICompatibleBackend``: fine-tuning on any server with OpenAI's Files and jobs API.

OpenAI, Azure OpenAI (its v1 surface), Nebius, Crusoe and ``stillroom mock`` take the same calls
(shared/reference/training.md §a): upload each file with ``POST {base}/files`` (multipart,
``purpose=fine-tune``), create the job with ``POST {base}/fine_tuning/jobs`` (``model``,
``training_file``, ``validation_file``, ``method: {type, supervised|dpo: {hyperparameters}}``,
``suffix``, ``seed``, ``metadata``), then ``GET {base}/fine_tuning/jobs/{id}`` and its
``/events``, and ``POST …/cancel``. ``base`` includes ``/v1``. Hyperparameters go as given:
providers name them differently (OpenAI ``n_epochs``, Nebius an absolute ``learning_rate``).

Errors: a connection failure, timeout, 5xx or 429 is ``TransientError`` (the runner retries
with backoff); any other 4xx is ``ProviderRefused`` with the provider's OpenAI-shaped error.
The API key is sent as a bearer header and nowhere else: it is never logged, and any echo of
it in a provider's message (OpenAI's 401 quotes part of a wrong key) is masked before the
message can reach the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from proxy.training.base import ProviderRefused, ProviderState, TrainingFiles, TransientError
from storage.jobs import Job, JobError, NewJobEvent

_METHODS = {"sft": "supervised", "dpo": "dpo"}
_FORMATS = {"sft": "openai-chat", "dpo": "openai-dpo"}
_EVENTS_PAGE = 100
_LEVELS = {"info", "warn", "error"}


class OpenAICompatibleBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key or ""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatibleBackend({self.base_url!r})"

    def export_format(self, method: str) -> str:
        return _FORMATS[method]

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the three calls ----------------------------------------------------------------------

    async def launch(self, job: Job, files: TrainingFiles) -> ProviderState:
        uploaded = {"train": await self._upload(files.train)}
        if files.validation is not None:
            uploaded["validation"] = await self._upload(files.validation)
        body: dict[str, Any] = {
            "model": job.base_model,
            "training_file": uploaded["train"],
            "method": {
                "type": _METHODS[job.method],
                _METHODS[job.method]: {"hyperparameters": job.hyperparameters},
            },
            "metadata": {
                "stillroom_job": job.id,
                "stillroom_dataset": job.dataset[:512],
                "stillroom_dataset_hash": job.dataset_hash[:64],
            },
        }
        if "validation" in uploaded:
            body["validation_file"] = uploaded["validation"]
        if job.suffix is not None:
            body["suffix"] = job.suffix
        if job.seed is not None:
            body["seed"] = job.seed
        created = await self._call("POST", "/fine_tuning/jobs", json=body)
        state = self._state(created)
        event = NewJobEvent(
            f"created provider job {created.get('id')} at {self.base_url}",
            data={"provider_job_id": created.get("id"), "files": uploaded},
        )
        return ProviderState(
            status=state.status,
            provider_job_id=str(created.get("id")),
            provider_files=uploaded,
            fine_tuned_model=state.fine_tuned_model,
            error=state.error,
            events=[event],
        )

    async def poll(self, job: Job) -> ProviderState:
        provider_id = _provider_id(job)
        answer = await self._call("GET", f"/fine_tuning/jobs/{provider_id}")
        state = self._state(answer)
        page = await self._call(
            "GET", f"/fine_tuning/jobs/{provider_id}/events", params={"limit": _EVENTS_PAGE}
        )
        data = page.get("data")
        items = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
        # The provider lists newest first: oldest first, keeping the order of equal times.
        events = sorted((self._event(item) for item in reversed(items)), key=_event_time)
        return ProviderState(
            status=state.status,
            fine_tuned_model=state.fine_tuned_model,
            error=state.error,
            events=events,
        )

    async def cancel(self, job: Job) -> ProviderState:
        answer = await self._call("POST", f"/fine_tuning/jobs/{_provider_id(job)}/cancel")
        return self._state(answer)

    # -- HTTP ---------------------------------------------------------------------------------

    async def _upload(self, path: Path) -> str:
        with open(path, "rb") as file:
            answer = await self._call(
                "POST",
                "/files",
                data={"purpose": "fine-tune"},
                files={"file": (path.name, file, "application/jsonl")},
            )
        file_id = answer.get("id")
        if not isinstance(file_id, str) or not file_id:
            raise TransientError(f"{self.base_url}/files answered without a file id")
        return file_id

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        where = f"{method} {self.base_url}{path}"
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise TransientError(f"{where}: no answer in time") from None
        except httpx.TransportError as exc:
            raise TransientError(f"{where}: {self._mask(str(exc) or type(exc).__name__)}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        status = response.status_code
        if status >= 500 or status == 429 or status == 408:
            message = self._error(answer, status).message
            raise TransientError(f"{where} answered {status}: {message}")
        if status >= 400:
            raise ProviderRefused(self._error(answer, status))
        if not isinstance(answer, dict):
            raise TransientError(f"{where} answered {status} without a JSON object")
        return answer

    def _error(self, answer: object, status: int) -> JobError:
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            return JobError(f"the provider answered {status}", code=f"http_{status}")
        message = error.get("message")
        code, param = error.get("code"), error.get("param")
        return JobError(
            self._mask(message if isinstance(message, str) and message else f"HTTP {status}"),
            code=self._mask(code) if isinstance(code, str) else None,
            param=param if isinstance(param, str) else None,
        )

    def _mask(self, text: str) -> str:
        """``text`` without the key, nor any 8+ character piece of it a provider may quote."""
        key = self._key
        if not key:
            return text
        text = text.replace(key, "***")
        for size in (16, 8):
            for start in range(max(len(key) - size + 1, 0)):
                piece = key[start : start + size]
                if piece in text:
                    text = text.replace(piece, "***")
        return text

    # -- answers ------------------------------------------------------------------------------

    def _state(self, answer: dict[str, Any]) -> ProviderState:
        status = answer.get("status")
        model = answer.get("fine_tuned_model")
        error = answer.get("error")
        job_error = None
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
            job_error = JobError(
                self._mask(error["message"]),
                code=error.get("code") if isinstance(error.get("code"), str) else None,
                param=error.get("param") if isinstance(error.get("param"), str) else None,
            )
        return ProviderState(
            status=status if isinstance(status, str) and status else None,
            fine_tuned_model=model if isinstance(model, str) and model else None,
            error=job_error,
        )

    def _event(self, item: dict[str, Any]) -> NewJobEvent:
        level = item.get("level")
        created = item.get("created_at")
        data = item.get("data")
        event_id = item.get("id")
        message = item.get("message")
        return NewJobEvent(
            self._mask(message) if isinstance(message, str) else "",
            level=level if level in _LEVELS else "info",
            data=data if isinstance(data, dict) else None,
            created_at=float(created) if isinstance(created, int | float) else None,
            source_id=str(event_id) if event_id is not None else None,
        )


def _event_time(event: NewJobEvent) -> float:
    return event.created_at or 0.0


def _provider_id(job: Job) -> str:
    if job.provider_job_id is None:
        raise ValueError(f"job {job.id} was not launched")
    return job.provider_job_id
