"""`/admin/jobs` on a running `stillroom serve` whose fine-tuning provider is `stillroom mock`:
the lifespan's runner launches and polls the job to the end; errors are OpenAI-shaped; the
provider key never reaches the database files or the log."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests._admin import AUTH, TOKEN
from tests._training import PROVIDER_KEY, make_training_db, training_settings


@pytest.fixture
def db(start_proxy, mock_url, tmp_path):
    return make_training_db(start_proxy, mock_url, tmp_path / "captures.db")


def serve(start_proxy, mock_url, db, **extra):
    return start_proxy(**training_settings(mock_url, db, **extra))


def wait_for(http, job_id, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/admin/jobs/{job_id}").json()
        if predicate(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def test_a_job_trains_to_the_end_in_the_background(db, start_proxy, mock_url, caplog):
    caplog.set_level(logging.DEBUG)
    with (
        serve(start_proxy, mock_url, db) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        created = http.post(
            "/admin/jobs",
            json={"dataset": "qa", "base_model": "gpt-4o-mini", "suffix": "api",
                  "hyperparameters": {"n_epochs": 1}},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["object"] == "training.job" and job["status"] == "validating_files"
        assert job["provider"]["url"] == mock_url + "/v1"
        done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded")
        assert done["fine_tuned_model"].startswith("ft:gpt-4o-mini:stillroom-mock:api:")
        first = http.get(f"/admin/jobs/{job['id']}/events", params={"limit": 2}).json()
        assert len(first["data"]) == 2 and first["has_more"]
        rest = http.get(f"/admin/jobs/{job['id']}/events", params={"after": first["last_id"]})
        assert rest.json()["data"][0]["id"] > first["last_id"]
        listed = http.get("/admin/jobs").json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]
        conflict = http.post(f"/admin/jobs/{job['id']}/cancel")
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "job_finished"
    for path in db.parent.iterdir():
        if path.is_file():
            assert PROVIDER_KEY.encode() not in path.read_bytes(), path
    assert PROVIDER_KEY not in caplog.text


def test_cancel_and_failure_through_the_api(db, start_proxy, mock_url):
    slow = {"train_poll_interval": 60}  # one pass at creation, then none during the test
    with (
        serve(start_proxy, mock_url, db, **slow) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        job = http.post("/admin/jobs", json={"dataset": "qa", "base_model": "gpt-4o-mini"}).json()
        launched = wait_for(http, job["id"], lambda j: j["provider"]["job_id"] is not None)
        cancelled = http.post(f"/admin/jobs/{launched['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        tiny = http.post("/admin/jobs", json={"dataset": "tiny", "base_model": "nope"}).json()
        failed = wait_for(http, tiny["id"], lambda j: j["status"] == "failed")
        assert failed["error"]["code"] == "model_not_available"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"dataset": "missing"}, 404, "not_found"),
        ({"dataset": "qa", "backend": "local"}, 400, "base_model_not_found"),
        ({"dataset": "qa", "method": "rl"}, 400, "invalid_request"),
        ({"dataset": "qa", "hyperparameters": {"n_epochs": [1]}}, 400, "invalid_request"),
        ({"dataset": "qa", "extra": 1}, 400, "invalid_request"),
    ],
)
def test_bad_requests(db, start_proxy, mock_url, body, status, code):
    with (
        serve(start_proxy, mock_url, db) as base,
        httpx.Client(base_url=base, headers=AUTH) as http,
    ):
        answer = http.post("/admin/jobs", json=body)
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] == code
        assert http.get("/admin/jobs/ftjob-" + "a" * 32).status_code == 404
        assert http.get("/admin/jobs/not-a-job").status_code == 404
        assert http.get("/admin/jobs", params={"limit": 0}).status_code == 400


def test_no_provider_configured(db, start_proxy, mock_url):
    with start_proxy(upstream=mock_url, database=str(db), admin_token=TOKEN) as base:
        answer = httpx.post(f"{base}/admin/jobs", json={"dataset": "qa"}, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "provider_not_configured"
