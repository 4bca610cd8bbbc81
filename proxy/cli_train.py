"""``stillroom train start|status|list|cancel|events``: train a student from a dataset.

Like ``stillroom datasets``, each command works on the database file (``--database``) or on a
running server's admin API (``--url``, ``--admin-token``), prints a short text for people or
the admin API's JSON with ``--json``, and fails with one ``Error:`` line (exit 2 for bad input,
1 otherwise). On the database, the command itself calls the provider named by
``--provider-url``/``--provider-key`` (or ``STILLROOM_TRAIN_BASE_URL``/``STILLROOM_TRAIN_API_KEY``):
``start`` launches the job, ``status`` and ``events`` poll it once. Over ``--url`` the server
does that with its own provider settings. The key is never stored nor printed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from proxy._capture_options import SourceSpec, json_option, source_options
from proxy._capture_source import JSON, BadUsage
from proxy._job_source import JobSource
from proxy.training.runner import ProviderConfig

Command = Callable[..., Any]


def _echo_json(value: object) -> None:
    import json

    click.echo(json.dumps(value, ensure_ascii=False))


def provider_options(command: Command) -> Command:
    """``--provider-url``, ``--provider-key`` → ``provider: ProviderConfig``."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        provider_url: str | None,
        provider_key: str | None,
        models_dir: str | None,
        **kw: Any,
    ) -> Any:
        return command(*args, provider=_provider(provider_url, provider_key, models_dir), **kw)

    options = [
        click.option(
            "--provider-url", metavar="URL", envvar="STILLROOM_TRAIN_BASE_URL",
            help="The OpenAI-compatible fine-tuning provider's base URL, with /v1 (database "
            "mode) [env: STILLROOM_TRAIN_BASE_URL].",
        ),
        click.option(
            "--provider-key", metavar="KEY", envvar="STILLROOM_TRAIN_API_KEY",
            help="The provider's API key; better given in the environment; never stored "
            "[env: STILLROOM_TRAIN_API_KEY].",
        ),
        click.option(
            "--models-dir", metavar="DIR", envvar="STILLROOM_MODELS_DIR",
            help="Where local jobs write their models (database mode) "
            "[env: STILLROOM_MODELS_DIR; default: ./stillroom-models].",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _provider(url: str | None, key: str | None, models_dir: str | None) -> ProviderConfig:
    from proxy.settings import SettingsError, load_settings

    overrides = {"train_base_url": url or "", "train_api_key": key or ""}
    if models_dir is not None:
        overrides["models_dir"] = models_dir
    try:
        settings = load_settings({}, **overrides)
    except SettingsError as exc:
        message = str(exc).replace("--train-base-url", "--provider-url")
        raise BadUsage(message.replace("--train-api-key", "--provider-key")) from None
    secret = settings.train_api_key
    return ProviderConfig(
        settings.train_base_url, secret.reveal() if secret else None, settings.models_dir
    )


def _run(source: SourceSpec, provider: ProviderConfig, action: Callable[[JobSource], Any]) -> Any:
    from proxy._job_source import LocalJobs, RemoteJobs

    if source.url is not None and _flags_given():
        raise BadUsage(
            "--provider-url and --provider-key are for --database; over --url the server "
            "uses its own STILLROOM_TRAIN_BASE_URL and STILLROOM_TRAIN_API_KEY"
        )

    def local(database: str) -> JobSource:
        return LocalJobs(database, provider)

    remote: Callable[[str, str], JobSource] = RemoteJobs
    return source.run_on(local, remote, action)


def _flags_given() -> bool:
    from click.core import ParameterSource

    context = click.get_current_context()
    return any(
        context.get_parameter_source(name) is ParameterSource.COMMANDLINE
        for name in ("provider_url", "provider_key", "models_dir")
    )


def _job_id(value: str) -> str:
    from storage.jobs import is_job_id

    if not is_job_id(value):
        raise BadUsage(f"{value!r:.80} is not a job id (ftjob- and 32 hex digits)")
    return value


def job_text(job: JSON) -> str:
    lines = [
        f"{job['id']}  {job['status']}",
        f"  dataset     {job['dataset']['name']} ({job['dataset']['content_hash'][:12]})",
        f"  base model  {job['base_model']} ({job['method']}, {job['backend']})",
    ]
    if job["hyperparameters"]:
        pairs = ", ".join(f"{k}={v}" for k, v in job["hyperparameters"].items())
        lines.append(f"  hyperparams {pairs}")
    provider = job["provider"]
    if provider["job_id"]:
        lines.append(f"  provider    {provider['job_id']} at {provider['url']}")
    if job["fine_tuned_model"]:
        lines.append(f"  model       {job['fine_tuned_model']}")
    if job["error"]:
        error = job["error"]
        code = f" ({error['code']})" if error["code"] else ""
        lines.append(f"  error       {error['message']}{code}")
    return "\n".join(lines)


@click.group()
def train() -> None:
    """Train a student from a dataset: start, status, list, cancel, events."""


@train.command()
@click.option("--dataset", "dataset", metavar="NAME", required=True, help="The dataset.")
@click.option(
    "--backend", type=click.Choice(["openai", "local"]), required=True,
    help="local: TRL on this machine (the train extra; GPU if there is one); openai: an "
    "OpenAI-compatible fine-tuning provider.",
)  # fmt: skip
@click.option(
    "--base-model", metavar="MODEL",
    help="The model to fine-tune: the provider's model name, or for --backend local a local "
    "model directory or .gguf file (required; nothing is downloaded).",
)  # fmt: skip
@click.option(
    "--method", type=click.Choice(["sft", "dpo"]),
    help="Supervised fine-tuning, or DPO on the dataset's preference pairs [default: sft].",
)  # fmt: skip
@click.option("--epochs", type=click.IntRange(1, 50), help="n_epochs.")
@click.option(
    "--learning-rate", type=click.FloatRange(min=0, min_open=True),
    help="learning_rate, absolute (local default: 2e-4 with LoRA, 2e-5 without).",
)  # fmt: skip
@click.option(
    "--learning-rate-multiplier", type=click.FloatRange(min=0, min_open=True),
    help="learning_rate_multiplier (OpenAI).",
)  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1, 256), help="batch_size.")
@click.option(
    "--lora-rank", type=click.IntRange(0, 1024),
    help="LoRA rank, 0 for full fine-tuning (local) [default: 16].",
)  # fmt: skip
@click.option(
    "--max-length", type=click.IntRange(16, 131_072),
    help="Drop examples longer than this many tokens (local) [default: 2048].",
)  # fmt: skip
@click.option(
    "--max-steps", type=click.IntRange(min=1),
    help="Stop after this many optimiser steps (local) [default: as the epochs take].",
)  # fmt: skip
@click.option("--suffix", metavar="TEXT", help="Put in the fine-tuned model's name.")
@click.option("--seed", type=click.IntRange(0, 2_147_483_647), help="The training seed.")
@provider_options
@json_option
@source_options
def start(
    dataset: str,
    backend: str,
    base_model: str | None,
    method: str | None,
    epochs: int | None,
    learning_rate: float | None,
    learning_rate_multiplier: float | None,
    batch_size: int | None,
    lora_rank: int | None,
    max_length: int | None,
    max_steps: int | None,
    suffix: str | None,
    seed: int | None,
    provider: ProviderConfig,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """Start training on dataset NAME; prints the job (its id is what the other commands take).

    local: the dataset's train and validation splits are exported for TRL and a training
    process started on this machine (or the server's, with --url); it writes the adapter, the
    merged model, metrics and a model card to STILLROOM_MODELS_DIR/JOB_ID. openai: they are
    exported in OpenAI's format, uploaded, and the provider's fine-tuning job created.
    """
    given = {
        "n_epochs": epochs,
        "learning_rate": learning_rate,
        "learning_rate_multiplier": learning_rate_multiplier,
        "batch_size": batch_size,
        "lora_rank": lora_rank,
        "max_length": max_length,
        "max_steps": max_steps,
    }
    only = {
        "local": ("lora_rank", "max_length", "max_steps"),
        "openai": ("learning_rate_multiplier",),
    }
    for other, names in only.items():
        for name in names:
            if other != backend and given[name] is not None:
                flag = "--" + name.replace("_", "-")
                raise BadUsage(f"{flag} is for --backend {other}")
    if backend == "local" and base_model is None:
        raise BadUsage(
            "--base-model is required with --backend local: a local model directory or .gguf file"
        )
    hyperparameters = {key: value for key, value in given.items() if value is not None}
    options = {"base_model": base_model, "method": method, "suffix": suffix, "seed": seed}
    body: JSON = {"dataset": dataset, "backend": backend, "hyperparameters": hyperparameters}
    body.update({key: value for key, value in options.items() if value is not None})

    async def action(jobs: JobSource) -> JSON:
        return await jobs.start_job(body)

    job = _run(source, provider, action)
    click.echo(json_dumps(job) if as_json else job_text(job))


def json_dumps(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


@train.command()
@click.argument("job_id")
@provider_options
@json_option
@source_options
def status(job_id: str, provider: ProviderConfig, as_json: bool, source: SourceSpec) -> None:
    """Show a job: status, provider ids, fine-tuned model, error (polls it first)."""
    checked = _job_id(job_id)

    async def action(jobs: JobSource) -> JSON:
        return await jobs.get_job(checked)

    job = _run(source, provider, action)
    click.echo(json_dumps(job) if as_json else job_text(job))


@train.command("list")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True,
    help="Jobs per page.",
)  # fmt: skip
@click.option("--after", metavar="JOB_ID", help="The last id of the previous page.")
@json_option
@source_options
def list_jobs(limit: int, after: str | None, as_json: bool, source: SourceSpec) -> None:
    """List training jobs, newest first."""
    checked = _job_id(after) if after is not None else None

    async def action(jobs: JobSource) -> JSON:
        return await jobs.list_jobs(checked, limit)

    page = _run(source, ProviderConfig(), action)
    if as_json:
        _echo_json(page)
    elif not page["data"]:
        click.echo("no training jobs")
    else:
        for job in page["data"]:
            model = job["fine_tuned_model"] or ""
            click.echo(
                f"{job['id']}  {job['status']:<16} {job['dataset']['name']:<20} "
                f"{job['base_model']}  {model}".rstrip()
            )


@train.command()
@click.argument("job_id")
@provider_options
@json_option
@source_options
def cancel(job_id: str, provider: ProviderConfig, as_json: bool, source: SourceSpec) -> None:
    """Cancel a job that has not finished (at the provider too)."""
    checked = _job_id(job_id)

    async def action(jobs: JobSource) -> JSON:
        return await jobs.cancel_job(checked)

    job = _run(source, provider, action)
    click.echo(json_dumps(job) if as_json else f"cancelled {checked}")


@train.command()
@click.argument("job_id")
@click.option("--after", type=click.IntRange(min=0), default=0, help="The last event id read.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
    help="Events per page.",
)  # fmt: skip
@provider_options
@json_option
@source_options
def events(
    job_id: str,
    after: int,
    limit: int,
    provider: ProviderConfig,
    as_json: bool,
    source: SourceSpec,
) -> None:
    """A job's events, oldest first (polls the job first)."""
    import datetime

    checked = _job_id(job_id)

    async def action(jobs: JobSource) -> JSON:
        return await jobs.job_events(checked, after, limit)

    page = _run(source, provider, action)
    if as_json:
        _echo_json(page)
        return
    for event in page["data"]:
        when = datetime.datetime.fromtimestamp(event["created_at"], datetime.UTC)
        click.echo(
            f"{event['id']:>5}  {when:%Y-%m-%d %H:%M:%S}  {event['level']:<5} {event['message']}"
        )
