"""The OpenAI-compatible backend's error mapping (recorded provider answers, no network), the
job request's checks, the runner's launch failures, and the job store on SQLite and Postgres."""

from __future__ import annotations

import anyio
import httpx
import pytest

from proxy.training.base import BackendUnavailable, ProviderRefused, TrainingFiles, TransientError
from proxy.training.openai_compatible import OpenAICompatibleBackend
from proxy.training.runner import JobRunner, ProviderConfig
from storage.errors import StoreError
from storage.jobs import (
    Job,
    JobError,
    JobSpec,
    JobSpecError,
    JobUpdate,
    NewJobEvent,
    parse_job_spec,
)
from storage.sqlite import SQLiteStore
from tests._training import PROVIDER_KEY, make_training_db
from tests.conftest import is_postgres

pytestmark = pytest.mark.anyio

# OpenAI's answer to a wrong key quotes part of it (recorded shape, key replaced).
WRONG_KEY = {
    "error": {
        "message": f"Incorrect API key provided: {PROVIDER_KEY[:8]}*****{PROVIDER_KEY[-4:]}. "
        "You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


def job(**overrides) -> Job:
    fields = dict(
        id="ftjob-" + "1" * 32, backend="openai", status="running", dataset="qa",
        dataset_hash="ab" * 32, base_model="gpt-4o-mini", method="sft", hyperparameters={},
        created_at=1.0, updated_at=1.0, provider_url="http://provider/v1",
        provider_job_id="ftjob-remote",
    )  # fmt: skip
    return Job(**{**fields, **overrides})


def backend(handler) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(
        "http://provider/v1", PROVIDER_KEY, transport=httpx.MockTransport(handler)
    )


async def test_a_refusal_keeps_the_providers_error_without_the_key():
    b = backend(lambda request: httpx.Response(401, json=WRONG_KEY))
    with pytest.raises(ProviderRefused) as refused:
        await b.poll(job())
    assert refused.value.error.code == "invalid_api_key"
    assert refused.value.error.message.startswith("Incorrect API key provided: ***")
    assert PROVIDER_KEY[:8] not in refused.value.error.message
    assert PROVIDER_KEY not in repr(b)
    await b.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(429, json={"error": {"message": "slow down"}}),
        httpx.Response(200, text="not json"),
    ],
)
async def test_transient_answers(answer):
    b = backend(lambda request: answer)
    with pytest.raises(TransientError):
        await b.poll(job())
    await b.aclose()


async def test_connection_errors_are_transient_and_the_key_only_in_the_header():
    seen = []

    def refuse(request):
        seen.append(request)
        raise httpx.ConnectError("connection refused")

    b = backend(refuse)
    with pytest.raises(TransientError, match="connection refused"):
        await b.cancel(job())
    assert seen[0].headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert PROVIDER_KEY not in str(seen[0].url)
    await b.aclose()


async def test_a_non_openai_error_body(tmp_path):
    b = backend(lambda request: httpx.Response(400, text="nope"))
    train = tmp_path / "t.jsonl"
    train.write_text("{}\n")
    with pytest.raises(ProviderRefused) as refused:
        await b.launch(job(provider_job_id=None), TrainingFiles(train))
    assert refused.value.error.code == "http_400"
    await b.aclose()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({}, "dataset"),
        ({"dataset": "Bad Name"}, "dataset"),
        ({"dataset": "qa", "backend": "x"}, "backend"),
        ({"dataset": "qa", "base_model": ""}, "base_model"),
        ({"dataset": "qa", "suffix": "a\nb"}, "suffix"),
        ({"dataset": "qa", "seed": -1}, "seed"),
        ({"dataset": "qa", "seed": True}, "seed"),
        ({"dataset": "qa", "hyperparameters": []}, "hyperparameters"),
        ({"dataset": "qa", "hyperparameters": {"": 1}}, "hyperparameters"),
        ({"dataset": "qa", "hyperparameters": {"n": None}}, "hyperparameters"),
    ],
)
def test_job_spec_refusals(body, param):
    with pytest.raises(JobSpecError) as refused:
        parse_job_spec(body)
    assert refused.value.param == param


def test_job_spec_defaults():
    spec = parse_job_spec({"dataset": "qa", "hyperparameters": {"n_epochs": "auto", "b": 1.5}})
    assert spec == JobSpec("qa", hyperparameters={"n_epochs": "auto", "b": 1.5})


@pytest.fixture
def db(start_proxy, mock_url, tmp_path):
    return make_training_db(start_proxy, mock_url, tmp_path / "captures.db")


