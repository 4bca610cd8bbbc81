"""``JobRunner``: creates training jobs, launches them, polls them, cancels them.

The store holds every job's state, so the runner holds almost none: each pass lists the jobs
that are not finished, launches the ones not yet launched and polls the others, and writes
status changes and new events back. A restarted server therefore resumes where the last one
stopped, and ``stillroom train status`` can do one pass for one job with no server at all.

Nothing here trains: a backend hands the work to a provider (or, for the local backend, a
training process of its own) and returns; the runner only awaits HTTP calls, store writes and
file reads, so it shares the proxy's event loop without holding it. In ``stillroom serve`` the
lifespan starts it (``start``) and stops it (``stop``); its loop is one task made with
``proxy.tasks.spawn``.

Failures: a provider that cannot answer (``TransientError``) is retried with exponential backoff
(a warning event marks the first failure of a streak); launching gives up after
``launch_attempts`` tries and fails the job. A provider's refusal (``ProviderRefused``) fails the
job with the provider's error. A backend that cannot be built here (no key for the job's
provider URL) is skipped with one log line per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.tasks import cancel_and_wait, spawn
from proxy.training.base import (
    BackendUnavailable,
    ProviderRefused,
    ProviderState,
    TrainingBackend,
    TrainingFiles,
    TransientError,
)
from storage.base import Store
from storage.errors import StoreError
from storage.jobs import (
    Job,
    JobError,
    JobSpec,
    JobUpdate,
    NewJobEvent,
    new_job_id,
)

logger = logging.getLogger("stillroom.training")


class JobRefused(Exception):
    """A job that cannot be created or changed; ``param`` names the field, ``code`` the reason."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Where this process may train: the OpenAI-compatible provider (its base URL with ``/v1``
    and key; the key is used only for jobs whose recorded URL is this same URL), and the
    directory local jobs write to (``STILLROOM_MODELS_DIR``)."""

    base_url: str | None = None
    api_key: str | None = None
    models_dir: str = "./stillroom-models"

    def __repr__(self) -> str:  # never the key
        return f"ProviderConfig(base_url={self.base_url!r})"


BackendFactory = Callable[[str, str | None], TrainingBackend]


class JobRunner:
    def __init__(
        self,
        store: Store,
        provider: ProviderConfig,
        *,
        poll_interval: float = 5.0,
        max_backoff: float = 300.0,
        launch_attempts: int = 5,
        make_backend: BackendFactory | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.launch_attempts = launch_attempts
        self._make_backend = make_backend or self._default_backend
        self._backends: dict[tuple[str, str | None], TrainingBackend] = {}
        self._failures: dict[str, int] = {}
        self._next_try: dict[str, float] = {}
        self._skipped: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._run_forever(), name="training-runner")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.aclose()

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.aclose()

    def wake(self) -> None:
        """Run a pass now (a job was just created)."""
        self._wake.set()

    async def _run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                logger.warning("training runner: store error, retrying: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    # -- jobs ---------------------------------------------------------------------------------

    async def create(self, spec: JobSpec) -> Job:
        """Record a job for ``spec`` (status ``validating_files``); a pass launches it."""
        provider_url = self._check_backend(spec.backend)
        if spec.backend == "local":
            spec = self._check_local(spec)
        dataset = await self.store.get_dataset(spec.dataset)
        if dataset is None:
            raise JobRefused(
                f"no dataset named {spec.dataset}", code="dataset_not_found", param="dataset"
            )
        now = time.time()
        job = Job(
            id=new_job_id(),
            backend=spec.backend,
            status="validating_files",
            dataset=dataset.name,
            dataset_hash=dataset.content_hash,
            base_model=spec.base_model,
            method=spec.method,
            hyperparameters=spec.hyperparameters,
            created_at=now,
            updated_at=now,
            suffix=spec.suffix,
            seed=spec.seed,
            provider_url=provider_url,
        )
        await self.store.create_job(job)
        counts = ", ".join(f"{n} {split}" for split, n in dataset.counts.items())
        await self.store.add_job_events(
            job.id,
            [
                NewJobEvent(
                    f"created: {spec.method} of {spec.base_model} on dataset {dataset.name} "
                    f"({counts}) with the {spec.backend} backend",
                    data={"content_hash": dataset.content_hash},
                )
            ],
        )
        self.wake()
        return job

    async def refresh(self, job_id: str) -> Job | None:
        """One step for one job: launch it if it was not, else poll it (the CLI's pass)."""
        job = await self.store.get_job(job_id)
        if job is None or job.is_terminal:
            return job
        return await self._step(job)

    async def cancel(self, job_id: str) -> Job | None:
        job = await self.store.get_job(job_id)
        if job is None:
            return None
        if job.is_terminal:
            raise JobRefused(
                f"job {job_id} has finished ({job.status}); there is nothing to cancel",
                code="job_finished",
                param="id",
            )
        if job.provider_job_id is not None:
            try:
                backend = self._backend(job)
            except BackendUnavailable as exc:
                raise JobRefused(str(exc), code="provider_not_configured") from None
            try:
                state = await backend.cancel(job)
            except ProviderRefused as exc:
                raise JobRefused(
                    f"the provider refused to cancel job {job_id}: {exc.error.message}",
                    code="provider_refused",
                ) from None
            except TransientError as exc:
                raise JobRefused(
                    f"the provider could not be reached to cancel job {job_id}: {exc}",
                    code="provider_unavailable",
                ) from None
            if state.status is None:
                state = ProviderState(status="cancelled", events=state.events)
            job = await self._apply(job, state)
        else:
            job = await self._apply(job, ProviderState(status="cancelled"))
        await self.store.add_job_events(job.id, [NewJobEvent("cancelled on request")])
        return job

    async def run_once(self) -> None:
        """One pass over every job that is not finished."""
        jobs, _ = await self.store.list_jobs(active=True, limit=1000)
        now = time.monotonic()
        for job in reversed(jobs):  # oldest first
            if self._next_try.get(job.id, 0.0) > now:
                continue
            try:
                await self._step(job)
            except BackendUnavailable as exc:
                if job.id not in self._skipped:
                    self._skipped.add(job.id)
                    logger.warning("training job %s is not polled here: %s", job.id, exc)
            except TransientError as exc:
                await self._retry_later(job, exc)
            except StoreError:
                raise
            except Exception:  # one job's bug must not stop the polling of every other job
                logger.exception("training job %s: unexpected error; retrying later", job.id)
                self._next_try[job.id] = time.monotonic() + self.max_backoff

    # -- internals ----------------------------------------------------------------------------

    async def _step(self, job: Job) -> Job:
        if job.provider_job_id is None:
            job = await self._launch(job)
        else:
            job = await self._apply(job, await self._backend(job).poll(job))
        self._failures.pop(job.id, None)
        self._next_try.pop(job.id, None)
        return job

    async def _launch(self, job: Job) -> Job:
        backend = self._backend(job)
        with tempfile.TemporaryDirectory(prefix="stillroom-train-") as folder:
            try:
                files = await self._export(job, backend.export_format(job.method), Path(folder))
            except JobRefused as exc:
                return await self._fail(job, JobError(exc.message, code=exc.code))
            try:
                state = await backend.launch(job, files)
            except ProviderRefused as exc:
                return await self._fail(job, exc.error)
            except TransientError as exc:
                if self._failures.get(job.id, 0) + 1 >= self.launch_attempts:
                    error = JobError(f"could not launch: {exc}", code="provider_unavailable")
                    return await self._fail(job, error)
                raise
        launched = await self._apply(job, state)
        if launched.status == "cancelled" and state.status != "cancelled":
            # Cancelled while it was being launched: stop the provider's job too.
            with contextlib.suppress(TransientError, ProviderRefused):
                await backend.cancel(launched)
        return launched

    async def _export(self, job: Job, fmt: str, folder: Path) -> TrainingFiles:
        from storage.datasets import DatasetChanged
        from storage.export import DatasetNotFound, export_dataset

        dataset = await self.store.get_dataset(job.dataset)
        if dataset is None or dataset.content_hash != job.dataset_hash:
            raise JobRefused(
                f"dataset {job.dataset} was deleted or replaced since the job was created",
                code="dataset_changed",
            )
        lines: dict[str, int] = {}
        paths: dict[str, Path] = {}
        for split in ("train", "validation"):
            path = folder / f"{job.dataset}.{split}.{fmt}.jsonl"
            try:
                manifest = await export_dataset(self.store, job.dataset, fmt, split, path)
            except (DatasetChanged, DatasetNotFound) as exc:
                raise JobRefused(
                    f"dataset {job.dataset} cannot be exported: {exc}", code="dataset_changed"
                ) from None
            lines[split], paths[split] = int(manifest["lines"]), path
        if not lines["train"]:
            raise JobRefused(
                f"dataset {job.dataset} has no training examples in the {fmt} format",
                code="dataset_empty",
            )
        await self.store.add_job_events(
            job.id,
            [NewJobEvent(f"exported {lines['train']} train, {lines['validation']} validation")],
        )
        return TrainingFiles(
            train=paths["train"],
            validation=paths["validation"] if lines["validation"] else None,
            train_examples=lines["train"],
            validation_examples=lines["validation"],
        )

    async def _apply(self, job: Job, state: ProviderState) -> Job:
        """Write what the backend reported; add a status event when the status changed."""
        error = state.error
        if state.status == "failed" and error is None and job.error is None:
            error = JobError("the provider reported the job failed, without a reason")
        update = JobUpdate(
            status=state.status,
            provider_job_id=state.provider_job_id,
            provider_files=state.provider_files,
            fine_tuned_model=state.fine_tuned_model,
            error=error,
        )
        events = list(state.events)
        updated = await self.store.update_job(job.id, update) or job
        if updated.status != job.status:
            detail = f": {updated.error.message}" if updated.error and updated.is_terminal else ""
            level = "error" if updated.status == "failed" else "info"
            events.append(NewJobEvent(f"status {job.status} → {updated.status}{detail}", level))
            if updated.fine_tuned_model:
                events.append(NewJobEvent(f"fine-tuned model: {updated.fine_tuned_model}"))
        await self.store.add_job_events(job.id, events)
        return updated

    async def _fail(self, job: Job, error: JobError) -> Job:
        return await self._apply(job, ProviderState(status="failed", error=error))

    async def _retry_later(self, job: Job, exc: TransientError) -> None:
        failures = self._failures.get(job.id, 0) + 1
        self._failures[job.id] = failures
        delay = min(self.poll_interval * 2 ** (failures - 1), self.max_backoff)
        self._next_try[job.id] = time.monotonic() + delay
        logger.warning("training job %s: %s; retrying in %.1fs", job.id, exc, delay)
        if failures == 1:
            await self.store.add_job_events(
                job.id, [NewJobEvent(f"provider unavailable, retrying: {exc}", "warn")]
            )

    def _check_local(self, spec: JobSpec) -> JobSpec:
        """``spec`` with the base model's absolute path; raises ``JobRefused``."""
        from proxy.training.local import LocalJobInvalid, check_local_job

        try:
            checked = check_local_job(spec.base_model, spec.method, spec.hyperparameters)
        except LocalJobInvalid as exc:
            raise JobRefused(exc.message, code=exc.code, param=exc.param) from None
        return dataclasses.replace(
            spec, base_model=checked.base_model, hyperparameters=checked.hyperparameters
        )

    def _check_backend(self, backend: str) -> str | None:
        """The provider URL a new job on ``backend`` records; raises ``JobRefused``."""
        if backend == "local":
            return None
        if self.provider.base_url is None or not self.provider.api_key:
            raise JobRefused(
                "no fine-tuning provider is configured: set STILLROOM_TRAIN_BASE_URL and "
                "STILLROOM_TRAIN_API_KEY (or --provider-url and --provider-key)",
                code="provider_not_configured",
                param="backend",
            )
        return self.provider.base_url

    def _backend(self, job: Job) -> TrainingBackend:
        if job.backend == "local":
            key: tuple[str, str | None] = ("local", self.provider.models_dir)
            backend = self._backends.get(key)
            if backend is None:
                backend = self._backends[key] = self._make_backend("local", None)
            return backend
        url = job.provider_url
        if url is None or url != self.provider.base_url or not self.provider.api_key:
            raise BackendUnavailable(
                f"the job lives at {url}: give that provider URL and its key "
                "(STILLROOM_TRAIN_BASE_URL and STILLROOM_TRAIN_API_KEY, or --provider-url and "
                "--provider-key)"
            )
        key = (job.backend, url)
        backend = self._backends.get(key)
        if backend is None:
            backend = self._backends[key] = self._make_backend(job.backend, url)
        return backend

    def _default_backend(self, backend: str, url: str | None) -> TrainingBackend:
        if backend == "local":
            from proxy.training.local import LocalBackend

            return LocalBackend(Path(self.provider.models_dir))
        from proxy.training.openai_compatible import OpenAICompatibleBackend

        assert url is not None
        return OpenAICompatibleBackend(url, self.provider.api_key)
