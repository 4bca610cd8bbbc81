"""Where ``stillroom eval …`` runs and reads evals: the database itself, or a running server.

``LocalEvals`` runs an eval in this process (``proxy.evals.runner``) against the database's
dataset and stores it there; ``RemoteEvals`` asks the server's ``/admin/evals`` to run it (the
server answers at once with the running eval; the command then follows it until it finishes).
Both answer the admin API's JSON.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from proxy._capture_source import (
    JSON,
    BadUsage,
    CaptureSource,
    CommandFailed,
    LocalSource,
    RemoteSource,
)
from proxy.evals.spec import Progress


class EvalNotFound(CommandFailed):
    def __init__(self, eval_id: str) -> None:
        super().__init__(f"no eval {eval_id}")


class EvalSource(CaptureSource, Protocol):
    async def run_eval(self, spec: JSON, progress: Progress | None) -> JSON: ...

    async def get_eval(self, eval_id: str) -> JSON: ...

    async def list_evals(self, limit: int) -> JSON: ...

    async def eval_items(self, eval_id: str, after: int, limit: int) -> JSON: ...


class LocalEvals(LocalSource):
    async def run_eval(self, spec: JSON, progress: Progress | None) -> JSON:
        from proxy.evals.runner import run_eval
        from proxy.evals.spec import EvalError, parse_eval_spec

        try:
            checked = parse_eval_spec(spec)
        except EvalError as exc:
            raise BadUsage(exc.message) from None
        try:
            return await run_eval(self._store, checked, progress=progress)
        except EvalError as exc:
            raise CommandFailed(exc.message) from None

    async def get_eval(self, eval_id: str) -> JSON:
        from proxy.evals.runner import KIND

        doc = await self._store.get_document(KIND, eval_id)
        if doc is None:
            raise EvalNotFound(eval_id)
        return doc.body

    async def list_evals(self, limit: int) -> JSON:
        from proxy.evals.runner import KIND

        docs, more = await self._store.list_documents(KIND, limit=limit)
        return {"object": "list", "data": [doc.body for doc in docs], "has_more": more}

    async def eval_items(self, eval_id: str, after: int, limit: int) -> JSON:
        from proxy.evals.runner import KIND

        await self.get_eval(eval_id)
        items, more = await self._store.list_items(KIND, eval_id, after=after, limit=limit)
        data = [{"id": item.seq, **item.body} for item in items]
        return {"object": "list", "data": data, "has_more": more}


class RemoteEvals(RemoteSource):
    async def run_eval(self, spec: JSON, progress: Progress | None) -> JSON:
        started = await self._call("POST", "/admin/evals", body=spec)
        eval_id = str(started["id"])
        while True:
            current = await self.get_eval(eval_id)
            if progress is not None and isinstance(current.get("done"), int):
                progress(current["done"], int(current.get("total") or 0))
            if current.get("status") != "running":
                if current.get("status") == "failed":
                    raise CommandFailed(f"eval {eval_id} failed: {current.get('error')}")
                return current
            await asyncio.sleep(0.5)

    async def get_eval(self, eval_id: str) -> JSON:
        return await self._call("GET", f"/admin/evals/{eval_id}", missing=EvalNotFound(eval_id))

    async def list_evals(self, limit: int) -> JSON:
        import httpx

        return await self._call("GET", "/admin/evals", params=httpx.QueryParams({"limit": limit}))

    async def eval_items(self, eval_id: str, after: int, limit: int) -> JSON:
        import httpx

        params = httpx.QueryParams({"after": after, "limit": limit})
        return await self._call(
            "GET", f"/admin/evals/{eval_id}/items", params=params, missing=EvalNotFound(eval_id)
        )
