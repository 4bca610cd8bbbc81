"""The admin bearer check: pure ASGI, in front of every admin route (T19).

``StillroomApp`` sends every request whose path is under ``/admin`` here *before* any routing,
so no spelling of a path (a trailing slash, ``%2F``, ``//``, HEAD, OPTIONS, an unknown route)
can reach a handler, a redirect or a 405 without the token. The token is compared in constant
time and never logged; a refusal is OpenAI-shaped with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac
import re

from proxy.errors import AdminAuthError
from proxy.settings import Secret
from proxy.types import ASGIApp, Receive, Scope, Send

ADMIN_PREFIX = "/admin"
_SLASHES = re.compile("/{2,}")


def is_admin_path(path: str) -> bool:
    """``/admin`` and everything under it, however many slashes separate the segments."""
    collapsed = _SLASHES.sub("/", path)
    return collapsed == ADMIN_PREFIX or collapsed.startswith(ADMIN_PREFIX + "/")


def bearer_matches(headers: list[tuple[bytes, bytes]], token: Secret) -> bool:
    """Exactly one ``Authorization: Bearer <token>`` header carrying the admin token."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return False
    scheme, _, credential = values[0].partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credential.strip(b" \t"), token.reveal().encode())


class AdminAuth:
    """Answer 401 unless the request carries the admin token; otherwise call ``app``."""

    def __init__(self, app: ASGIApp, token: Secret) -> None:
        self._app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or bearer_matches(scope["headers"], self._token):
            await self._app(scope, receive, send)
            return
        error = AdminAuthError("a valid admin token is required: Authorization: Bearer <token>")
        body = error.to_json()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
