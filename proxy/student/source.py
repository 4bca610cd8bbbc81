"""Where a student is on disk, found with the file system alone.

A student is whatever training left on disk: a merged model (``config.json``, weights, a
tokenizer with a chat template), a LoRA adapter (``adapter_config.json``, whose
``base_model_name_or_path`` must be a local model directory), or a training job directory
``<models_dir>/<job>/`` holding ``merged/`` (preferred) or ``adapter/``. ``resolve_student``
checks all of that without importing torch, so ``stillroom student serve`` refuses a hub name,
a missing directory or one without a model in one line before anything loads.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")


class StudentLoadError(ValueError):
    """The path holds no student that can be loaded here; the message is one line."""


@dataclass(frozen=True, slots=True)
class StudentSource:
    """Where a student's parts are on disk (see ``resolve_student``)."""

    name: str  # the served name unless one is given: the directory's (or job's) name
    model_dir: Path  # the merged model, or an adapter's base
    tokenizer_dir: Path  # the adapter's own tokenizer when it saved one, else the model's
    adapter_dir: Path | None = None  # a LoRA adapter, merged into model_dir on load


def resolve_student(path: str | os.PathLike[str]) -> StudentSource:
    """Find the student at ``path`` using the file system only; raise ``StudentLoadError``."""
    given = os.fspath(path)
    where = Path(given).expanduser()
    if not where.exists():
        if _HUB_NAME.match(given) and not given.startswith("."):
            raise StudentLoadError(
                f"{given}: no such directory; student serve loads a local model only "
                "(a merged model, a LoRA adapter or a training job directory) and never "
                "downloads one"
            )
        raise StudentLoadError(f"{given}: no such directory")
    if not where.is_dir():
        raise StudentLoadError(f"{given}: not a directory")
    name = where.resolve().name
    if (where / "merged").is_dir():
        return _merged(where / "merged", name)
    if (where / "adapter").is_dir():
        return _adapter(where / "adapter", name)
    if (where / "adapter_config.json").is_file():
        return _adapter(where, name)
    if (where / "config.json").is_file():
        return _merged(where, name)
    raise StudentLoadError(
        f"{given}: no model here (expected config.json with weights and a tokenizer, "
        "adapter_config.json, or a training job directory with merged/ or adapter/)"
    )


def _merged(where: Path, name: str) -> StudentSource:
    _check_model_dir(where)
    _check_tokenizer_dir(where)
    return StudentSource(name=name, model_dir=where, tokenizer_dir=where)


def _adapter(where: Path, name: str) -> StudentSource:
    config_file = where / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudentLoadError(f"{config_file}: unreadable ({exc})") from None
    if not any(where.glob("adapter_model.*")):
        raise StudentLoadError(f"{where}: adapter_config.json but no adapter_model weights")
    base_name = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base_name, str) or not base_name:
        raise StudentLoadError(f"{config_file}: no base_model_name_or_path")
    base = Path(base_name).expanduser()
    if not base.is_absolute() and not base.is_dir():
        base = where / base
    if not base.is_dir():
        raise StudentLoadError(
            f"{where}: the adapter's base model {base_name!r} is not a local directory; "
            "point base_model_name_or_path at a local copy or serve a merged model"
        )
    _check_model_dir(base)
    tokenizer_dir = where if any((where / f).is_file() for f in _TOKENIZER) else base
    _check_tokenizer_dir(tokenizer_dir)
    return StudentSource(name=name, model_dir=base, tokenizer_dir=tokenizer_dir, adapter_dir=where)


def _check_model_dir(where: Path) -> None:
    if not (where / "config.json").is_file():
        raise StudentLoadError(f"{where}: no config.json")
    if not any(any(where.glob(pattern)) for pattern in _WEIGHTS):
        raise StudentLoadError(f"{where}: config.json but no weights (*.safetensors)")


def _check_tokenizer_dir(where: Path) -> None:
    if not any((where / f).is_file() for f in _TOKENIZER):
        raise StudentLoadError(f"{where}: no tokenizer")
    if not _has_chat_template(where):
        raise StudentLoadError(f"{where}: the tokenizer has no chat template")


def _has_chat_template(where: Path) -> bool:
    if (where / "chat_template.jinja").is_file() or (where / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((where / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))
