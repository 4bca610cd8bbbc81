"""``stillroom routes list|show|create|set|delete|events|shadow``: route traffic to a student.

Like ``stillroom train``, each command works on the database file (``--database``, through
``proxy.routing.service.RouteService``; a running server picks the change up within
``STILLROOM_ROUTES_REFRESH``) or on a running server's admin API (``--url``, ``--admin-token``;
its route table reloads at once), prints a short text for people or the admin API's JSON with
``--json``, and fails with one ``Error:`` line (exit 2 for bad input or a promotion without
evidence, 1 otherwise). Route names are positional.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from proxy._capture_options import SourceSpec, json_option, source_options
from proxy._capture_source import JSON, BadUsage
from proxy._route_options import field_options
from proxy._route_source import RouteSource
from proxy._route_text import (
    event_line,
    mode_text,
    pair_line,
    route_line,
    route_text,
    summary_text,
)

Command = Callable[..., Any]


def _run(source: SourceSpec, action: Callable[[RouteSource], Any]) -> Any:
    from proxy._route_source import LocalRoutes, RemoteRoutes

    local: Callable[[str], RouteSource] = LocalRoutes
    remote: Callable[[str, str], RouteSource] = RemoteRoutes
    return source.run_on(local, remote, action)


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def _route_name(value: str) -> str:
    from proxy.admin.routes import is_route_name

    if not is_route_name(value):
        raise BadUsage(f"{value!r:.80} is not a route name (1-64 letters, digits, '.', '_', '-')")
    return value


# -- the commands ----------------------------------------------------------------------------


@click.group()
def routes() -> None:
    """Route traffic to a student: list, show, create, set, delete, events, shadow.

    A route sends requests for a model (and tags) to a student in one of four modes: off,
    shadow (the teacher answers; the student is asked too and scored), canary (a sticky share
    gets the student) and full. Moving up to canary or full needs a passing eval (--eval) and
    enough good shadow pairs, or --force.
    """


@routes.command("list")
@json_option
@source_options
def list_routes(as_json: bool, source: SourceSpec) -> None:
    """List the routes, by name."""

    async def action(routes: RouteSource) -> JSON:
        return await routes.list_routes()

    page = _run(source, action)
    if as_json:
        _echo_json(page)
    elif not page["data"]:
        click.echo("no routes")
    else:
        for route in page["data"]:
            click.echo(route_line(route))


@routes.command()
@click.argument("name")
@json_option
@source_options
def show(name: str, as_json: bool, source: SourceSpec) -> None:
    """Show route NAME: mode, match, student, scores.

    The scores are the shadow pairs' (each grader's mean and 95% interval); --json prints the
    route as the admin API does.
    """
    checked = _route_name(name)

    async def action(routes: RouteSource) -> tuple[JSON, JSON]:
        route = await routes.get_route(checked)
        shadow = await routes.route_shadow(checked, 0, 1)
        return route, shadow["summary"]

    route, summary = _run(source, action)
    click.echo(json.dumps(route, ensure_ascii=False) if as_json else route_text(route, summary))


@routes.command()
@click.option("--name", metavar="NAME", help="The route's name (1-64 letters, digits, . _ -).")
@click.option(
    "--mode", type=click.Choice(["off", "shadow"]),
    help="Where it starts [default: off]; promote it with `routes set` once it has evidence.",
)  # fmt: skip
@field_options
@json_option
@source_options
def create(
    name: str | None,
    mode: str | None,
    fields: JSON,
    student: JSON,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Create a route, off or in shadow.

    Requests for --model (carrying every --tag) go to --student-model at --student-url as
    --mode says; or give --file route.json (the admin API's body), which the options override.
    """
    body = dict(fields)
    if name is not None:
        body["name"] = name
    if mode is not None:
        body["mode"] = mode
    if student:
        current = body.get("student")
        body["student"] = (current if isinstance(current, dict) else {}) | student
    for field, flag in (("name", "--name"), ("model", "--model")):
        if field not in body:
            raise BadUsage(f"{flag} is required (or --file with a {field})")
    found = body.get("student")
    for field, flag in (("base_url", "--student-url"), ("model", "--student-model")):
        if not isinstance(found, dict) or field not in found:
            raise BadUsage(f"{flag} is required (or --file with student.{field})")

    async def action(routes: RouteSource) -> JSON:
        return await routes.create_route(body)

    route = _run(source, action)
    click.echo(json.dumps(route, ensure_ascii=False) if as_json else route_text(route))


