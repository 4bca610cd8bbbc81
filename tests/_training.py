"""Shared by the training tests: a database of real captures with datasets, and the canary key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai

PROVIDER_KEY = "sk-train-canary-5f1e9c2a7b3d4e6f8a0b1c2d3e4f5a6b"
QUESTIONS = [f"Question {n}: what is {n} squared?" for n in range(16)]


def make_training_db(start_proxy, mock_url: str, path: Path) -> Path:
    """Sixteen ``task=qa`` and three ``task=tiny`` chats through the proxy, then datasets
    ``qa`` (enough to train) and ``tiny`` (too few lines for the provider)."""
    with start_proxy(upstream=mock_url, database=str(path), flush_interval=0.02) as base:
        for task, questions in (("qa", QUESTIONS), ("tiny", QUESTIONS[:3])):
            with openai.OpenAI(
                base_url=base + "/v1",
                api_key="sk-client",
                max_retries=0,
                default_headers={"X-Stillroom-Tags": f"task={task}"},
            ) as client:
                for question in questions:
                    client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": question + f" ({task})"}],
                    )
    asyncio.run(_make_datasets(path))
    return path


async def _make_datasets(path: Path) -> None:
    from storage.datasets import DatasetSpec, create_dataset
    from storage.query import CaptureFilter
    from storage.sqlite import SQLiteStore

    async with SQLiteStore(path) as store:
        for name in ("qa", "tiny"):
            where = CaptureFilter(tags=(("task", name),))
            await create_dataset(store, DatasetSpec(name, where=where, validation=0.2))


def training_settings(mock_url: str, db: Path, **extra: object) -> dict[str, object]:
    """``stillroom serve`` settings for training through the mock provider, admin API on."""
    from tests._admin import TOKEN

    return {
        "upstream": mock_url,
        "database": str(db),
        "admin_token": TOKEN,
        "train_base_url": mock_url + "/v1",
        "train_api_key": PROVIDER_KEY,
        "train_poll_interval": 0.02,
        **extra,
    }
