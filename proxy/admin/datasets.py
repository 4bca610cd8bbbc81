"""``/admin/datasets``: create, list, show, delete and export dataset snapshots (docs/admin-api.md).

A dataset is built inside the ``POST`` request and answered 201 with the snapshot's JSON.
``storage.datasets.create_dataset`` is async and yields to the event loop between batches of
captures (measured: at most ~25 ms held per batch of 500); the token encodings, whose first load
would hold it for ~300 ms, are loaded on a worker thread first. A taken name is
409 ``dataset_exists``; a snapshot whose captures were deleted or edited since is 409
``dataset_changed`` when exported.

``GET /admin/datasets/{name}/export`` streams the JSONL file that ``stillroom datasets export``
writes, byte for byte, in chunks of about ``CHUNK_BYTES`` (memory stays flat whatever the
size). The first chunk is built before the status is sent, so a problem found there is an
ordinary error answer; one found later cuts the stream (no final chunk), so a client can never
take a partial file for a whole one. The headers carry the dataset's content hash and the
number of examples; the whole manifest is ``GET /admin/datasets/{name}/export/manifest``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

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
from proxy.admin.params import is_dataset_name, parse_body_spec, parse_export_params
from proxy.errors import InvalidRequest, ProxyError, RouteNotFound
from storage.base import Store
from storage.datasets import Dataset, DatasetChanged, DatasetExists, Split, create_dataset
from storage.errors import StoreError
from storage.query import FILTER_PARAMS, QueryError

PREFETCH_BYTES = 1024 * 1024
JSONL = "application/jsonl"


class DatasetConflict(ProxyError):
    """409: the name is taken (``dataset_exists``), or the snapshot no longer matches its
    captures (``dataset_changed``)."""

    status_code = 409
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


def dataset_routes(store: StoreProvider) -> list[Route]:
    routes = DatasetRoutes(store)
    return [
        route("/admin/datasets", "GET", routes.list_datasets),
        route("/admin/datasets", "POST", routes.create_dataset),
        route("/admin/datasets/{name}", "GET", routes.get_dataset),
        route("/admin/datasets/{name}", "DELETE", routes.delete_dataset),
        route("/admin/datasets/{name}/export", "GET", routes.export),
        route("/admin/datasets/{name}/export/manifest", "GET", routes.manifest),
    ]


class DatasetRoutes:
    def __init__(self, store: StoreProvider) -> None:
        self._store = store

    def store(self) -> Store:
        return current_store(self._store)

    async def list_datasets(self, request: Request) -> Response:
        no_parameters(request)
        datasets = await self.store().list_datasets()
        return json_response({"object": "list", "data": [d.to_json() for d in datasets]})

    async def create_dataset(self, request: Request) -> Response:
        spec = parse_body_spec(await read_json(request))
        store = self.store()
        await run_in_threadpool(_load_encodings)
        try:
            dataset = await create_dataset(store, spec)
        except QueryError as exc:  # e.g. a full-text query FTS5 cannot parse
            param = f"filter.{exc.param}" if exc.param in FILTER_PARAMS else exc.param
            raise QueryError(exc.message, param=param) from None
        except DatasetExists:
            raise DatasetConflict(
                f"a dataset named {spec.name} exists already (datasets are immutable: pick "
                "another name, or delete that one first)",
                code="dataset_exists",
                param="name",
            ) from None
        logger.info("admin: created dataset %s", dataset.name)
        return json_response(dataset.to_json(), status=201)

    async def get_dataset(self, request: Request) -> Response:
        no_parameters(request)
        dataset = await self._dataset(request)
        return json_response(dataset.to_json())

    async def delete_dataset(self, request: Request) -> Response:
        no_parameters(request)
        name = _name(request)
        if not await self.store().delete_dataset(name):
            raise _no_dataset(name)
        logger.info("admin: deleted dataset %s", name)
        return json_response({"object": "dataset.deleted", "name": name, "deleted": True})

    async def export(self, request: Request) -> Response:
        fmt, split = parse_export_params(query_params(request))
        dataset = await self._dataset(request)
        chunks = _export_lines(self.store(), dataset.name, fmt, split)
        first = await _prefetch(dataset.name, chunks)
        file_name = export_file_name(dataset.name, fmt, split)
        headers = {
            "Content-Disposition": f'attachment; filename="{file_name}"',
            "X-Stillroom-Content-Hash": dataset.content_hash,
            "X-Stillroom-Examples": str(dataset.counts.get(split, 0)),
            "Link": f'<{_manifest_url(dataset.name, fmt, split)}>; rel="describedby"',
        }
        return _ExportStream(dataset.name, first, chunks, headers=headers)

    async def manifest(self, request: Request) -> Response:
        fmt, split = parse_export_params(query_params(request))
        dataset = await self._dataset(request)
        digest = hashlib.sha256()
        size = lines = 0
        try:
            async for chunk in _export_lines(self.store(), dataset.name, fmt, split):
                digest.update(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
        except DatasetChanged as exc:
            raise _changed(dataset.name, exc) from None
        file = {
            "name": export_file_name(dataset.name, fmt, split),
            "encoding": "jsonl",
            "bytes": size,
            "sha256": digest.hexdigest(),
        }
        return json_response(export_manifest(dataset, fmt, split, file, lines))

    async def _dataset(self, request: Request) -> Dataset:
        name = _name(request)
        dataset = await self.store().get_dataset(name)
        if dataset is None:
            raise _no_dataset(name)
        return dataset


def _load_encodings() -> None:
    """Load the token encodings (a third of a second, once per process) on a worker thread,
    so the first dataset does not hold the event loop, and so the proxy, that long."""
    from storage.tokens import get_encoding

    for name in ("o200k_base", "cl100k_base"):
        get_encoding(name)


def _name(request: Request) -> str:
    """The path's dataset name; a malformed one names no dataset: 404."""
    name: str = request.path_params["name"]
    if not is_dataset_name(name):
        raise RouteNotFound(
            f"no dataset {name!r:.80}: names are 1-64 of a-z 0-9 - _ . (a letter or digit first)",
            param="name",
        )
    return name