@routes.command("set")
@click.argument("name")
@click.option(
    "--mode", type=click.Choice(["off", "shadow", "canary", "full"]),
    help="The new mode; canary and full need --eval (or --force) when moving up.",
)  # fmt: skip
@click.option("--percent", type=float, help="Canary: the share of stable keys (0-100).")
@click.option(
    "--eval", "eval_id", metavar="EVAL_ID",
    help="A passing eval of this route's student (`stillroom eval run`): the evidence a "
    "promotion needs.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Promote without evidence (recorded in the events).")
@click.option(
    "--any-tools", is_flag=True, help="The student takes requests with any tools (undo --tools)."
)
@click.option(
    "--expect-version", type=int, metavar="N",
    help="Refuse (409 version_conflict) unless the route is still at version N.",
)  # fmt: skip
@field_options
@json_option
@source_options
def set_route(
    name: str,
    mode: str | None,
    percent: float | None,
    eval_id: str | None,
    force: bool,
    any_tools: bool,
    expect_version: int | None,
    fields: JSON,
    student: JSON,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Change route NAME: mode, share, student, any field.

    The admin API's PATCH /admin/routes/NAME. Moving up to canary or full needs --eval
    EVAL_ID (a passing eval of this student) and enough good shadow pairs, or --force.
    """
    checked = _route_name(name)
    patch = dict(fields)
    if mode is not None:
        patch["mode"] = mode
    if percent is not None:
        patch["percent"] = percent
    if any_tools:
        if "tools" in patch:
            raise BadUsage("give --tools or --any-tools, not both")
        patch["tools"] = None
    if not patch and not student:
        raise BadUsage("nothing to change: give --mode, --percent, a field option or --file")
    if eval_id is not None:
        patch["eval_id"] = eval_id
    if force:
        patch["force"] = True
    if expect_version is not None:
        patch["version"] = expect_version

    async def action(routes: RouteSource) -> JSON:
        if student:  # the student is replaced whole: start from the one stored
            current = await routes.get_route(checked)
            patch["student"] = current["student"] | student
            patch.setdefault("version", current["version"])
        return await routes.update_route(checked, patch)

    route = _run(source, action)
    if as_json:
        _echo_json(route)
    else:
        click.echo(f"{route['name']}: {mode_text(route)} (version {route['version']})")


@routes.command()
@click.argument("name")
@json_option
@source_options
def delete(name: str, as_json: bool, source: SourceSpec) -> None:
    """Delete route NAME, its events and shadow pairs.

    Its requests go to the teacher again.
    """
    checked = _route_name(name)

    async def action(routes: RouteSource) -> JSON:
        return await routes.delete_route(checked)

    answer = _run(source, action)
    click.echo(json.dumps(answer) if as_json else f"deleted route {checked}")


def _page_options(command: Command) -> Command:
    command = click.option(
        "--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
        help="Items per page.",
    )(command)  # fmt: skip
    return click.option(
        "--after", type=click.IntRange(min=0), default=0, help="The last id already read."
    )(command)


@routes.command()
@click.argument("name")
@_page_options
@json_option
@source_options
def events(name: str, after: int, limit: int, as_json: bool, source: SourceSpec) -> None:
    """Route NAME's events, oldest first.

    Creation, changes, promotions (with their evidence) and rollbacks.
    """
    checked = _route_name(name)

    async def action(routes: RouteSource) -> JSON:
        return await routes.route_events(checked, after, limit)

    page = _run(source, action)
    if as_json:
        _echo_json(page)
        return
    for event in page["data"]:
        click.echo(event_line(event))


@routes.command()
@click.argument("name")
@_page_options
@json_option
@source_options
def shadow(name: str, after: int, limit: int, as_json: bool, source: SourceSpec) -> None:
    """Route NAME's shadow pairs and their scores.

    Each grader's mean with its 95% interval over the route's pairs, then the pairs, oldest
    first.
    """
    checked = _route_name(name)

    async def action(routes: RouteSource) -> JSON:
        return await routes.route_shadow(checked, after, limit)

    page = _run(source, action)
    if as_json:
        _echo_json(page)
        return
    click.echo(summary_text(page["summary"]))
    for pair in page["data"]:
        click.echo(pair_line(pair))
