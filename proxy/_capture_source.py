"""Where ``stillroom captures …`` and ``stillroom stats`` get their data.

``LocalSource`` works on a database file through the ``Store``; ``RemoteSource`` calls a running
server's admin API (``docs/admin-api.md``) with httpx. Both answer in the admin API's JSON shapes
(``proxy.admin.serialize``), so a command prints the same thing either way. Failures become
``CommandFailed`` (exit 1) or ``BadUsage`` (exit 2): one line, no traceback. The admin token is
sent as a header and never appears in a message.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import click

if TYPE_CHECKING:
    import httpx

    from storage.query import CaptureFilter, CapturePatch

Params = dict[str, list[str]]  # filter parameters, as query strings carry them
JSON = dict[str, Any]


class CommandFailed(click.ClickException):
    """The command could not do its work (exit 1)."""


class BadUsage(CommandFailed):
    """A bad filter, id or option (exit 2, one line: not click's usage banner)."""

    exit_code = 2


class CaptureNotFound(CommandFailed):
    def __init__(self, capture_id: str) -> None:
        super().__init__(f"no capture {capture_id}")


def filter_body(params: Params) -> JSON:
    """The JSON form of a (checked) filter for the bulk routes: ``tag`` a list of strings,
    ``status`` an integer, ``has_tool_calls`` and ``excluded`` booleans, the rest strings."""
    body: JSON = {}
    for name, values in params.items():
        if name == "tag":
            body[name] = list(values)
        elif name == "status":
            body[name] = int(values[0])
        elif name in ("has_tool_calls", "excluded"):
            body[name] = values[0] == "true"
        else:
            body[name] = values[0]
    return body


def check_filter(params: Params) -> CaptureFilter:
    """The admin API's own check of filter parameters (``proxy.admin.params``), after
    ``storage.query.parse_filter`` (whose messages say more, e.g. for a tag without a colon)."""
    from proxy.admin.params import parse_query_filter
    from storage.query import QueryError, parse_filter

    try:
        parse_filter(params)
        return parse_query_filter(params)
    except QueryError as exc:
        raise BadUsage(exc.message) from None


def check_patch(body: JSON) -> CapturePatch:
    """The admin API's own check of a PATCH body."""
    from proxy.admin.params import parse_body_patch
    from storage.query import QueryError

    try:
        return parse_body_patch(body)
    except QueryError as exc:
        raise BadUsage(exc.message) from None


class CaptureSource(Protocol):
    async def __aenter__(self) -> CaptureSource: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def list_captures(
        self, params: Params, after: str | None, limit: int, order: str
    ) -> JSON:
        """The list envelope: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``."""
        ...

    async def get_capture(self, capture_id: str) -> JSON:
        """The detail JSON; raises ``CaptureNotFound``."""
        ...

    async def update_capture(self, capture_id: str, patch: JSON) -> JSON:
        """Apply a PATCH body; the updated capture (summary); raises ``CaptureNotFound``."""
        ...

    async def update_where(self, params: Params, patch: JSON, everything: bool) -> JSON:
        """``{"object": "capture.bulk_update", "updated": n}``."""
        ...

    async def delete_capture(self, capture_id: str) -> JSON:
        """``{"object": "capture.deleted", "id", "deleted": true}``; raises ``CaptureNotFound``."""
        ...

    async def delete_where(self, params: Params, everything: bool) -> JSON:
        """``{"object": "capture.bulk_delete", "deleted": n}``."""
        ...

    async def stats(self, params: Params) -> JSON:
        """The stats object (``Stats.to_json``)."""
        ...


class LocalSource:
    """The database file (or URL) itself, through ``storage.connect.open_store``."""

    def __init__(self, database: str) -> None:
        from storage.connect import open_store
        from storage.errors import StoreError

        self.database = database
        is_url = "://" in database
        if not is_url and not os.path.isfile(database):
            raise CommandFailed(
                f"no database at {database} (give --database PATH, set STILLROOM_DATABASE, "
                "or use --url for a running server)"
            )
        try:
            self._store = open_store(database)
        except (StoreError, ValueError) as exc:
            raise CommandFailed(f"{database}: {exc}") from exc

    async def __aenter__(self) -> LocalSource:
        from storage.errors import StoreError

        try:
            pending = await self._store.pending_migrations()
        except StoreError as exc:
            await self._store.close()
            raise CommandFailed(f"{self.database}: {exc}") from exc
        if pending:
            await self._store.close()
            raise CommandFailed(
                f"{self.database} needs migrations ({', '.join(pending)}): run "
                "`stillroom db migrate` (or start `stillroom serve` once)"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._store.close()
        if exc is not None:
            self._translate(exc)

    def _translate(self, exc: BaseException) -> None:
        from storage.errors import StoreError
        from storage.query import QueryError

        if isinstance(exc, QueryError):
            raise BadUsage(exc.message) from exc
        if isinstance(exc, StoreError):
            raise CommandFailed(f"{self.database}: {exc}") from exc

    async def list_captures(
        self, params: Params, after: str | None, limit: int, order: str
    ) -> JSON:
        from proxy.admin.serialize import capture_json
        from storage.query import parse_order

        page = await self._store.list_captures(
            check_filter(params), after=after, limit=limit, order=parse_order(order)
        )
        data = [capture_json(stored) for stored in page.items]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": page.last_id,
            "has_more": page.has_more,
        }

    async def get_capture(self, capture_id: str) -> JSON:
        from proxy.admin.serialize import capture_json, conversation_json

        stored = await self._store.get_capture(capture_id)
        if stored is None:
            raise CaptureNotFound(capture_id)
        out = capture_json(stored, detail=True)
        if stored.record.endpoint == "responses":
            chain = await self._store.conversation(capture_id)
            out["conversation"] = conversation_json(chain) if chain is not None else None
        return out

    async def update_capture(self, capture_id: str, patch: JSON) -> JSON:
        from proxy.admin.serialize import capture_json

        stored = await self._store.update_capture(capture_id, check_patch(patch))
        if stored is None:
            raise CaptureNotFound(capture_id)
        return capture_json(stored)

    async def update_where(self, params: Params, patch: JSON, everything: bool) -> JSON:
        where = check_filter(params)
        _refuse_empty(where.is_empty(), everything)
        updated = await self._store.update_where(where, check_patch(patch))
        return {"object": "capture.bulk_update", "updated": updated}

    async def delete_capture(self, capture_id: str) -> JSON:
        if not await self._store.delete_capture(capture_id):
            raise CaptureNotFound(capture_id)
        return {"object": "capture.deleted", "id": capture_id, "deleted": True}

    async def delete_where(self, params: Params, everything: bool) -> JSON:
        where = check_filter(params)
        _refuse_empty(where.is_empty(), everything)
        deleted = await self._store.delete_where(where)
        return {"object": "capture.bulk_delete", "deleted": deleted}

    async def stats(self, params: Params) -> JSON:
        where = check_filter(params)
        stats = await self._store.stats(None if where.is_empty() else where)
        return {"object": "stats", **stats.to_json()}


def _refuse_empty(is_empty: bool, everything: bool) -> None:
    if is_empty and not everything:
        raise BadUsage("an empty filter matches every capture: give --where filters, or --all")


def check_server_url(raw: str) -> str:
    """``http(s)://host[:port]`` of a running ``stillroom serve``; a trailing ``/`` is dropped."""
    value = raw.strip().rstrip("/")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUsage(f"--url must be an http:// or https:// URL, got {raw!r:.80}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise BadUsage("--url must not carry credentials, a query or a fragment")
    return value


class RemoteSource:
    """A running ``stillroom serve``'s admin API, with the admin token as bearer."""

    def __init__(
        self, url: str, admin_token: str, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        import httpx

        self.url = url
        self._client = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {admin_token}", "Accept": "application/json"},
            timeout=httpx.Timeout(300.0, connect=10.0),  # a bulk delete of millions takes a while
            follow_redirects=False,
            transport=transport,
        )

    async def __aenter__(self) -> RemoteSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: httpx.QueryParams | None = None,
        body: JSON | None = None,
        capture_id: str | None = None,
        missing: CommandFailed | None = None,
    ) -> JSON:
        """The JSON object a route answers; ``missing`` (or ``CaptureNotFound(capture_id)``) is
        raised for a 404 that names the path's id or name."""
        with self.transport_errors():
            response = await self._client.request(method, path, params=params, json=body)
        if capture_id is not None:
            missing = CaptureNotFound(capture_id)
        return self.answer(response, path, missing)

    @contextlib.contextmanager
    def transport_errors(self) -> Iterator[None]:
        """httpx's timeouts and transport errors as one-line ``CommandFailed``."""
        import httpx

        try:
            yield
        except httpx.TimeoutException:
            raise CommandFailed(f"{self.url} did not answer in time") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise CommandFailed(f"cannot reach {self.url}: {reason}") from None

    def answer(
        self, response: httpx.Response, path: str, missing: CommandFailed | None = None
    ) -> JSON:
        """A read response's JSON object, or the failure it reports as one line."""
        try:
            answer = response.json()
        except ValueError:
            answer = None
        status = response.status_code
        if response.is_success and isinstance(answer, dict):
            return answer
        message, param = _error_fields(answer)
        if status == 401:
            raise CommandFailed(
                f"{self.url} refused the admin token (401): check --admin-token or "
                "STILLROOM_ADMIN_TOKEN"
            )
        if status == 404 and missing is not None and param in ("id", "name"):
            raise missing
        if status == 404 and message and param is not None:
            raise CommandFailed(message)  # the admin API is on: what it said is missing
        if status == 404:
            raise CommandFailed(
                f"{self.url}{path} answered 404: is the admin API on? (the server needs "
                "STILLROOM_ADMIN_TOKEN)"
            )
        if status in (400, 422) and message:
            raise BadUsage(message)
        if status == 409 and message:
            raise CommandFailed(message)
        detail = f": {message}" if message else ""
        if response.is_success:
            detail = ": the answer is not a JSON object"
        raise CommandFailed(f"{self.url} answered {status}{detail}")

    async def list_captures(
        self, params: Params, after: str | None, limit: int, order: str
    ) -> JSON:
        query = _query(params).merge({"limit": limit, "order": order})
        if after is not None:
            query = query.set("after", after)
        return await self._call("GET", "/admin/captures", params=query)

    async def get_capture(self, capture_id: str) -> JSON:
        return await self._call("GET", f"/admin/captures/{capture_id}", capture_id=capture_id)

    async def update_capture(self, capture_id: str, patch: JSON) -> JSON:
        return await self._call(
            "PATCH", f"/admin/captures/{capture_id}", body=patch, capture_id=capture_id
        )

    async def update_where(self, params: Params, patch: JSON, everything: bool) -> JSON:
        body = {"filter": filter_body(params), "patch": patch, "all": everything}
        return await self._call("POST", "/admin/captures/update", body=body)

    async def delete_capture(self, capture_id: str) -> JSON:
        return await self._call("DELETE", f"/admin/captures/{capture_id}", capture_id=capture_id)

    async def delete_where(self, params: Params, everything: bool) -> JSON:
        body = {"filter": filter_body(params), "all": everything}
        return await self._call("POST", "/admin/captures/delete", body=body)

    async def stats(self, params: Params) -> JSON:
        return await self._call("GET", "/admin/stats", params=_query(params))


def _query(params: Params) -> httpx.QueryParams:
    import httpx

    return httpx.QueryParams([(name, value) for name, values in params.items() for value in values])


def _error_fields(answer: object) -> tuple[str | None, str | None]:
    """The message (on one line) and param of an OpenAI-shaped error body."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return None, None
    message, param = error.get("message"), error.get("param")
    text = " ".join(message.split()) if isinstance(message, str) and message.strip() else None
    return text, param if isinstance(param, str) else None
