"""What the routes do to one exchange on the relay (``proxy.forward``), in three steps:

1. ``decide``: before anything goes upstream, match a route and put its decision on the scope,
   where the capture tee finds it (``stillroom.route`` and ``stillroom.route_decision`` tags;
   ``stillroom.served_by`` only when a student answers, so a teacher-served capture carries one
   tag row less);
2. ``answer``: when the decision is the student, let it answer; in ``full`` mode the teacher is
   then asked on the side (``teacher_shadow``), capped at the route's ``max_concurrency`` and
   never waited for. When the student fails before its first byte the decision on the scope
   becomes the fallback and the relay goes on to the teacher;
3. ``after``: once the teacher answered a sampled request, queue it for the student (shadow).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

from proxy.capture import SCOPE_REQUEST, SCOPE_SERVED_BY
from proxy.errors import ProxyError
from proxy.routing.decide import Decision
from proxy.routing.router import Fallback, Router
from proxy.routing.teacher_shadow import ask_teacher
from proxy.tags import ROUTE_DECISION_TAG, ROUTE_TAG, SERVED_BY_TAG
from proxy.tasks import spawn
from proxy.types import Scope, Send
from storage.models import CaptureRecord

UpstreamRequest = tuple[
    str, bytes, list[tuple[bytes, bytes]], bytes
]  # method, target, headers, body
TeeFor = Callable[[Scope, bytes, dict[bytes, bytes]], Any]  # the relay's tee factory, or None


class Routed(NamedTuple):
    decision: Decision
    request: dict[str, Any]  # the client's body, parsed


def caller(headers: list[tuple[bytes, bytes]]) -> str | None:
    """A short in-memory hash of the caller's credential (a canary's sticky key; never kept)."""
    for name, value in headers:
        if name == b"authorization" or name == b"api-key":
            return hashlib.blake2b(value, digest_size=8).hexdigest()
    return None


def route_tags(route: str, served_by: str, reason: str) -> dict[str, str]:
    """The route decision on the capture; ``served_by`` only when a student answered."""
    tags = {ROUTE_TAG: route, ROUTE_DECISION_TAG: reason[:200]}
    if served_by != "teacher":
        tags[SERVED_BY_TAG] = served_by
    return tags


class ExchangeRouting:
    """The relay's side of the routes: one per ``Forwarder``."""

    def __init__(self, router: Router, pool: Any, tee_for: TeeFor, teacher_timeout: float) -> None:
        self.router = router
        self._pool = pool
        self._tee_for = tee_for
        self._teacher_timeout = teacher_timeout

    def decide(self, scope: Scope, body: bytes, ours: dict[bytes, bytes]) -> Routed | None:
        """The route decision for this exchange (None: no route applies), marked on ``scope``."""
        router = self.router
        if not router.table.routes:
            return None
        headers = scope["headers"]
        found = router.decide(scope["method"], scope["path"], body, ours, lambda: caller(headers))
        if found is None:
            return None
        decision, request = found
        served = decision.route.served_by if decision.target == "student" else "teacher"
        scope[SCOPE_SERVED_BY] = route_tags(decision.route.name, served, decision.reason)
        scope[SCOPE_REQUEST] = request  # the capture reads it instead of parsing the body again
        return Routed(decision, request)

    async def answer(
        self,
        routed: Routed,
        scope: Scope,
        body: bytes,
        ours: dict[bytes, bytes],
        upstream: UpstreamRequest,
        send: Send,
        tee: Any,
    ) -> int | None:
        """The student answers (its status), or None: the teacher must, as a new capture whose
        decision (the fallback) is on ``scope`` now."""
        decision = routed.decision
        result = await self.router.answer(decision, routed.request, send, tee)
        if isinstance(result, Fallback):
            reason = f"fallback: {result.reason}"
            scope[SCOPE_SERVED_BY] = route_tags(decision.route.name, "teacher", reason)
            return None
        if decision.shadow:  # full mode: the teacher answers too, on the side
            self._ask_teacher(routed, scope, body, ours, upstream, getattr(tee, "record", None))
        return result

    def after(self, routed: Routed, status: int, tee: Any) -> None:
        """The teacher answered ``status``: shadow the request if it was sampled."""
        if routed.decision.shadow and status < 400:
            self.router.shadow(routed.decision, routed.request, getattr(tee, "record", None))

    def _ask_teacher(
        self,
        routed: Routed,
        scope: Scope,
        body: bytes,
        ours: dict[bytes, bytes],
        upstream: UpstreamRequest,
        student: CaptureRecord | None,
    ) -> None:
        """Captured as the teacher's answer and scored against ``student``'s."""
        router, route = self.router, routed.decision.route
        if student is None or not router.take_teacher_slot(route):
            return
        scope = dict(scope)
        scope[SCOPE_SERVED_BY] = route_tags(route.name, "teacher", "teacher_shadow")
        try:
            tee = self._tee_for(scope, body, ours)
        except ProxyError:
            router.give_teacher_slot(route)
            return
        spawn(
            ask_teacher(
                self._pool,
                upstream,
                tee,
                timeout=self._teacher_timeout,
                done=functools.partial(self._teacher_answered, routed, student),
            ),
            name="stillroom-teacher-shadow",
        )

    def _teacher_answered(
        self, routed: Routed, student: CaptureRecord, teacher: CaptureRecord | None
    ) -> None:
        self.router.give_teacher_slot(routed.decision.route)
        if teacher is not None:
            self.router.keep_pair(routed.decision, routed.request, teacher=teacher, student=student)
