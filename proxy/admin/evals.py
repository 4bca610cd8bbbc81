"""``/admin/evals``: start, list, show, page through and delete evals (docs/admin-api.md).

``POST /admin/evals`` takes the body ``stillroom eval run`` builds (``parse_eval_spec``),
checks the dataset (404 unknown) and its split (400 ``dataset_empty`` with no examples),
stores the eval's running document and answers 201 with it at once. The run itself
(``proxy.evals.runner.run_eval``) is a task owned by the server's ``EvalTasks``: at most
``MAX_RUNNING`` at once (429 ``too_many_evals`` past that), ``done`` saved as it goes, the
report when it completes, ``status: "failed"`` with the ``error`` when it fails, and
``"interrupted"`` for those the server's shutdown cancels. ``RemoteEvals``
(``stillroom eval … --url``) follows it with ``GET /admin/evals/{id}``.

The other routes read what ``run_eval`` stored (kind ``eval``: the report as the document, the
graded examples as its items), as ``LocalEvals`` does on a database file. With capture off
there is no store to run evals on: a create answers 503, as for jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

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
from proxy.admin.params import is_dataset_name, matches, parse_page_params
from proxy.errors import InvalidRequest, ProxyError, RouteNotFound, StoreNotReady
from proxy.evals.runner import KIND, new_eval_id, run_eval, running_document
from proxy.evals.spec import EvalError, EvalSpec, parse_eval_spec
from proxy.tasks import spawn
from storage.base import Store
from storage.documents import Document
from storage.errors import StoreError

EVAL_ID_PATTERN: Final = "^eval-[0-9a-f]{32}$"
MAX_RUNNING: Final = 4  # evals one server runs at once; each holds `concurrency` requests
STOP_TIMEOUT_S: Final = 10.0
EVAL_LIST_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "after": {
        "type": "string",
        "pattern": EVAL_ID_PATTERN,
        "description": "the last id of the previous page (exclusive)",
    },
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
}
EVAL_ITEM_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "after": {
        "type": "integer",
        "minimum": 0,
        "maximum": 2**53 - 1,
        "default": 0,
        "description": "the last id already read (examples come in the order graded)",
    },
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}


def _abandoned(doc: Document) -> bool:
    """A "running" eval whose server died (``kill -9``): no progress saved for longer than two
    student timeouts and a minute, which no live run goes without (each answer saves it)."""
    spec = doc.body.get("spec")
    given = spec.get("timeout_s") if isinstance(spec, dict) else None
    timeout = float(given) if isinstance(given, int | float) else 60.0
    return time.time() - doc.updated_at > 2 * timeout + 60.0


class EvalInvalid(InvalidRequest):
    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


class EvalRunning(ProxyError):
    """409: the eval is still running (``eval_running``)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "eval_running"


class TooManyEvals(ProxyError):
    """429: this server already runs ``MAX_RUNNING`` evals (``too_many_evals``)."""

    status_code = 429
    error_type = "invalid_request_error"
    code = "too_many_evals"


class EvalTasks:
    """The evals this server runs, each a task it owns, at most ``max_running`` at once;
    ``stop()`` cancels those still running, and their documents say ``"interrupted"``."""

    def __init__(self, store: Store, *, max_running: int = MAX_RUNNING) -> None:
        self._store = store
        self._max_running = max_running
        self._running: dict[str, asyncio.Task[None] | None] = {}  # None: being stored
        self._stopping = False

    async def start(self, spec: EvalSpec, total: int) -> dict[str, Any]:
        """Store the running document and start the run; the document."""
        if self._stopping:
            raise StoreNotReady("the server is stopping: it starts no more evals")
        if len(self._running) >= self._max_running:
            raise TooManyEvals(
                f"this server already runs {self._max_running} evals; try again when one "
                "has finished"
            )
        eval_id = new_eval_id()
        document = running_document(spec, eval_id, total)
        self._running[eval_id] = None  # the slot is taken before the first await
        try:
            await self._store.put_document(KIND, eval_id, document, if_version=0)
        except BaseException:
            del self._running[eval_id]
            raise
        if self._stopping:  # stop() began while the document was being stored
            del self._running[eval_id]
            await self._interrupted(eval_id)
            raise StoreNotReady("the server is stopping: it starts no more evals")
        self._running[eval_id] = spawn(self._run(spec, document), name=f"eval {eval_id}")
        return document

    async def _run(self, spec: EvalSpec, document: dict[str, Any]) -> None:
        eval_id = str(document["id"])
        try:
            body = await run_eval(self._store, spec, document=document)
            passed = (body.get("verdict") or {}).get("passed")
            logger.info("admin: eval %s completed (passed: %s)", eval_id, passed)
        except EvalError as exc:  # the dataset changed since the check; the document says so
            logger.warning("admin: eval %s failed: %s", eval_id, exc.message)
        finally:
            self._running.pop(eval_id, None)

    async def stop(self) -> None:
        """Cancel the running evals and wait for them to record it."""
        self._stopping = True
        tasks = {eval_id: task for eval_id, task in self._running.items() if task is not None}
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.wait(tasks.values(), timeout=STOP_TIMEOUT_S)
        for eval_id in tasks:  # a task cancelled before it began never saw the cancel
            await self._interrupted(eval_id)
        if tasks:
            logger.info("interrupted %d running evals", len(tasks))

    async def _interrupted(self, eval_id: str) -> None:
        """Mark the eval failed ("interrupted") unless it has finished already."""
        failed = {"status": "failed", "error": "interrupted", "finished_at": time.time()}
        try:
            doc = await self._store.get_document(KIND, eval_id)
            if doc is not None and doc.body.get("status") == "running":
                await self._store.put_document(KIND, eval_id, doc.body | failed)
        except StoreError as exc:
            logger.warning("eval %s: could not record that it was interrupted: %s", eval_id, exc)


