"""Where ``stillroom train …`` gets its data: the database file, or a running server.

``LocalJobs`` drives the jobs in the database itself with a ``JobRunner`` of its own: ``start``
records the job and launches it at once, ``status``/``events`` poll the provider once before
answering (so a job moves on with no server running), ``cancel`` cancels it at the provider.
The provider is the one ``--provider-url``/``--provider-key`` (or ``STILLROOM_TRAIN_BASE_URL``/
``STILLROOM_TRAIN_API_KEY``) name. ``RemoteJobs`` calls the admin API's ``/admin/jobs``; the
server then uses its own provider settings, and the provider flags are refused. Both answer in
the admin API's JSON.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol

from proxy._capture_source import (
    JSON,
    BadUsage,
    CaptureSource,
    CommandFailed,
    LocalSource,
    RemoteSource,
)
from proxy.training.runner import ProviderConfig

logger = logging.getLogger("stillroom.training")


class JobNotFound(CommandFailed):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no training job {job_id}")


class JobSource(CaptureSource, Protocol):
    async def start_job(self, spec: JSON) -> JSON: ...

    async def get_job(self, job_id: str) -> JSON: ...

    async def list_jobs(self, after: str | None, limit: int) -> JSON: ...

    async def cancel_job(self, job_id: str) -> JSON: ...

    async def job_events(self, job_id: str, after: int, limit: int) -> JSON: ...


class LocalJobs(LocalSource):
    def __init__(self, database: str, provider: ProviderConfig) -> None:
        from proxy.training.runner import JobRunner

        super().__init__(database)
        self._runner = JobRunner(self._store, provider)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.aclose()
        await super().__aexit__(exc_type, exc, tb)

    async def start_job(self, spec: JSON) -> JSON:
        from proxy.training.runner import JobRefused
        from storage.jobs import JobSpecError, parse_job_spec

        try:
            checked = parse_job_spec(spec)
        except JobSpecError as exc:
            raise BadUsage(exc.message) from None
        try:
            job = await self._runner.create(checked)
        except JobRefused as exc:
            raise CommandFailed(exc.message) from None
        return await self._refresh(job.id)

    async def get_job(self, job_id: str) -> JSON:
        return await self._refresh(job_id)

    async def list_jobs(self, after: str | None, limit: int) -> JSON:
        jobs, more = await self._store.list_jobs(after=after, limit=limit)
        data = [job.to_json() for job in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def cancel_job(self, job_id: str) -> JSON:
        from proxy.training.runner import JobRefused

        try:
            job = await self._runner.cancel(job_id)
        except JobRefused as exc:
            raise CommandFailed(exc.message) from None
        if job is None:
            raise JobNotFound(job_id)
        return job.to_json()

    async def job_events(self, job_id: str, after: int, limit: int) -> JSON:
        await self._refresh(job_id)
        events, more = await self._store.job_events(job_id, after=after, limit=limit)
        data = [event.to_json() for event in events]
        return {
            "object": "list",
            "data": data,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def _refresh(self, job_id: str) -> JSON:
        """The job after one launch-or-poll step, when this process can reach its provider."""
        from proxy.training.base import BackendUnavailable, TransientError

        job = await self._store.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        try:
            job = await self._runner.refresh(job_id) or job
        except BackendUnavailable as exc:
            logger.info("job %s not refreshed: %s", job_id, exc)
        except TransientError as exc:
            logger.warning("job %s not refreshed, the provider is unavailable: %s", job_id, exc)
        return job.to_json()


class RemoteJobs(RemoteSource):
    async def start_job(self, spec: JSON) -> JSON:
        return await self._call("POST", "/admin/jobs", body=spec)

    async def get_job(self, job_id: str) -> JSON:
        return await self._call("GET", f"/admin/jobs/{job_id}", missing=JobNotFound(job_id))

    async def list_jobs(self, after: str | None, limit: int) -> JSON:
        import httpx

        params = httpx.QueryParams({"limit": limit, **({"after": after} if after else {})})
        return await self._call("GET", "/admin/jobs", params=params)

    async def cancel_job(self, job_id: str) -> JSON:
        path = f"/admin/jobs/{job_id}/cancel"
        return await self._call("POST", path, missing=JobNotFound(job_id))

    async def job_events(self, job_id: str, after: int, limit: int) -> JSON:
        import httpx

        params = httpx.QueryParams({"after": after, "limit": limit})
        path = f"/admin/jobs/{job_id}/events"
        return await self._call("GET", path, params=params, missing=JobNotFound(job_id))
