"""`stillroom mock`'s Files and fine-tuning endpoints, through the official SDK: upload, create,
the walk through every status, events, list, cancel, and OpenAI's errors."""

from __future__ import annotations

import io
import json

import openai
import pytest

LINE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def jsonl(lines: int) -> io.BytesIO:
    data = "".join(json.dumps(LINE) + "\n" for _ in range(lines)).encode()
    return io.BytesIO(data)


@pytest.fixture
def client(mock_url):
    with openai.OpenAI(base_url=mock_url + "/v1", api_key="sk-mock", max_retries=0) as client:
        yield client


def upload(client, lines: int, name: str = "train.jsonl"):
    return client.files.create(file=(name, jsonl(lines)), purpose="fine-tune")


def test_upload_and_retrieve_a_file(client):
    uploaded = upload(client, 12)
    assert uploaded.id.startswith("file-") and uploaded.purpose == "fine-tune"
    assert uploaded.bytes == len(jsonl(12).getvalue()) and uploaded.filename == "train.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert uploaded.id in [f.id for f in client.files.list().data]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    with pytest.raises(openai.BadRequestError, match="Must be .jsonl"):
        client.files.create(file=("train.txt", jsonl(12)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("train.jsonl", jsonl(12)), purpose="nonsense")  # type: ignore[arg-type]


def test_a_job_walks_through_every_status(client):
    train, validation = upload(client, 12), upload(client, 3, "val.jsonl")
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=train.id,
        validation_file=validation.id,
        suffix="walk",
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        metadata={"k": "v"},
    )
    assert job.status == "validating_files" and job.fine_tuned_model is None
    statuses = [client.fine_tuning.jobs.retrieve(job.id).status for _ in range(4)]
    assert statuses == ["queued", "running", "succeeded", "succeeded"]
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model == f"ft:gpt-4o-mini:stillroom-mock:walk:{job.id[6:14]}"
    assert done.finished_at is not None and done.trained_tokens == 1200 and done.seed == 3
    assert done.hyperparameters.n_epochs == 2
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in reversed(events)]  # newest first, as OpenAI lists them
    assert messages[0].startswith("Validating training file")
    assert messages[-1] == "The job has successfully completed"
    assert any(e.type == "metrics" and e.data["train_loss"] for e in events)
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    with pytest.raises(openai.BadRequestError, match="already completed"):
        client.fine_tuning.jobs.cancel(job.id)


def test_too_few_lines_fail_with_openais_error(client):
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, 3).id)
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed"
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert failed.error.message.endswith("at least 10 lines, but got 3.")


def test_the_fail_suffix_fails_while_running(client):
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=upload(client, 10).id, suffix="mock-fail"
    )
    statuses = [client.fine_tuning.jobs.retrieve(job.id).status for _ in range(3)]
    assert statuses == ["queued", "running", "failed"]
    assert client.fine_tuning.jobs.retrieve(job.id).error.code == "server_error"


def test_cancel(client):
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload(client, 10).id)
    client.fine_tuning.jobs.retrieve(job.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_create_refusals(client):
    train = upload(client, 10)
    with pytest.raises(openai.BadRequestError) as bad_model:
        client.fine_tuning.jobs.create(model="text-embedding-3-small", training_file=train.id)
    assert bad_model.value.code == "model_not_available"
    with pytest.raises(openai.BadRequestError) as bad_file:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-unknown")
    assert bad_file.value.code == "invalid_training_file"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-unknown")