async def test_launch_gives_up_after_repeated_transient_failures(db):
    def down(request):
        raise httpx.ConnectError("down")

    def make(name, url):
        return OpenAICompatibleBackend(url, PROVIDER_KEY, transport=httpx.MockTransport(down))

    async with SQLiteStore(db) as store:
        config = ProviderConfig("http://provider/v1", PROVIDER_KEY)
        runner = JobRunner(store, config, poll_interval=0.0, launch_attempts=3, make_backend=make)
        created = await runner.create(JobSpec("qa"))
        for _ in range(3):
            await runner.run_once()
        failed = await store.get_job(created.id)
        assert failed.status == "failed" and failed.error.code == "provider_unavailable"
        await runner.aclose()


async def test_a_dataset_replaced_since_fails_the_job(db):
    async with SQLiteStore(db) as store:
        runner = JobRunner(store, ProviderConfig("http://provider/v1", PROVIDER_KEY))
        created = await runner.create(JobSpec("qa"))
        assert await store.delete_dataset("qa")
        failed = await runner.refresh(created.id)
        assert failed.status == "failed" and failed.error.code == "dataset_changed"
        other = JobRunner(store, ProviderConfig("http://elsewhere/v1", PROVIDER_KEY))
        tiny = await runner.create(JobSpec("tiny"))
        with pytest.raises(BackendUnavailable, match="the job lives at http://provider/v1"):
            await other.refresh(tiny.id)  # the key is never sent to another provider's job
        await runner.aclose()


# -- the job store, on both backends (the `store` fixture: SQLite and Postgres) ------------------


def job_id(n: int) -> str:
    return f"ftjob-{n:032x}"


async def test_jobs_round_trip_and_list_newest_first(store):
    full = job(
        id=job_id(1), status="validating_files", hyperparameters={"n_epochs": 2, "lr": 0.5},
        suffix="qa-v1", seed=7, provider_files={"train": "file-1"},
        error=JobError("too few lines", "invalid_training_file", "training_file"),
        created_at=1_700_000_000.25, updated_at=1_700_000_000.5,
    )  # fmt: skip
    await store.create_job(full)
    assert await store.get_job(full.id) == full
    assert await store.get_job(job_id(99)) is None
    bare = job(id=job_id(2), provider_url=None, provider_job_id=None)
    await store.create_job(bare)
    assert await store.get_job(bare.id) == bare
    with pytest.raises(StoreError):
        await store.create_job(bare)  # the id is taken
    for n, status in ((3, "succeeded"), (4, "queued"), (5, "cancelled")):
        await store.create_job(job(id=job_id(n), status=status))
    listed, more = await store.list_jobs()
    assert [j.id for j in listed] == [job_id(n) for n in (5, 4, 3, 2, 1)] and not more
    page, more = await store.list_jobs(limit=2)
    assert [j.id for j in page] == [job_id(5), job_id(4)] and more
    page, more = await store.list_jobs(after=job_id(4), limit=2)
    assert [j.id for j in page] == [job_id(3), job_id(2)] and more
    page, more = await store.list_jobs(after=job_id(2), limit=2)
    assert [j.id for j in page] == [job_id(1)] and not more
    active, more = await store.list_jobs(active=True)
    assert [j.id for j in active] == [job_id(4), job_id(2), job_id(1)] and not more
    assert await store.list_jobs(active=True, after=job_id(2)) == ([full], False)


async def test_update_job_and_a_finished_status_never_changes(store):
    assert await store.update_job(job_id(1), JobUpdate(status="running")) is None
    await store.create_job(job(id=job_id(1), status="validating_files", provider_job_id=None))
    launched = await store.update_job(
        job_id(1),
        JobUpdate(status="queued", provider_job_id="ftjob-remote", provider_files={"train": "f"}),
    )
    assert launched.status == "queued" and launched.provider_job_id == "ftjob-remote"
    assert launched.provider_files == {"train": "f"} and launched.finished_at is None
    assert launched.updated_at > 1.0 and launched.base_model == "gpt-4o-mini"
    done = await store.update_job(job_id(1), JobUpdate(status="cancelled"))
    assert done.status == "cancelled" and done.finished_at is not None
    # a late poll cannot undo a cancel, nor change anything else in the same update
    late = await store.update_job(job_id(1), JobUpdate(status="succeeded", fine_tuned_model="ft:x"))
    assert late == done and await store.get_job(job_id(1)) == done
    # the same status again may fill in fields; finished_at stays the first one
    again = await store.update_job(
        job_id(1), JobUpdate(status="cancelled", error=JobError("stopped", "cancelled"))
    )
    assert again.status == "cancelled" and again.finished_at == done.finished_at
    assert again.error == JobError("stopped", "cancelled")
    assert (await store.list_jobs(active=True)) == ([], False)


