"""The whole loop on loopback, as an operator runs it: capture → dataset → train → serve →
evaluate → shadow → canary → the student dies → fallback and rollback.

The teacher is `stillroom mock` behind `stillroom serve`; the student is a tiny Llama trained
here by the local backend (CPU) and served by `stillroom student serve`'s app; the eval and the
route go through the CLI and the route service the admin API uses."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from proxy.cli import cli
from proxy.routing.service import RouteService
from storage.sqlite import SQLiteStore
from tests._server import serve_in_thread
from tests._tiny_model import build_tiny_model
from tests._training import make_training_db

pytest.importorskip("trl", reason="the train extra is part of the dev set")


def invoke(args):
    result = CliRunner().invoke(cli, args, prog_name="stillroom")
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


async def _service(db: Path, fn):
    async with SQLiteStore(db) as store:
        return await fn(RouteService(store))


def service(db: Path, fn):
    return asyncio.run(_service(db, fn))


def shadow_pairs(db: Path) -> list:
    return service(db, lambda s: s.events("qa", kind="shadow_pair", after=0, limit=10))["data"]


def test_capture_train_serve_eval_route_fallback(start_proxy, mock_url, tmp_path):
    # Capture and curate: 16 qa chats through the proxy, dataset qa (validation 0.2).
    db = make_training_db(start_proxy, mock_url, tmp_path / "loop.db")
    where = ["--database", str(db)]

    async def holdout_dataset() -> None:
        from storage.datasets import DatasetSpec, create_dataset
        from storage.query import CaptureFilter

        async with SQLiteStore(db) as store:
            spec = DatasetSpec("qa-eval", where=CaptureFilter(tags=(("task", "qa"),)),
                               validation=0.0, holdout=0.5)  # fmt: skip
            await create_dataset(store, spec)

    asyncio.run(holdout_dataset())

    # Train: the local backend, LoRA on a tiny Llama whose tokenizer learned the exported text.
    export = tmp_path / "qa.hf.jsonl"
    CliRunner().invoke(cli, ["datasets", "export", "qa", "--format", "hf", "--out", str(export),
                             *where])  # fmt: skip
    base = build_tiny_model(tmp_path / "tiny", export.read_text().splitlines())
    models = tmp_path / "models"
    job = invoke(["train", "start", "--dataset", "qa", "--backend", "local", "--base-model",
                  str(base), "--max-steps", "8", "--batch-size", "4", "--learning-rate", "0.01",
                  "--json", "--models-dir", str(models), *where])  # fmt: skip
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
        job = invoke(["train", "status", job["id"], "--json", "--models-dir", str(models), *where])
    assert job["status"] == "succeeded", job

    from proxy.student.app import create_student_app
    from proxy.student.model import load_student

    app = create_student_app(functools.partial(load_student, job["fine_tuned_model"]),
                             max_new_tokens=24)  # fmt: skip
    with serve_in_thread(app) as student_url:
        # Evaluate: the student answers the holdout; numbers come from its answers.
        report = invoke(["eval", "run", "--dataset", "qa-eval", "--student-url",
                         student_url + "/v1", "--student-model", "student", "--json",
                         *where])  # fmt: skip
        assert report["status"] == "completed" and report["errors"] == 0
        chrf = report["graders"]["chrf"]
        assert chrf["n"] == report["total"] >= 4 and 0 <= chrf["mean"] < 1
        assert report["latency_ms"]["student"]["median"] > 0
        assert report["verdict"]["passed"]  # no thresholds set

        route = {
            "name": "qa",
            "model": "gpt-4o-mini",
            "student": {"base_url": student_url + "/v1", "model": "student"},
            "mode": "shadow",
            "min_shadow_pairs": 3,
            "rollback": {"window_s": 60, "min_requests": 4, "max_fallback_rate": 0.5},
        }
        service(db, lambda s: s.create(route))
        settings = {"upstream": mock_url, "database": str(db), "routes_refresh": "0.1",
                    "flush_interval": "0.02"}  # fmt: skip
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 7?"}]}
        direct = httpx.post(mock_url + "/v1/chat/completions", json=chat).content
        with start_proxy(**settings) as proxy:
            # Shadow: the client gets the teacher's bytes; the student answers on the side.
            for _ in range(4):
                answer = httpx.post(proxy + "/v1/chat/completions", json=chat)
                assert answer.content == direct
                assert answer.headers["x-stillroom-served-by"] == "teacher"
            deadline = time.monotonic() + 30
            while (
                service(db, lambda s: s.events("qa", kind="shadow_pair", after=0, limit=10))[
                    "data"
                ].__len__()
                < 3
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)

            # Canary 50%: promoted with the passing eval, sticky per user.
            promoted = service(db, lambda s: s.update(
                "qa", {"mode": "canary", "percent": 50, "eval_id": report["id"]}))  # fmt: skip
            assert promoted["mode"] == "canary"
            time.sleep(0.3)  # the running proxy sees the change through the store
            with openai.OpenAI(base_url=proxy + "/v1", api_key="sk-c", max_retries=0) as client:
                seen = {}
                for n in range(24):
                    raw = client.chat.completions.with_raw_response.create(**chat, user=f"user-{n}")
                    seen[n] = raw.headers["x-stillroom-served-by"]
                for n in range(0, 24, 4):
                    raw = client.chat.completions.with_raw_response.create(**chat, user=f"user-{n}")
                    assert raw.headers["x-stillroom-served-by"] == seen[n]
            students = [n for n, who in seen.items() if who == "student:qa"]
            assert 5 <= len(students) <= 19, seen

    # The student is gone (its server stopped): the canary users fall back, nobody errs.
    with start_proxy(**settings) as proxy:
        with openai.OpenAI(base_url=proxy + "/v1", api_key="sk-c", max_retries=0) as client:
            for n in students[:6]:
                raw = client.chat.completions.with_raw_response.create(**chat, user=f"user-{n}")
                assert raw.http_response.status_code == 200
                assert raw.headers.get("x-stillroom-served-by", "teacher") == "teacher"
        deadline = time.monotonic() + 10
        while service(db, lambda s: s.get("qa"))["mode"] == "canary":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    rolled = service(db, lambda s: s.get("qa"))
    assert rolled["mode"] == "shadow"
    events = service(db, lambda s: s.events("qa", kind="event", after=0, limit=50))["data"]
    assert any(e["message"].startswith("rolled back canary → shadow") for e in events)
