"""``stillroom student serve``: try a trained student through the API the teacher had.

The path is checked with the file system first, so a hub name, a missing directory or one
without a model fails with one ``Error:`` line (exit 2) before torch is imported; so does a
machine without the train extra. Only then does the server start, loading the model in its
lifespan: uvicorn listens once the model is ready, and a model that fails to load exits with
``STARTUP_FAILURE`` (3). Nothing is downloaded (``HF_HUB_OFFLINE=1``, local files only).
"""

from __future__ import annotations

import importlib.util
import re
import sys

import click

from proxy._capture_source import BadUsage

_PRINTABLE_NAME = re.compile(r"^[!-~]+$")  # it goes into a header: printable ASCII, no spaces


@click.group()
def student() -> None:
    """Serve a trained student model (needs the train extra: pip install 'stillroom[train]')."""


@student.command()
@click.option(
    "--model", "model_path", required=True, metavar="PATH",
    help="A merged model directory, a LoRA adapter directory (its base must be local) or a "
    "training job directory holding merged/ or adapter/.",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8090, show_default=True, type=click.IntRange(0, 65535),
    help="Port to listen on.",
)  # fmt: skip
@click.option(
    "--served-model-name", metavar="NAME",
    help="The model name in answers and /v1/models [default: the directory's name].",
)  # fmt: skip
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where the model runs; auto picks cuda when torch sees a GPU.",
)  # fmt: skip
@click.option(
    "--max-new-tokens", default=512, show_default=True, type=click.IntRange(min=1),
    help="The longest answer: the default for requests without max_tokens, and their cap.",
)  # fmt: skip
@click.option(
    "--log-level", default="info", show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]), help="Log level.",
)  # fmt: skip
def serve(
    model_path: str,
    host: str,
    port: int,
    served_model_name: str | None,
    device: str,
    max_new_tokens: int,
    log_level: str,
) -> None:
    """Serve a student over OpenAI's API: /v1/chat/completions (streamed or not, with tool
    calls), /v1/models and /healthz."""
    import functools
    import os

    from proxy.student.source import StudentLoadError, resolve_student

    try:
        source = resolve_student(model_path)
    except StudentLoadError as exc:
        raise BadUsage(str(exc)) from None
    name = served_model_name or source.name
    if not _PRINTABLE_NAME.match(name):
        raise BadUsage(f"served model name {name!r}: use printable ASCII without spaces")
    needed = ("torch", "transformers") + (("peft",) if source.adapter_dir is not None else ())
    missing = [module for module in needed if importlib.util.find_spec(module) is None]
    if missing:
        modules = " and ".join(missing)
        raise BadUsage(
            f"{modules} not installed: pip install 'stillroom[train]' to serve a student"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the hub

    from proxy.cli import STARTUP_FAILURE
    from proxy.server import configure_logging, run, uvicorn_config
    from proxy.student.app import create_student_app
    from proxy.student.model import load_student, pick_device

    try:
        device = pick_device(device)
    except StudentLoadError as exc:
        raise BadUsage(str(exc)) from None
    configure_logging(log_level)
    load = functools.partial(load_student, source, device=device, name=name)
    app = create_student_app(load, max_new_tokens=max_new_tokens)
    config = uvicorn_config(app, host=host, port=port, timeout_graceful_shutdown=5)
    if not run(config):
        sys.exit(STARTUP_FAILURE)
