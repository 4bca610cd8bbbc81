"""The options of ``stillroom captures …`` and ``stillroom stats``, turned into checked requests.

Each decorator adds a set of click options and hands the command one value built from them:
``source_options`` a ``SourceSpec`` (local file or running server), ``filter_options`` the
filter as ``name -> [values]`` (the admin API's query parameters), ``patch_options`` the admin
API's PATCH body. Both are checked by the admin API's own parsers (``proxy.admin.params``, which
end in ``storage.query.parse_filter`` and ``parse_patch``), so the CLI accepts exactly what the
API accepts, whichever side answers. Bad input raises ``BadUsage``: one ``Error:`` line, exit 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from proxy._capture_source import JSON, BadUsage, CaptureSource, Params
from proxy.settings import settings_fields

T = TypeVar("T")
S = TypeVar("S", bound=AbstractAsyncContextManager[Any])
Command = Callable[..., Any]

_DEFAULT_DATABASE = next(str(f.default) for f in settings_fields() if f.name == "database")
_FILTER_OPTIONS = ("model", "endpoint", "outcome", "status", "since", "until", "feedback", "search")


def _add(command: Command, options: list[Callable[[Command], Command]]) -> Command:
    for option in reversed(options):
        command = option(command)
    return command


# -- where the captures are ------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    database: str
    url: str | None
    admin_token: str | None = field(repr=False)  # never shown, not even in a repr
    database_given: bool  # --database was on the command line (not the env or default)

    def run(self, action: Callable[[CaptureSource], Awaitable[T]]) -> T:
        """Open the local store or the server, run ``action`` on it, close it."""
        from proxy._capture_source import LocalSource, RemoteSource

        local: Callable[[str], CaptureSource] = LocalSource
        remote: Callable[[str, str], CaptureSource] = RemoteSource
        return self.run_on(local, remote, action)

    def run_on(
        self,
        local: Callable[[str], S],
        remote: Callable[[str, str], S],
        action: Callable[[S], Awaitable[T]],
    ) -> T:
        """``run`` with other sources: ``local(database)`` or ``remote(url, admin_token)``."""
        import asyncio

        server = self.server()

        async def go() -> T:
            source = remote(*server) if server is not None else local(self.database)
            async with source:
                return await action(source)

        return asyncio.run(go())

    def server(self) -> tuple[str, str] | None:
        """The checked ``--url`` and its admin token, or None to work on the database."""
        from proxy._capture_source import check_server_url

        if self.url is None:
            return None
        if self.database_given:
            raise BadUsage("give --database or --url, not both")
        url = check_server_url(self.url)
        token = (self.admin_token or "").strip()
        if not token:
            raise BadUsage("--url needs the server's admin token: set STILLROOM_ADMIN_TOKEN")
        return url, token


def source_options(command: Command) -> Command:
    """``--database``, ``--url``, ``--admin-token`` → ``source: SourceSpec``."""

    @functools.wraps(command)
    def wrapper(
        *args: Any, database: str, url: str | None, admin_token: str | None, **kw: Any
    ) -> Any:
        from click.core import ParameterSource

        given = click.get_current_context().get_parameter_source("database")
        spec = SourceSpec(database, url, admin_token, given is ParameterSource.COMMANDLINE)
        return command(*args, source=spec, **kw)

    return _add(
        wrapper,
        [
            click.option(
                "--database", metavar="PATH", envvar="STILLROOM_DATABASE",
                default=_DEFAULT_DATABASE,
                help="The capture database to work on "
                f"[env: STILLROOM_DATABASE; default: {_DEFAULT_DATABASE}].",
            ),
            click.option(
                "--url", metavar="URL",
                help="Work on a running `stillroom serve` through its admin API instead, "
                "e.g. http://127.0.0.1:8080.",
            ),
            click.option(
                "--admin-token", metavar="TOKEN", envvar="STILLROOM_ADMIN_TOKEN",
                help="The server's admin token, for --url; better given in the environment "
                "[env: STILLROOM_ADMIN_TOKEN].",
            ),
        ],
    )  # fmt: skip


def json_option(command: Command) -> Command:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the admin API's JSON instead of text."
    )(command)


# -- which captures --------------------------------------------------------------------------


def where_option(command: Command) -> Command:
    return click.option(
        "--where", metavar="NAME=VALUE", multiple=True,
        help="A filter in the admin API's terms, repeatable: tag=KEY:VALUE, model=, endpoint=, "
        "outcome=, status=, since=, until=, has_tool_calls=, feedback=, excluded=, search=.",
    )(command)  # fmt: skip


def where_params(where: tuple[str, ...]) -> Params:
    params: Params = {}
    for entry in where:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise BadUsage(f"--where takes NAME=VALUE, got {entry!r:.80}")
        params.setdefault(name.strip().replace("-", "_"), []).append(value)
    return params


def tag_filter(entry: str) -> str:
    """A ``--tag`` as the filter's ``key:value``; ``key=value`` (as in ``X-Stillroom-Tags``)
    is read the same: the key ends at the first ``=`` or ``:``."""
    equals, colon = entry.find("="), entry.find(":")
    if equals != -1 and (colon == -1 or equals < colon):
        return f"{entry[:equals]}:{entry[equals + 1 :]}"
    return entry


def validated(params: Params) -> Params:
    """``params``, once the admin API's own check (``proxy.admin.params``) accepts them."""
    from proxy._capture_source import check_filter

    check_filter(params)
    return params


