"""The OpenAI-compatible backend and the runner, end to end against a real `stillroom mock`:
real captures → dataset → job → every status, with events and the fine-tuned model recorded;
failure with the provider's message, cancel, a 500 while polling retried, a restart resumed."""

from __future__ import annotations

import logging

import httpx
import pytest

from proxy.training.base import TransientError
from proxy.training.openai_compatible import OpenAICompatibleBackend
from proxy.training.runner import JobRefused, JobRunner, ProviderConfig
from storage.jobs import JobSpec
from storage.sqlite import SQLiteStore
from tests._training import PROVIDER_KEY, make_training_db

pytestmark = pytest.mark.anyio


@pytest.fixture
def db(start_proxy, mock_url, tmp_path):
    return make_training_db(start_proxy, mock_url, tmp_path / "captures.db")


def runner_for(store, mock_url, **kwargs):
    config = ProviderConfig(mock_url + "/v1", PROVIDER_KEY)
    return JobRunner(store, config, poll_interval=0.01, **kwargs)


async def walk(runner, job_id, passes=10):
    for _ in range(passes):
        job = await runner.refresh(job_id)
        if job.is_terminal:
            return job
    return job


async def test_a_job_walks_to_succeeded_with_events_and_a_model(db, mock_url):
    async with SQLiteStore(db) as store:
        runner = runner_for(store, mock_url)
        job = await runner.create(
            JobSpec("qa", base_model="gpt-4o-mini", suffix="qa-v1", seed=7,
                    hyperparameters={"n_epochs": 2})
        )  # fmt: skip
        assert job.status == "validating_files" and job.provider_job_id is None
        launched = await runner.refresh(job.id)
        assert launched.provider_job_id.startswith("ftjob-")
        assert set(launched.provider_files) == {"train", "validation"}
        seen = [launched.status]
        while not (current := await runner.refresh(job.id)).is_terminal:
            seen.append(current.status)
        seen.append(current.status)
        assert seen == ["validating_files", "queued", "running", "succeeded"]
        assert current.fine_tuned_model == (
            f"ft:gpt-4o-mini:stillroom-mock:qa-v1:{current.provider_job_id[6:14]}"
        )
        assert current.finished_at is not None and current.error is None
        events, more = await store.job_events(job.id)
        messages = [e.message for e in events]
        assert not more
        assert messages[0].startswith("created: sft of gpt-4o-mini on dataset qa")
        assert any("Step 3/3" in m for m in messages)
        assert "status running → succeeded" in messages
        assert messages[-1] == "The job has successfully completed" or any(
            m.startswith("fine-tuned model: ft:") for m in messages
        )
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        # polling again records no event twice
        assert (await runner.refresh(job.id)).status == "succeeded"
        assert len((await store.job_events(job.id))[0]) == len(events)
        # the provider got what was asked for
        async with httpx.AsyncClient() as http:
            remote = (
                await http.get(f"{mock_url}/v1/fine_tuning/jobs/{current.provider_job_id}")
            ).json()
        assert remote["method"] == {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2}},
        }
        assert remote["seed"] == 7 and remote["metadata"]["stillroom_job"] == job.id
        assert remote["metadata"]["stillroom_dataset_hash"] == job.dataset_hash
        await runner.aclose()


async def test_too_few_examples_fail_with_the_providers_message(db, mock_url):
    async with SQLiteStore(db) as store:
        runner = runner_for(store, mock_url)
        job = await walk(
            runner, (await runner.create(JobSpec("tiny", base_model="gpt-4o-mini"))).id
        )
        assert job.status == "failed"
        assert job.error.code == "invalid_training_file"
        assert "Expected file to have at least 10 lines" in job.error.message
        events, _ = await store.job_events(job.id)
        assert any(e.level == "error" and "at least 10 lines" in e.message for e in events)
        await runner.aclose()


async def test_a_refused_create_fails_the_job(db, mock_url):
    async with SQLiteStore(db) as store:
        runner = runner_for(store, mock_url)
        job = await walk(
            runner, (await runner.create(JobSpec("qa", base_model="no-such-model"))).id
        )
        assert job.status == "failed" and job.provider_job_id is None
        assert job.error.code == "model_not_available"
        assert (
            job.error.message
            == "Model no-such-model is not available for fine-tuning or does not exist."
        )
        await runner.aclose()


