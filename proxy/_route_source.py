"""Where ``stillroom routes …`` gets its data: the database file, or a running server.

``LocalRoutes`` drives ``proxy.routing.service.RouteService`` on the database itself (no route
table: a running server sees the change within ``STILLROOM_ROUTES_REFRESH``); ``RemoteRoutes``
calls the admin API's ``/admin/routes`` (the server's table reloads at once). Both check bodies
with the admin API's own checks and answer in its JSON (``proxy.admin.routes``), so a command
prints the same either way. A refusal is one line: bad input and a promotion without evidence
exit 2, an unknown route, a name taken or a version conflict exit 1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from proxy._capture_source import (
    JSON,
    BadUsage,
    CaptureSource,
    CommandFailed,
    LocalSource,
    RemoteSource,
)

if TYPE_CHECKING:
    from proxy.routing.service import RouteService

T = TypeVar("T")


class RouteMissing(CommandFailed):
    def __init__(self, name: str) -> None:
        super().__init__(f"no route named {name}")


class RouteSource(CaptureSource, Protocol):
    async def list_routes(self) -> JSON:
        """``{"object": "list", "data": [route…]}``, by name."""
        ...

    async def create_route(self, body: JSON) -> JSON:
        """The new route (``POST /admin/routes``' body)."""
        ...

    async def get_route(self, name: str) -> JSON:
        """The route with its version; raises ``RouteMissing``."""
        ...

    async def update_route(self, name: str, patch: JSON) -> JSON:
        """The changed route (``PATCH /admin/routes/{name}``' body)."""
        ...

    async def delete_route(self, name: str) -> JSON:
        """``{"object": "route.deleted", "name", "deleted": true}``; or ``RouteMissing``."""
        ...

    async def route_events(self, name: str, after: int, limit: int) -> JSON:
        """A page of the route's events, oldest first."""
        ...

    async def route_shadow(self, name: str, after: int, limit: int) -> JSON:
        """A page of the route's shadow pairs, oldest first, with their ``summary``."""
        ...


class LocalRoutes(LocalSource):
    """Routes in the database file itself."""

    def __init__(self, database: str) -> None:
        from proxy.routing.service import RouteService

        super().__init__(database)
        self._service: RouteService = RouteService(self._store)

    async def list_routes(self) -> JSON:
        return {"object": "list", "data": await self._service.list_routes()}

    async def create_route(self, body: JSON) -> JSON:
        from proxy.admin.routes import check_route_body

        checked = _checked(check_route_body, body)
        return await _refusals(self._service.create(checked), None)

    async def get_route(self, name: str) -> JSON:
        return await _refusals(self._service.get(name), name)

    async def update_route(self, name: str, patch: JSON) -> JSON:
        from proxy.admin.routes import check_route_patch

        checked = _checked(check_route_patch, patch)
        return await _refusals(self._service.update(name, checked), name)

    async def delete_route(self, name: str) -> JSON:
        if not await self._service.delete(name):
            raise RouteMissing(name)
        return {"object": "route.deleted", "name": name, "deleted": True}

    async def route_events(self, name: str, after: int, limit: int) -> JSON:
        from proxy.admin.routes import events_page

        return await _refusals(events_page(self._service, name, after, limit), name)

    async def route_shadow(self, name: str, after: int, limit: int) -> JSON:
        from proxy.admin.routes import shadow_page

        return await _refusals(shadow_page(self._service, name, after, limit), name)


def _checked(check: Callable[[object], JSON], body: JSON) -> JSON:
    from proxy.errors import InvalidRequest

    try:
        checked = check(body)
    except InvalidRequest as exc:
        raise BadUsage(exc.message) from None
    return checked


async def _refusals(work: Awaitable[T], name: str | None) -> T:
    """``RouteRefused`` as one line: 404 ``RouteMissing``, 400 ``BadUsage``, else exit 1."""
    from proxy.routing.service import RouteRefused

    try:
        return await work
    except RouteRefused as exc:
        if exc.status == 404 and name is not None:
            raise RouteMissing(name) from None
        if exc.status == 400:
            raise BadUsage(exc.message) from None
        raise CommandFailed(exc.message) from None


class RemoteRoutes(RemoteSource):
    """Routes through a running server's admin API."""

    async def list_routes(self) -> JSON:
        return await self._call("GET", "/admin/routes")

    async def create_route(self, body: JSON) -> JSON:
        return await self._call("POST", "/admin/routes", body=body)

    async def get_route(self, name: str) -> JSON:
        return await self._call("GET", f"/admin/routes/{name}", missing=RouteMissing(name))

    async def update_route(self, name: str, patch: JSON) -> JSON:
        path = f"/admin/routes/{name}"
        return await self._call("PATCH", path, body=patch, missing=RouteMissing(name))

    async def delete_route(self, name: str) -> JSON:
        return await self._call("DELETE", f"/admin/routes/{name}", missing=RouteMissing(name))

    async def route_events(self, name: str, after: int, limit: int) -> JSON:
        return await self._page(f"/admin/routes/{name}/events", name, after, limit)

    async def route_shadow(self, name: str, after: int, limit: int) -> JSON:
        return await self._page(f"/admin/routes/{name}/shadow", name, after, limit)

    async def _page(self, path: str, name: str, after: int, limit: int) -> JSON:
        import httpx

        params = httpx.QueryParams({"after": after, "limit": limit})
        return await self._call("GET", path, params=params, missing=RouteMissing(name))