def filter_options(command: Command) -> Command:
    """The filter as options (``--tag``, ``--model``, …) plus ``--where`` → ``params: Params``."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        where: tuple[str, ...],
        tags: tuple[str, ...],
        has_tool_calls: bool | None,
        excluded: bool | None,
        **kw: Any,
    ) -> Any:
        params = where_params(where)
        if tags:
            params.setdefault("tag", []).extend(tag_filter(entry) for entry in tags)
        for name, flag in (("has_tool_calls", has_tool_calls), ("excluded", excluded)):
            if flag is not None:
                params.setdefault(name, []).append("true" if flag else "false")
        for name in _FILTER_OPTIONS:
            value = kw.pop(name)
            if value is not None:
                params.setdefault(name, []).append(value)
        return command(*args, params=validated(params), **kw)

    return _add(
        wrapper,
        [
            click.option(
                "--tag", "tags", metavar="KEY:VALUE", multiple=True,
                help="Has this tag (KEY=VALUE works too); repeatable, every one must match.",
            ),
            click.option("--model", metavar="NAME", help="The returned model, else the requested."),
            click.option(
                "--endpoint", metavar="NAME",
                help="chat/completions, responses, completions or embeddings.",
            ),
            click.option(
                "--outcome", metavar="NAME",
                help="completed, upstream_error, upstream_timeout, client_disconnected, "
                "interrupted.",
            ),
            click.option("--status", metavar="CODE", help="The upstream HTTP status."),
            click.option(
                "--since", metavar="TIME",
                help="Created at or after: unix seconds or ISO 8601 (no zone = UTC).",
            ),
            click.option("--until", metavar="TIME", help="Created before (same forms as --since)."),
            click.option(
                "--has-tool-calls/--no-tool-calls", "has_tool_calls", default=None,
                help="Only answers with (or without) tool calls.",
            ),
            click.option(
                "--feedback", metavar="KIND",
                help="positive, negative, neutral, any (has feedback) or none (has none).",
            ),
            click.option(
                "--excluded/--included", "excluded", default=None,
                help="Only captures marked excluded from training (or only those not).",
            ),
            click.option(
                "--search", metavar="QUERY",
                help="Full-text search over prompt and answer text (SQLite FTS5 syntax).",
            ),
            where_option,
        ],
    )  # fmt: skip


def capture_ids(ids: tuple[str, ...], param: str = "ID") -> list[str]:
    from storage.query import QueryError, check_capture_id

    try:
        return [check_capture_id(value, param) for value in dict.fromkeys(ids)]
    except QueryError as exc:
        raise BadUsage(exc.message) from None


def targets(
    ids: tuple[str, ...], where: tuple[str, ...], everything: bool
) -> tuple[list[str], Params | None]:
    """Either capture ids or a filter (``--where``, ``--all``): never both, never neither."""
    if ids and (where or everything):
        raise BadUsage("give capture ids or --where/--all, not both")
    if ids:
        return capture_ids(ids), None
    if not where and not everything:
        raise BadUsage("give capture ids, or --where NAME=VALUE filters (--all for every capture)")
    return [], validated(where_params(where))


# -- what to change --------------------------------------------------------------------------


def patch_options(command: Command) -> Command:
    """``--add``, ``--remove``, ``--feedback``, … → ``patch``: the admin API's PATCH body."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        add: tuple[str, ...],
        remove: tuple[str, ...],
        feedback: str | None,
        note: str | None,
        clear_feedback: bool,
        exclude: bool | None,
        corrected: str | None,
        clear_corrected: bool,
        **kw: Any,
    ) -> Any:
        body: JSON = {}
        if add:
            body["add_tags"] = dict(_key_value(entry) for entry in add)
        if remove:
            body["remove_tags"] = [key.strip() for key in remove]
        body.update(_feedback(feedback, note, clear_feedback))
        if exclude is not None:
            body["excluded"] = exclude
        if corrected is not None and clear_corrected:
            raise BadUsage("give --corrected-response or --clear-corrected, not both")
        if corrected is not None:
            body["corrected_response"] = _read_json_object(corrected)
        elif clear_corrected:
            body["corrected_response"] = None
        return command(*args, patch=_checked_patch(body), **kw)

    return _add(
        wrapper,
        [
            click.option(
                "--add", metavar="KEY=VALUE", multiple=True,
                help="Add or replace a tag; repeatable.",
            ),
            click.option(
                "--remove", metavar="KEY", multiple=True, help="Remove a tag; repeatable."
            ),
            click.option("--feedback", metavar="SCORE", help="A score from -1 (bad) to 1 (good)."),
            click.option("--note", metavar="TEXT", help="A note stored with --feedback."),
            click.option("--clear-feedback", is_flag=True, help="Remove the score and note."),
            click.option(
                "--exclude/--include", "exclude", default=None,
                help="Keep out of training datasets (or bring back).",
            ),
            click.option(
                "--corrected-response", "corrected", metavar="FILE",
                help="A corrected response object (JSON file, - for stdin) that export prefers "
                "over the original.",
            ),
            click.option("--clear-corrected", is_flag=True, help="Drop the corrected response."),
        ],
    )  # fmt: skip


