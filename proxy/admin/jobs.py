"""``/admin/jobs``: start, list, show, follow and cancel training jobs (docs/admin-api.md).

``POST /admin/jobs`` records the job and answers 201 at once (status ``validating_files``); the
server's ``JobRunner`` exports the dataset and launches it on its next pass, which the create
triggers. The provider is the server's own (``STILLROOM_TRAIN_BASE_URL`` and
``STILLROOM_TRAIN_API_KEY``): a request can never name another URL, so the key cannot be sent
anywhere an admin-API caller chooses. Without a provider configured a create answers 400
``provider_not_configured``. ``backend: "local"`` trains on the server's machine, from a base
model on its disk (``STILLROOM_MODELS_DIR``); what cannot work there is refused with 400.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.admin._http import (
    StoreProvider,
    current_store,
    json_response,
    logger,
    no_parameters,
    query_params,
    read_json,
    route,
)
from proxy.admin.params import JOB_EVENT_SCHEMAS, JOB_LIST_SCHEMAS, parse_page_params
from proxy.errors import InvalidRequest, ProxyError, RouteNotFound, StoreNotReady
from proxy.training.runner import JobRefused, JobRunner
from storage.base import Store
from storage.jobs import JobSpecError, is_job_id, parse_job_spec

RunnerProvider = Callable[[], JobRunner | None]


class JobConflict(ProxyError):
    """409: the job has finished (``job_finished``), or the provider refused or could not be
    reached to cancel it."""

    status_code = 409
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


class JobInvalid(InvalidRequest):
    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


def job_routes(store: StoreProvider, runner: RunnerProvider) -> list[Route]:
    routes = JobRoutes(store, runner)
    return [
        route("/admin/jobs", "GET", routes.list_jobs),
        route("/admin/jobs", "POST", routes.create_job),
        route("/admin/jobs/{id}", "GET", routes.get_job),
        route("/admin/jobs/{id}/events", "GET", routes.job_events),
        route("/admin/jobs/{id}/cancel", "POST", routes.cancel_job),
    ]


class JobRoutes:
    def __init__(self, store: StoreProvider, runner: RunnerProvider) -> None:
        self._store = store
        self._runner = runner

    def store(self) -> Store:
        return current_store(self._store)

    def runner(self) -> JobRunner:
        runner = self._runner()
        if runner is None:
            raise StoreNotReady(
                "training jobs need the store: capture is off or the server is stopping"
            )
        return runner

    async def list_jobs(self, request: Request) -> Response:
        page = parse_page_params(query_params(request), JOB_LIST_SCHEMAS)
        after = page.get("after")
        jobs, more = await self.store().list_jobs(
            after=after if isinstance(after, str) else None, limit=int(page["limit"])
        )
        data = [job.to_json() for job in jobs]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    async def create_job(self, request: Request) -> Response:
        try:
            spec = parse_job_spec(await read_json(request))
        except JobSpecError as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        try:
            job = await self.runner().create(spec)
        except JobRefused as exc:
            if exc.code == "dataset_not_found":
                raise RouteNotFound(exc.message, param="dataset") from None
            raise JobInvalid(exc.message, code=exc.code, param=exc.param) from None
        logger.info("admin: created training job %s on dataset %s", job.id, job.dataset)
        return json_response(job.to_json(), status=201)

    async def get_job(self, request: Request) -> Response:
        no_parameters(request)
        job_id = _job_id(request)
        job = await self.store().get_job(job_id)
        if job is None:
            raise _no_job(job_id)
        return json_response(job.to_json())

    async def job_events(self, request: Request) -> Response:
        page = parse_page_params(query_params(request), JOB_EVENT_SCHEMAS)
        job_id = _job_id(request)
        store = self.store()
        if await store.get_job(job_id) is None:
            raise _no_job(job_id)
        events, more = await store.job_events(
            job_id, after=int(page["after"]), limit=int(page["limit"])
        )
        data = [event.to_json() for event in events]
        return json_response(
            {
                "object": "list",
                "data": data,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    async def cancel_job(self, request: Request) -> Response:
        no_parameters(request)
        job_id = _job_id(request)
        try:
            job = await self.runner().cancel(job_id)
        except JobRefused as exc:
            raise JobConflict(exc.message, code=exc.code, param=exc.param) from None
        if job is None:
            raise _no_job(job_id)
        logger.info("admin: cancelled training job %s", job_id)
        return json_response(job.to_json())


def _job_id(request: Request) -> str:
    job_id: str = request.path_params["id"]
    if not is_job_id(job_id):
        raise RouteNotFound(
            f"no job {job_id!r:.80}: job ids are ftjob- and 32 hex digits", param="id"
        )
    return job_id


def _no_job(job_id: str) -> RouteNotFound:
    return RouteNotFound(f"no training job with id {job_id}", param="id")
