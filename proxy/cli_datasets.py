"""``stillroom datasets create|list|show|export|validate|delete``.

Like ``stillroom captures``, each command works on the database file (``--database``) or on a
running server's admin API (``--url``, ``--admin-token``), prints the same either way (tables
for people, the admin API's JSON with ``--json``), and fails with one ``Error:`` line: exit 2
for bad input, 1 otherwise. ``validate`` reads a local JSONL file only. Long work (creating,
exporting) shows a progress bar on stderr when stderr is a terminal, so ``--json`` output on
stdout stays clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from proxy._capture_options import SourceSpec, filter_options, json_option, source_options
from proxy._capture_source import JSON, BadUsage, CommandFailed, Params, filter_body
from proxy._dataset_source import DatasetSource, Progress


def _echo_json(value: object) -> None:
    import json

    click.echo(json.dumps(value, ensure_ascii=False))


def _is_interactive() -> bool:
    return sys.stdin.isatty()


def _shows_progress() -> bool:
    return sys.stderr.isatty()


def _run(source: SourceSpec, action: Callable[[DatasetSource], Any]) -> Any:
    from proxy._dataset_source import LocalDatasets, RemoteDatasets

    local: Callable[[str], DatasetSource] = LocalDatasets
    remote: Callable[[str, str], DatasetSource] = RemoteDatasets
    return source.run_on(local, remote, action)


class _Bar:
    """A ``Progress`` callback drawing a click progress bar on stderr once the total is known."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=total, label=self._label, file=sys.stderr)
            self._bar.__enter__()
        self._bar.length = max(total, 1)
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@contextmanager
def _progress(label: str) -> Iterator[Progress | None]:
    """A progress bar while the block runs, on a terminal; None elsewhere."""
    if not _shows_progress():
        yield None
        return
    bar = _Bar(label)
    try:
        yield bar
    finally:
        bar.close()


def _name(value: str) -> str:
    from storage.datasets import check_name

    try:
        return check_name(value)
    except ValueError as exc:
        raise BadUsage(str(exc)) from None


@click.group()
def datasets() -> None:
    """Turn captures into training datasets: create, list, show, export, validate, delete."""


# -- create --------------------------------------------------------------------------------------