def _key_value(entry: str) -> tuple[str, str]:
    key, sep, value = entry.partition("=")
    if not sep:
        raise BadUsage(f"--add takes KEY=VALUE, got {entry!r:.80}")
    return key.strip(), value.strip()


def _feedback(score: str | None, note: str | None, clear: bool) -> JSON:
    if score is not None and clear:
        raise BadUsage("give --feedback or --clear-feedback, not both")
    if note is not None and score is None:
        raise BadUsage("--note goes with --feedback SCORE")
    if clear:
        return {"feedback": None}
    if score is None:
        return {}
    try:
        value = float(score)
    except ValueError:
        raise BadUsage(f"--feedback must be a number from -1 to 1, got {score!r:.80}") from None
    return {"feedback": {"score": value, "note": note}}


def _checked_patch(body: JSON) -> JSON:
    from proxy._capture_source import check_patch

    if not body:
        raise BadUsage(
            "nothing to change: give --add, --remove, --feedback, --clear-feedback, "
            "--exclude/--include, --corrected-response or --clear-corrected"
        )
    check_patch(body)
    return body


def read_json_file(path: str, flag: str) -> object:
    """The JSON in ``path`` (``-``: standard input); ``BadUsage`` naming ``flag`` when it cannot
    be read or is not JSON."""
    import json

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        return json.loads(text)
    except OSError as exc:
        raise BadUsage(f"{flag}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BadUsage(f"{flag}: {path} is not JSON: {exc}") from None


def _read_json_object(path: str) -> JSON:
    value = read_json_file(path, "--corrected-response")
    if not isinstance(value, dict):
        raise BadUsage("--corrected-response must hold a JSON object (a response)")
    return value