async def test_cancel_before_and_after_launch(db, mock_url):
    async with SQLiteStore(db) as store:
        runner = runner_for(store, mock_url)
        early = await runner.create(JobSpec("qa", base_model="gpt-4o-mini"))
        cancelled = await runner.cancel(early.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert (await runner.refresh(early.id)).status == "cancelled"  # never launched
        late = await runner.create(JobSpec("qa", base_model="gpt-4o-mini"))
        launched = await runner.refresh(late.id)
        assert (await runner.cancel(late.id)).status == "cancelled"
        async with httpx.AsyncClient() as http:
            remote = (
                await http.get(f"{mock_url}/v1/fine_tuning/jobs/{launched.provider_job_id}")
            ).json()
        assert remote["status"] == "cancelled"
        with pytest.raises(JobRefused) as refused:
            await runner.cancel(late.id)
        assert refused.value.code == "job_finished"
        assert await runner.cancel("ftjob-" + "0" * 32) is None
        await runner.aclose()


class FlakyPolls(httpx.AsyncBaseTransport):
    """A real transport that answers the first ``failures`` job retrieves with a 500."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failures = failures
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if (
            request.method == "GET"
            and path.startswith("/v1/fine_tuning/jobs/")
            and not path.endswith("/events")
        ):
            if self.refused < self.failures:
                self.refused += 1
                error = {
                    "error": {
                        "message": "The server had an error",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
                return httpx.Response(500, json=error)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_provider_500_while_polling_is_retried(db, mock_url, caplog):
    flaky = FlakyPolls(failures=2)

    def make(backend, url):
        return OpenAICompatibleBackend(url, PROVIDER_KEY, transport=flaky)

    async with SQLiteStore(db) as store:
        runner = runner_for(store, mock_url, make_backend=make)
        job = await runner.create(JobSpec("qa", base_model="gpt-4o-mini"))
        await runner.refresh(job.id)  # launched
        with pytest.raises(TransientError):
            await runner.refresh(job.id)
        with caplog.at_level(logging.WARNING, "stillroom.training"):
            for _ in range(200):
                await runner.run_once()
                current = await store.get_job(job.id)
                if current.is_terminal:
                    break
        assert current.status == "succeeded" and flaky.refused == 2
        events, _ = await store.job_events(job.id)
        assert sum("provider unavailable, retrying" in e.message for e in events) == 1
        assert PROVIDER_KEY not in caplog.text
        await runner.aclose()


async def test_a_new_runner_resumes_polling(db, mock_url):
    async with SQLiteStore(db) as store:
        first = runner_for(store, mock_url)
        job = await first.create(JobSpec("qa", base_model="gpt-4o-mini"))
        first.start()
        while (await store.get_job(job.id)).status == "validating_files":
            await anyio_sleep()
        await first.stop()
    async with SQLiteStore(db) as store:  # "the server restarted"
        second = runner_for(store, mock_url)
        second.start()
        while not (current := await store.get_job(job.id)).is_terminal:
            await anyio_sleep()
        await second.stop()
        assert current.status == "succeeded" and current.fine_tuned_model


async def anyio_sleep():
    import asyncio

    await asyncio.sleep(0.01)


async def test_jobs_are_refused_up_front(db, mock_url):
    async with SQLiteStore(db) as store:
        runner = runner_for(store, mock_url)
        with pytest.raises(JobRefused) as missing:
            await runner.create(JobSpec("nope"))
        assert missing.value.code == "dataset_not_found"
        with pytest.raises(JobRefused) as local:
            await runner.create(JobSpec("qa", backend="local"))
        assert local.value.code == "base_model_not_found"  # gpt-4o-mini is no local model
        bare = JobRunner(store, ProviderConfig())
        with pytest.raises(JobRefused) as unconfigured:
            await bare.create(JobSpec("qa"))
        assert unconfigured.value.code == "provider_not_configured"
        listed, _ = await store.list_jobs()
        assert listed == []