def _float(option: str, value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        raise BadUsage(f"{option} must be a number, got {value!r:.80}") from None


def _int(option: str, value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        raise BadUsage(f"{option} must be an integer, got {value!r:.80}") from None


def _workers(value: str | None) -> int | None:
    workers = _int("--workers", value)
    if workers is not None and not 1 <= workers <= 64:
        raise BadUsage(f"--workers must be 1-64, got {workers}")
    return workers


def spec_body(name: str, params: Params, options: dict[str, Any]) -> JSON:
    """``POST /admin/datasets``' body from the command line, checked as the server checks it."""
    from proxy.admin.params import parse_body_spec
    from storage.query import QueryError

    body: JSON = {"name": _name(name)}
    if params:
        body["filter"] = filter_body(params)
    body.update({key: value for key, value in options.items() if value is not None})
    try:
        parse_body_spec(body)
    except QueryError as exc:
        raise BadUsage(exc.message) from None
    return body


@datasets.command()
@click.argument("name")
@filter_options
@click.option(
    "--validation",
    metavar="SHARE",
    help="Share of examples for validation, 0 to <1 [default: 0.1].",
)
@click.option("--holdout", metavar="SHARE", help="Share held out for evals, 0 to <1 [default: 0].")
@click.option(
    "--holdout-by", metavar="hash|time",
    help="Pick the holdout by prompt hash (reproducible) or time (the newest) [default: hash].",
)  # fmt: skip
@click.option(
    "--dedupe", metavar="exact|near",
    help="Merge exact duplicates, or near ones too (case, spacing, numbers) [default: exact].",
)  # fmt: skip
@click.option(
    "--max-tokens", metavar="N",
    help="Leave out examples longer than this (never cut) [default: 65536].",
)  # fmt: skip
@click.option(
    "--price-per-million", metavar="USD",
    help="Training price per million tokens, for the cost estimate [default: 3.0].",
)  # fmt: skip
@click.option(
    "--workers", metavar="N",
    help="Worker processes, 1-64 (1: none; the database file only) [default: one per CPU, at "
    "most 2, for 20,000 captures or more].",
)  # fmt: skip
@json_option
@source_options
def create(
    name: str,
    params: Params,
    validation: str | None,
    holdout: str | None,
    holdout_by: str | None,
    dedupe: str | None,
    max_tokens: str | None,
    price_per_million: str | None,
    workers: str | None,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Snapshot the captures the filters match as dataset NAME.

    Quality gates, dedupe, train/validation/holdout splits and token counts; a dataset never
    changes once made. The same inputs give the same splits.

    Filters are those of `captures list`; --tag takes KEY=VALUE or KEY:VALUE.
    """
    options = {
        "validation": _float("--validation", validation),
        "holdout": _float("--holdout", holdout),
        "holdout_by": holdout_by,
        "dedupe": dedupe,
        "max_tokens": _int("--max-tokens", max_tokens),
        "price_per_million": _float("--price-per-million", price_per_million),
    }
    body = spec_body(name, params, options)
    processes = _workers(workers)

    async def action(store: DatasetSource) -> JSON:
        with _progress(f"creating {body['name']}") as progress:
            return await store.create_dataset(body, progress, processes)

    dataset = _run(source, action)
    if as_json:
        _echo_json(dataset)
        return
    from proxy._dataset_text import dataset_text

    click.echo(dataset_text(dataset))


# -- list, show ----------------------------------------------------------------------------------


@datasets.command("list")
@json_option
@source_options
def list_datasets(as_json: bool, source: SourceSpec) -> None:
    """List datasets, newest first, with their counts per split."""

    async def action(store: DatasetSource) -> JSON:
        return await store.list_datasets()

    page = _run(source, action)
    if as_json:
        _echo_json(page)
    elif not page.get("data"):
        click.echo("no datasets")
    else:
        from proxy._dataset_text import datasets_table

        click.echo(datasets_table(page["data"]))


@datasets.command()
@click.argument("name")
@json_option
@source_options
def show(name: str, as_json: bool, source: SourceSpec) -> None:
    """Show a dataset: filter, counts, what was left out and why, tokens, leakage.

    Counts and token statistics (min, mean, p95, max, cost per epoch) are per split.
    """
    checked = _name(name)

    async def action(store: DatasetSource) -> JSON:
        return await store.get_dataset(checked)

    dataset = _run(source, action)
    if as_json:
        _echo_json(dataset)
        return
    from proxy._dataset_text import dataset_text

    click.echo(dataset_text(dataset))


# -- export --------------------------------------------------------------------------------------


@datasets.command()
@click.argument("name")
@click.option(
    "--format", "fmt", metavar="FORMAT",
    help="openai-chat (SFT chat JSONL), openai-dpo (preference pairs) or hf (Hugging Face "
    "datasets / TRL) [default: openai-chat].",
)  # fmt: skip
@click.option("--split", metavar="SPLIT", help="train, validation or holdout [default: train].")
@click.option(
    "--out", metavar="FILE", required=True,
    help="The file to write; its manifest goes to FILE.manifest.json.",
)  # fmt: skip
@click.option(
    "--workers", metavar="N",
    help="Worker processes, 1-64 (1: none; the database file only) [default: one per CPU, at "
    "most 3, for 20,000 examples or more].",
)  # fmt: skip
@json_option
@source_options
def export(
    name: str,
    fmt: str | None,
    split: str | None,
    out: str,
    workers: str | None,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Write one split of dataset NAME to FILE in a training format.

    The manifest goes beside it, in FILE.manifest.json: dataset, content hash, filter, counts,
    quality gates, tokens, the file's sha256, Stillroom version. A FILE ending in .parquet is
    written as Parquet (hf formats, local only, needs the stillroom[hf] extra). A dataset whose
    captures were deleted or edited since is not exported.
    """
    from proxy._dataset_source import check_out, manifest_path
    from proxy.admin.params import parse_export_params
    from storage.query import QueryError

    checked = _name(name)
    given = {key: [value] for key, value in (("format", fmt), ("split", split)) if value}
    try:
        chosen_format, chosen_split = parse_export_params(given)
    except QueryError as exc:
        raise BadUsage(f"--{exc.message}") from None
    path = check_out(out)
    processes = _workers(workers)

    async def action(store: DatasetSource) -> JSON:
        with _progress(f"exporting {checked} ({chosen_split})") as progress:
            return await store.export_dataset(
                checked, chosen_format, chosen_split, path, progress, processes
            )

    manifest = _run(source, action)
    where = manifest_path(path)
    if as_json:
        _echo_json(
            {
                "object": "dataset.export",
                "name": checked,
                "format": chosen_format,
                "split": chosen_split,
                "path": str(path),
                "manifest_path": str(where),
                "manifest": manifest,
            }
        )
        return
    click.echo(f"wrote {path}")
    click.echo(f"manifest: {where}")


# -- validate ------------------------------------------------------------------------------------


@datasets.command()
@click.argument("file", metavar="FILE")
@click.option(
    "--format", "fmt", metavar="FORMAT",
    help="openai-chat (SFT chat) or openai-dpo (preference pairs) [default: openai-chat].",
)  # fmt: skip
@click.option(
    "--max-tokens", metavar="N",
    help="Also count tokens (OpenAI's cookbook method): longer examples are errors.",
)  # fmt: skip
@click.option(
    "--model", metavar="NAME", help="The model whose tokenizer counts (with --max-tokens)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")
def validate(
    file: str, fmt: str | None, max_tokens: str | None, model: str | None, as_json: bool
) -> None:
    """Check a JSONL file against OpenAI's fine-tuning format rules.

    The checks of OpenAI's data-preparation cookbook and more, on any local file (exported by
    Stillroom or not): prints what is wrong, by line, and exits 1 if anything is.
    """
    from storage.validate import VALIDATE_FORMATS, validate_jsonl

    chosen = fmt or "openai-chat"
    if chosen not in VALIDATE_FORMATS:
        known = ", ".join(VALIDATE_FORMATS)
        raise BadUsage(f"--format must be one of {known}, got {chosen!r:.80}")
    limit = _int("--max-tokens", max_tokens)
    if limit is not None and limit < 1:
        raise BadUsage("--max-tokens must be at least 1")
    try:
        report = validate_jsonl(file, fmt=chosen, max_tokens=limit, model=model)
    except OSError as exc:
        raise CommandFailed(f"cannot read {file}: {exc.strerror or exc}") from None
    if as_json:
        _echo_json({"file": file, **report.to_json()})
    else:
        from proxy._dataset_text import validation_text

        click.echo(validation_text(file, report.to_json()))
    if not report.ok:
        sys.exit(1)


# -- delete --------------------------------------------------------------------------------------


@datasets.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@source_options
def delete(name: str, yes: bool, as_json: bool, source: SourceSpec) -> None:
    """Delete a dataset's snapshot (its captures stay).

    Asks first on a terminal; elsewhere it needs --yes.
    """
    checked = _name(name)
    if not yes and not _is_interactive():
        raise CommandFailed("deleting needs confirmation: pass --yes when not on a terminal")

    async def action(store: DatasetSource) -> JSON:
        if not yes:
            await store.get_dataset(checked)  # no question about a dataset that is not there
            click.confirm(f"Delete dataset {checked}?", abort=True, err=True)
        return await store.delete_dataset(checked)

    result = _run(source, action)
    if as_json:
        _echo_json(result)
    else:
        click.echo(f"deleted dataset {checked}")