EvalTasksProvider = Callable[[], EvalTasks | None]


def eval_routes(store: StoreProvider, tasks: EvalTasksProvider) -> list[Route]:
    routes = EvalRoutes(store, tasks)
    return [
        route("/admin/evals", "GET", routes.list_evals),
        route("/admin/evals", "POST", routes.create_eval),
        route("/admin/evals/{id}", "GET", routes.get_eval),
        route("/admin/evals/{id}", "DELETE", routes.delete_eval),
        route("/admin/evals/{id}/items", "GET", routes.eval_items),
    ]


class EvalRoutes:
    def __init__(self, store: StoreProvider, tasks: EvalTasksProvider) -> None:
        self._store = store
        self._tasks = tasks

    def store(self) -> Store:
        return current_store(self._store)

    def tasks(self) -> EvalTasks:
        tasks = self._tasks()
        if tasks is None:
            raise StoreNotReady("evals need the store: capture is off or the server is stopping")
        return tasks

    async def list_evals(self, request: Request) -> Response:
        page = parse_page_params(query_params(request), EVAL_LIST_SCHEMAS)
        after = page.get("after")
        docs, more = await self.store().list_documents(
            KIND, after=after if isinstance(after, str) else None, limit=int(page["limit"])
        )
        return json_response(
            {
                "object": "list",
                "data": [eval_json(doc) for doc in docs],
                "first_id": docs[0].id if docs else None,
                "last_id": docs[-1].id if docs else None,
                "has_more": more,
            }
        )

    async def create_eval(self, request: Request) -> Response:
        no_parameters(request)
        try:
            spec = parse_eval_spec(await read_json(request))
        except EvalError as exc:
            raise EvalInvalid(exc.message, code=exc.code, param=exc.param) from None
        tasks = self.tasks()
        name, split = spec.dataset, spec.split
        dataset = await self.store().get_dataset(name) if is_dataset_name(name) else None
        if dataset is None:
            raise RouteNotFound(f"no dataset named {name!r:.80}", param="dataset")
        examples = dataset.counts.get(split, 0)
        if not examples:
            raise EvalInvalid(
                f"dataset {name} has no {split} examples to evaluate",
                code="dataset_empty",
                param="split",
            )
        total = min(examples, spec.limit) if spec.limit is not None else examples
        document = await tasks.start(spec, total)
        logger.info(
            "admin: started eval %s on %s/%s (%d examples)", document["id"], name, split, total
        )
        return json_response(document, status=201)

    async def get_eval(self, request: Request) -> Response:
        no_parameters(request)
        return json_response(eval_json(await self._document(request)))

    async def delete_eval(self, request: Request) -> Response:
        no_parameters(request)
        doc = await self._document(request)
        if doc.body.get("status") == "running" and not _abandoned(doc):
            raise EvalRunning(f"eval {doc.id} is still running; delete it once it has finished")
        if not await self.store().delete_document(KIND, doc.id):
            raise _no_eval(doc.id)
        logger.info("admin: deleted eval %s", doc.id)
        return json_response({"object": "eval.deleted", "id": doc.id, "deleted": True})

    async def eval_items(self, request: Request) -> Response:
        page = parse_page_params(query_params(request), EVAL_ITEM_SCHEMAS)
        doc = await self._document(request)
        items, more = await self.store().list_items(
            KIND, doc.id, after=int(page["after"]), limit=int(page["limit"])
        )
        data = [{"id": item.seq, **item.body} for item in items]
        return json_response(
            {
                "object": "list",
                "data": data,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    async def _document(self, request: Request) -> Document:
        """The path's eval; a malformed id is an eval that cannot exist: 404."""
        eval_id: str = request.path_params["id"]
        if not matches(EVAL_ID_PATTERN, eval_id):
            raise RouteNotFound(
                f"no eval {eval_id!r:.80}: eval ids are eval- and 32 hex digits", param="id"
            )
        doc = await self.store().get_document(KIND, eval_id)
        if doc is None:
            raise _no_eval(eval_id)
        return doc


def eval_json(doc: Document) -> dict[str, Any]:
    """An eval as the API answers it: the stored document's body (the report once completed)."""
    return {"object": "eval", "id": doc.id} | doc.body


def _no_eval(eval_id: str) -> RouteNotFound:
    return RouteNotFound(f"no eval with id {eval_id}", param="id")
