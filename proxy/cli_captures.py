"""``stillroom captures list|show|tag|delete`` and ``stillroom stats``.

Each command works on the local database file (``--database``, default ``STILLROOM_DATABASE``
then ``./stillroom.db``) or on a running server's admin API (``--url`` and ``--admin-token``,
default ``STILLROOM_ADMIN_TOKEN``). ``proxy._capture_source`` hides which: both answer in the
admin API's JSON, so ``--json`` prints exactly what the API returns and the text is the same
either way. Filters are the admin API's (``proxy._capture_options``). Bad input exits 2 with one
``Error:`` line; anything else that fails exits 1 the same way; never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import click

from proxy._capture_options import (
    SourceSpec,
    capture_ids,
    filter_options,
    json_option,
    patch_options,
    source_options,
    targets,
    where_option,
)
from proxy._capture_source import (
    JSON,
    BadUsage,
    CaptureNotFound,
    CaptureSource,
    CommandFailed,
    Params,
)


def _echo_json(value: object) -> None:
    import json

    click.echo(json.dumps(value, ensure_ascii=False))


def _is_interactive() -> bool:
    return sys.stdin.isatty()


@click.group()
def captures() -> None:
    """Browse and curate captured exchanges: list, show, tag, delete."""


@captures.command("list")
@filter_options
@click.option("--after", metavar="ID", help="Start after this capture id (a page's last).")
@click.option("--limit", metavar="N", help="Captures per page, 1-1000 [default: 50].")
@click.option("--order", metavar="desc|asc", help="Newest first (desc, the default) or oldest.")
@json_option
@source_options
def list_captures(
    params: Params,
    after: str | None,
    limit: str | None,
    order: str | None,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """List captures, newest first, a page at a time (the next page: --after LAST_ID).

    After the outcome, + - ~ mark positive, negative and neutral feedback, x an exclusion from
    training.
    """
    import shutil

    from storage.query import QueryError, parse_limit, parse_order

    try:
        page_size, direction = parse_limit(limit), parse_order(order)
    except QueryError as exc:
        raise BadUsage(exc.message) from None
    start = capture_ids((after,), "--after")[0] if after is not None else None

    async def action(store: CaptureSource) -> tuple[JSON, dict[str, str]]:
        page = await store.list_captures(params, start, page_size, direction)
        return page, {} if as_json else await _previews(store, page["data"])

    page, previews = source.run(action)
    if as_json:
        _echo_json(page)
        return
    if not page["data"]:
        click.echo("no captures")
        return
    from proxy._capture_text import captures_table

    # On a terminal the preview fills the line; piped, it gets PREVIEW_WIDTH characters.
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    click.echo(captures_table(page["data"], previews, width))
    if page.get("has_more"):
        click.echo(f"\nmore: --after {page['last_id']}")


async def _previews(store: CaptureSource, items: list[JSON]) -> dict[str, str]:
    """Each row's preview: the list's own ``preview`` field, else read from the capture."""
    from proxy._capture_text import preview_of

    out: dict[str, str] = {}
    for item in items:
        if isinstance(item.get("preview"), str):
            out[item["id"]] = item["preview"]
            continue
        try:
            out[item["id"]] = preview_of(await store.get_capture(item["id"]))
        except CaptureNotFound:  # deleted since the page was read
            out[item["id"]] = ""
    return out


@captures.command()
@click.argument("capture_id", metavar="ID")
@json_option
@source_options
def show(capture_id: str, as_json: bool, source: SourceSpec) -> None:
    """Show one capture: fields, curation, conversation chain, prompt and answer."""
    (checked,) = capture_ids((capture_id,))

    async def action(store: CaptureSource) -> JSON:
        return await store.get_capture(checked)

    detail = source.run(action)
    if as_json:
        _echo_json(detail)
    else:
        from proxy._capture_text import capture_text

        click.echo(capture_text(detail))


@captures.command()
@click.argument("ids", metavar="[ID]...", nargs=-1)
@patch_options
@where_option
@click.option("--all", "everything", is_flag=True, help="With no --where: edit every capture.")
@json_option
@source_options
def tag(
    ids: tuple[str, ...],
    patch: JSON,
    where: tuple[str, ...],
    everything: bool,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Curate captures: tags, feedback, exclusion from training, a corrected answer.

    Edits the captures named by ID, or every capture matching the --where filters (bulk).
    With --json: each updated capture, one JSON object a line, or the bulk route's result.
    """
    chosen, params = targets(ids, where, everything)

    async def action(store: CaptureSource) -> tuple[list[JSON], list[str]]:
        if params is not None:
            return [await store.update_where(params, patch, everything)], []
        return await _each(chosen, lambda capture_id: store.update_capture(capture_id, patch))

    results, missing = source.run(action)
    if params is not None:
        if as_json:
            _echo_json(results[0])
        else:
            click.echo(f"updated {results[0].get('updated')} captures")
        return
    from proxy._capture_text import curation_line

    for result in results:
        if as_json:
            _echo_json(result)
        else:
            click.echo(curation_line(result))
    _fail_missing(missing)


async def _each(
    ids: list[str], call: Callable[[str], Awaitable[JSON]]
) -> tuple[list[JSON], list[str]]:
    """Apply ``call`` to every id; the results, and the ids that were not found."""
    results, missing = [], []
    for capture_id in ids:
        try:
            results.append(await call(capture_id))
        except CaptureNotFound:
            missing.append(capture_id)
    return results, missing


def _fail_missing(missing: list[str]) -> None:
    if missing:
        for capture_id in missing[:-1]:
            click.echo(f"Error: no capture {capture_id}", err=True)
        raise CommandFailed(f"no capture {missing[-1]}")


@captures.command()
@click.argument("ids", metavar="[ID]...", nargs=-1)
@where_option
@click.option("--all", "everything", is_flag=True, help="With no --where: delete every capture.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@source_options
def delete(
    ids: tuple[str, ...],
    where: tuple[str, ...],
    everything: bool,
    yes: bool,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Delete captures for good (hard delete), by ID or by --where filters.

    Asks first on a terminal; elsewhere it needs --yes. Prints how many were deleted
    (--json: {"object": "capture.bulk_delete", "deleted": N}).
    """
    chosen, params = targets(ids, where, everything)
    if not yes and not _is_interactive():
        raise CommandFailed("deleting needs confirmation: pass --yes when not on a terminal")

    async def action(store: CaptureSource) -> tuple[int, list[str]]:
        if params is not None:
            if not yes:
                _confirm(int((await store.stats(params)).get("captures") or 0))
            result = await store.delete_where(params, everything)
            return int(result.get("deleted") or 0), []
        if not yes:
            _confirm(len(chosen))
        results, missing = await _each(chosen, store.delete_capture)
        return len(results), missing

    deleted, missing = source.run(action)
    if as_json:
        _echo_json({"object": "capture.bulk_delete", "deleted": deleted})
    else:
        click.echo(f"deleted {deleted} capture{'' if deleted == 1 else 's'}")
    _fail_missing(missing)


def _confirm(count: int) -> None:
    if count:
        noun = "capture" if count == 1 else "captures"
        click.confirm(f"Delete {count} {noun} for good?", abort=True, err=True)


@click.command()
@filter_options
@json_option
@source_options
def stats(params: Params, as_json: bool, source: SourceSpec) -> None:
    """Count captures by model, endpoint, outcome, tag and day; tokens; store size."""

    async def action(store: CaptureSource) -> JSON:
        return await store.stats(params)

    result = source.run(action)
    if as_json:
        _echo_json(result)
    else:
        from proxy._capture_text import stats_text

        click.echo(stats_text(result))
