"""The local training backend, for real: captures → dataset → `stillroom train start --backend
local` → a training process (TRL SFT with LoRA on a tiny random Llama whose tokenizer is trained
here on the exported data) → adapter, merged model, metrics, model card. Also DPO, cancel, a
base model that cannot load, bad input refused up front, and a job launched by the CLI finished
under a server that never launched it (the state lives in the job's directory)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import cli
from proxy.training import _local_files as files
from tests._tiny_model import build_tiny_model
from tests._training import make_training_db

pytest.importorskip("trl", reason="the train extra is part of the dev set")


def invoke(args, env=None):
    result = CliRunner().invoke(cli, args, env=env or {}, prog_name="stillroom")
    assert "Traceback" not in result.output
    return result


def ok_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def db(start_proxy, mock_url, tmp_path):
    return make_training_db(start_proxy, mock_url, tmp_path / "captures.db")


@pytest.fixture
def tiny(db, tmp_path) -> Path:
    """A tiny Llama whose tokenizer is trained on the qa dataset's hf export."""
    from storage.export import export_dataset
    from storage.sqlite import SQLiteStore

    out = tmp_path / "export.jsonl"

    async def export() -> None:
        async with SQLiteStore(db) as store:
            await export_dataset(store, "qa", "hf", None, out)

    asyncio.run(export())
    corpus = out.read_text().splitlines()
    assert len(corpus) == 16
    return build_tiny_model(tmp_path / "tiny-base", corpus)


def wait_for(db, job_id, models, statuses=("succeeded", "failed", "cancelled"), timeout=120.0):
    where = ["--database", str(db), "--models-dir", str(models)]
    deadline = time.monotonic() + timeout
    while True:
        job = ok_json(invoke(["train", "status", job_id, "--json", *where]))
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def events_of(db, job_id, models):
    where = ["--database", str(db), "--models-dir", str(models)]
    page = ok_json(invoke(["train", "events", job_id, "--json", "--limit", "1000", *where]))
    return page["data"]


def test_sft_with_lora_trains_and_writes_the_student(db, tiny, tmp_path):
    models = tmp_path / "models"
    where = ["--database", str(db), "--models-dir", str(models)]
    job = ok_json(
        invoke(["train", "start", "--dataset", "qa", "--backend", "local", "--base-model",
                str(tiny), "--max-steps", "12", "--batch-size", "4", "--lora-rank", "8",
                "--learning-rate", "0.005", "--seed", "3", "--json", *where])
    )  # fmt: skip
    assert job["status"] in ("queued", "running") and job["provider"]["url"] is None
    assert job["base_model"] == str(tiny.resolve())
    assert job["hyperparameters"] == {"learning_rate": 0.005, "lora_rank": 8, "max_steps": 12,
                                      "batch_size": 4}  # fmt: skip
    done = wait_for(db, job["id"], models)
    job_dir = models / job["id"]
    assert done["status"] == "succeeded", (done, (job_dir / files.LOG_FILE).read_text()[-3000:])
    assert done["fine_tuned_model"] == str((job_dir / "merged").resolve())

    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "merged/config.json", "merged/model.safetensors", "merged/tokenizer.json",
                 "merged/chat_template.jinja"):  # fmt: skip
        assert (job_dir / name).is_file(), name
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert (
        metrics["steps"] == 12 and metrics["train_examples"] + metrics["validation_examples"] == 16
    )
    assert metrics["validation_examples"] > 0 and metrics["eval_loss"] is not None
    assert metrics["first_loss"] > metrics["train_loss"] > 0  # it learned something
    card = (job_dir / "README.md").read_text()
    assert done["dataset"]["content_hash"] in card and str(tiny.resolve()) in card

    events = events_of(db, job["id"], models)
    messages = [e["message"] for e in events]
    losses = [e["data"]["loss"] for e in events if e["data"] and "loss" in e["data"]]
    assert len(losses) >= 3 and all(loss > 0 for loss in losses), messages
    assert any(m.startswith("epoch") and "eval loss" in m for m in messages), messages
    assert any("status running → succeeded" in m or "queued → succeeded" in m for m in messages)
    assert len({e["id"] for e in events}) == len(events)  # polled many times, recorded once

    # The merged model loads and generates through its own chat template.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job_dir / "merged")
    model = AutoModelForCausalLM.from_pretrained(job_dir / "merged")
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Question 3: what is 3 squared?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )  # fmt: skip
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_full_fine_tuning_and_dpo(db, tiny, tmp_path):
    models = tmp_path / "models"
    where = ["--database", str(db), "--models-dir", str(models)]
    full = ok_json(
        invoke(["train", "start", "--dataset", "qa", "--backend", "local", "--base-model",
                str(tiny), "--max-steps", "3", "--lora-rank", "0", "--json", *where])
    )  # fmt: skip
    done = wait_for(db, full["id"], models)
    assert done["status"] == "succeeded", done
    assert not (models / full["id"] / "adapter").exists()
    assert (models / full["id"] / "merged" / "model.safetensors").is_file()

    # DPO on preference pairs: the person's correction preferred over the captured answer.
    asyncio.run(_correct_answers(db, count=6))
    dpo = ok_json(
        invoke(["train", "start", "--dataset", "prefs", "--backend", "local", "--method", "dpo",
                "--base-model", str(tiny), "--max-steps", "3", "--batch-size", "2", "--json",
                *where])
    )  # fmt: skip
    done = wait_for(db, dpo["id"], models)
    job_dir = models / dpo["id"]
    assert done["status"] == "succeeded", (done, (job_dir / files.LOG_FILE).read_text()[-3000:])
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["method"] == "dpo" and metrics["train_examples"] > 0
    assert metrics["train_loss"] is not None and (job_dir / "adapter").is_dir()
    rows = [
        json.loads(line) for line in (job_dir / "data" / "train.jsonl").read_text().splitlines()
    ]
    assert rows and all(
        row["preferred_output"][0]["content"].startswith("Corrected") for row in rows
    )