async def test_events_dedupe_by_source_id_and_page_by_seq(store):
    await store.create_job(job(id=job_id(1)))
    await store.create_job(job(id=job_id(2)))
    assert await store.add_job_events(job_id(1), []) == 0
    first = [
        NewJobEvent("created", data={"dataset": "qa"}, created_at=5.0),
        NewJobEvent("Step 1/3", source_id="ev-1"),
        NewJobEvent("Step 2/3", level="warn", source_id="ev-2"),
    ]
    assert await store.add_job_events(job_id(1), first) == 3
    assert await store.add_job_events(job_id(2), [NewJobEvent("other", source_id="ev-1")]) == 1
    # the provider's events polled again: only the new one is recorded
    again = [
        NewJobEvent("Step 1/3", source_id="ev-1"),
        NewJobEvent("Step 2/3", source_id="ev-2"),
        NewJobEvent("Step 3/3", source_id="ev-3"),
        NewJobEvent("Step 3/3", source_id="ev-3"),
        NewJobEvent("no source id: always recorded"),
    ]
    assert await store.add_job_events(job_id(1), again) == 2
    events, more = await store.job_events(job_id(1))
    assert not more
    assert [e.message for e in events] == [
        "created", "Step 1/3", "Step 2/3", "Step 3/3", "no source id: always recorded",
    ]  # fmt: skip
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert all(e.job_id == job_id(1) for e in events)
    assert events[0].created_at == 5.0 and events[0].data == {"dataset": "qa"}
    assert events[1].data is None and events[1].created_at > 1_700_000_000
    assert events[2].level == "warn" and events[0].level == "info"
    page, more = await store.job_events(job_id(1), limit=2)
    assert page == events[:2] and more
    page, more = await store.job_events(job_id(1), after=page[-1].seq, limit=2)
    assert page == events[2:4] and more
    page, more = await store.job_events(job_id(1), after=page[-1].seq, limit=2)
    assert page == events[4:] and not more
    assert await store.job_events(job_id(1), after=events[-1].seq) == ([], False)
    assert [e.message for e in (await store.job_events(job_id(2)))[0]] == ["other"]
    assert await store.job_events(job_id(99)) == ([], False)
    with pytest.raises(StoreError):
        await store.add_job_events(job_id(99), [NewJobEvent("no such job")])


async def test_jobs_are_counted_by_backend_and_status(store):
    assert await store.count_jobs() == {}
    jobs = [("openai", "running"), ("openai", "running"), ("local", "queued"), ("openai", "paused")]
    for n, (backend, status) in enumerate(jobs, 1):
        await store.create_job(job(id=job_id(n), backend=backend, status=status))
    await store.update_job(job_id(1), JobUpdate(status="succeeded"))
    assert await store.count_jobs() == {
        ("openai", "running"): 1,
        ("openai", "succeeded"): 1,
        ("local", "queued"): 1,
        ("openai", "paused"): 1,  # a provider's own status, as given
    }


async def test_concurrent_event_writers_record_each_source_once(store):
    await store.create_job(job(id=job_id(1)))

    async def poll(worker: int) -> None:
        for start in range(0, 30, 5):
            batch = [
                NewJobEvent(f"event {n}", source_id=f"ev-{n}") for n in range(start, start + 5)
            ]
            await store.add_job_events(job_id(1), [*batch, NewJobEvent(f"worker {worker}")])

    async with anyio.create_task_group() as tg:
        for worker in range(4):
            tg.start_soon(poll, worker)
    events, _ = await store.job_events(job_id(1), limit=1000)
    sourced = [e.message for e in events if e.message.startswith("event ")]
    assert sorted(sourced) == sorted(f"event {n}" for n in range(30))
    assert sum(e.message.startswith("worker ") for e in events) == 4 * 6
    assert [e.seq for e in events] == sorted({e.seq for e in events})


async def test_a_nul_in_a_providers_text_is_stored(store):
    await store.create_job(job(id=job_id(1), status="queued"))
    assert await store.add_job_events(job_id(1), [NewJobEvent("bad\x00byte", data={"a": "\x00"})])
    updated = await store.update_job(job_id(1), JobUpdate(fine_tuned_model="ft:a\x00b"))
    (event,), _ = await store.job_events(job_id(1))
    replacement = "\ufffd" if is_postgres(store) else "\x00"
    assert event.message == f"bad{replacement}byte" and event.data == {"a": "\x00"}
    assert updated.fine_tuned_model == f"ft:a{replacement}b"