def _no_dataset(name: str) -> RouteNotFound:
    return RouteNotFound(f"no dataset named {name}", param="name")


def _changed(name: str, exc: DatasetChanged) -> DatasetConflict:
    return DatasetConflict(
        f"dataset {name} no longer matches its captures ({exc}); create a new dataset",
        code="dataset_changed",
    )


def export_file_name(name: str, fmt: str, split: Split) -> str:
    return f"{name}.{split}.{fmt}.jsonl"


def _manifest_url(name: str, fmt: str, split: Split) -> str:
    return f"/admin/datasets/{name}/export/manifest?format={fmt}&split={split}"


async def _export_lines(store: Store, name: str, fmt: str, split: Split) -> AsyncIterator[bytes]:
    """``storage.export.export_lines``, with its refusals as answers (the dataset may have been
    deleted since it was looked up)."""
    from storage.export import DatasetNotFound, ExportError, export_lines

    try:
        async for chunk in export_lines(store, name, fmt, split):
            yield chunk
    except DatasetNotFound:
        raise _no_dataset(name) from None
    except ExportError as exc:
        raise InvalidRequest(str(exc)) from None


async def _prefetch(name: str, chunks: AsyncIterator[bytes]) -> list[bytes]:
    """The export's first ``PREFETCH_BYTES`` (or all of it), read before the status is sent:
    a change to the dataset found by then is an ordinary 409 answer."""
    first: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            first.append(chunk)
            size += len(chunk)
            if size >= PREFETCH_BYTES:
                break
    except DatasetChanged as exc:
        raise _changed(name, exc) from None
    return first


class _ExportStream(StreamingResponse):
    """The export's chunks; a change found mid-way cuts the response instead of ending it."""

    def __init__(
        self, name: str, first: list[bytes], rest: AsyncIterator[bytes], headers: dict[str, str]
    ) -> None:
        super().__init__(_prepend(first, rest), headers=headers, media_type=JSONL)
        self._name = name

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.body_iterator:
                assert isinstance(chunk, bytes)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (DatasetChanged, StoreError) as exc:
            # The status is sent: leave the body unfinished so the client sees a broken
            # transfer, never a short file that looks complete.
            logger.warning("admin: export of dataset %s cut short: %s", self._name, exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _prepend(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    for chunk in first:
        yield chunk
    first.clear()
    async for chunk in rest:
        yield chunk


def export_manifest(
    dataset: Dataset, fmt: str, split: str, file: dict[str, Any], lines: int
) -> dict[str, Any]:
    """The manifest of a streamed export: what ``storage.export.export_dataset`` writes beside
    a file, for the file the stream makes (tests/test_datasets_api.py holds the two equal)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        stillroom_version = version("stillroom")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        stillroom_version = "unknown"
    return {
        "object": "dataset.export",
        "dataset": dataset.name,
        "content_hash": dataset.content_hash,
        "format": fmt,
        "split": split,
        "file": file,
        "lines": lines,
        "spec": dataset.spec,
        "counts": dataset.counts,
        "considered": dataset.considered,
        "rejected": dataset.rejected,
        "tokens": {s: stats.to_json() for s, stats in dataset.tokens.items()},
        "leakage": dataset.leakage,
        "dataset_created_at": dataset.created_at,
        "dataset_version": dataset.version,
        "stillroom_version": stillroom_version,
        "created_at": time.time(),
    }