async def _correct_answers(db: Path, count: int) -> None:
    from storage.datasets import DatasetSpec, create_dataset
    from storage.query import CapturePatch, parse_filter
    from storage.sqlite import SQLiteStore

    async with SQLiteStore(db) as store:
        where = parse_filter({"tag": ["task:qa"]})
        page = await store.list_captures(where, limit=count)
        for n, item in enumerate(page.items):
            answer = {"role": "assistant", "content": f"Corrected answer {n}: {n * n}."}
            await store.update_capture(item.record.id, CapturePatch(corrected_response=answer))
        await create_dataset(store, DatasetSpec("prefs", where=where, validation=0.0))


def test_cancel_stops_the_training_process(db, tiny, tmp_path):
    models = tmp_path / "models"
    where = ["--database", str(db), "--models-dir", str(models)]
    job = ok_json(
        invoke(["train", "start", "--dataset", "qa", "--backend", "local", "--base-model",
                str(tiny), "--max-steps", "1000000", "--json", *where])
    )  # fmt: skip
    job_dir = models / job["id"]
    deadline = time.monotonic() + 60
    while not any("step" in m for m in (e["message"] for e in events_of(db, job["id"], models))):
        assert time.monotonic() < deadline, (job_dir / files.LOG_FILE).read_text()[-3000:]
        time.sleep(0.2)
    pid = files.read_pid(job_dir)
    assert pid is not None and files.is_running(pid, job_dir)
    cancelled = ok_json(invoke(["train", "cancel", job["id"], "--json", *where]))
    assert cancelled["status"] == "cancelled"
    assert not files.is_running(pid, job_dir)
    messages = [e["message"] for e in events_of(db, job["id"], models)]
    assert f"training process {pid} stopped" in messages
    assert json.loads((job_dir / files.STATE_FILE).read_text())["status"] == "cancelled"
    again = invoke(["train", "cancel", job["id"], *where])
    assert again.exit_code == 1 and "has finished (cancelled)" in again.output


def test_a_base_model_that_cannot_load_fails_the_job_clearly(db, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    models = tmp_path / "models"
    where = ["--database", str(db), "--models-dir", str(models)]
    job = ok_json(
        invoke(["train", "start", "--dataset", "qa", "--backend", "local", "--base-model",
                str(broken), "--json", *where])
    )  # fmt: skip
    done = wait_for(db, job["id"], models)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "base_model_invalid"
    assert done["error"]["message"].startswith(f"could not load the base model {broken}")
    assert "Traceback" not in done["error"]["message"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base-model", "Qwen/Qwen2.5-0.5B-Instruct"],
         "is not a local directory or GGUF file; the local backend never downloads models"),
        (["--base-model", "{tmp}"], "the directory has no config.json"),
        (["--base-model", "{tmp}/x.bin"], "is not a local directory or GGUF file"),
        ([], "--base-model is required with --backend local"),
        (["--base-model", "{tmp}", "--learning-rate-multiplier", "2"],
         "--learning-rate-multiplier is for --backend openai"),
    ],
)  # fmt: skip
def test_bad_local_jobs_are_refused_up_front(db, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = invoke(["train", "start", "--dataset", "qa", "--backend", "local", *args,
                     "--database", str(db), "--models-dir", str(tmp_path / "m")])  # fmt: skip
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    listed = invoke(["train", "list", "--json", "--database", str(db)])
    assert ok_json(listed)["data"] == []  # nothing recorded
    assert not (tmp_path / "m").exists()


def test_hyperparameters_are_checked_by_the_admin_api(start_proxy, db, tiny, tmp_path):
    import httpx

    from tests._admin import TOKEN

    with start_proxy(database=str(db), admin_token=TOKEN, models_dir=str(tmp_path / "m")) as url:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        body = {"dataset": "qa", "backend": "local", "base_model": str(tiny)}
        for hyper, text in (({"lora_rnk": 8}, "not one the local backend knows"),
                            ({"lora_rank": 1.5}, "must be an integer"),
                            ({"n_epochs": 0}, "must be from 1 to 50"),
                            ({"beta": 0.1}, "beta is for --method dpo")):  # fmt: skip
            answer = httpx.post(url + "/admin/jobs", json=body | {"hyperparameters": hyper},
                                headers=headers)  # fmt: skip
            assert answer.status_code == 400, answer.text
            assert text in answer.json()["error"]["message"]


def test_a_job_started_by_the_cli_is_finished_by_a_server(start_proxy, db, tiny, tmp_path):
    """The CLI launches and exits; a server that never saw the process polls it to the end."""
    import httpx

    from tests._admin import TOKEN

    models = tmp_path / "models"
    job = ok_json(
        invoke(["train", "start", "--dataset", "qa", "--backend", "local", "--base-model",
                str(tiny), "--max-steps", "4", "--json", "--database", str(db),
                "--models-dir", str(models)])
    )  # fmt: skip
    settings = {"database": str(db), "admin_token": TOKEN, "models_dir": str(models),
                "train_poll_interval": "0.1"}  # fmt: skip
    with start_proxy(**settings) as url:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 120
        while True:
            answer = httpx.get(f"{url}/admin/jobs/{job['id']}", headers=headers).json()
            if answer["status"] == "succeeded":
                break
            assert answer["status"] in ("queued", "running") and time.monotonic() < deadline
            time.sleep(0.2)
    assert answer["fine_tuned_model"] == str((models / job["id"] / "merged").resolve())
    assert os.path.isdir(answer["fine_tuned_model"])
