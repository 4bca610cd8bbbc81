"""`stillroom train start|status|list|cancel|events`, on the database (the command calls the
provider itself) and through a running server's admin API; the key never printed."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from proxy.cli import cli
from tests._admin import TOKEN
from tests._training import PROVIDER_KEY, make_training_db, training_settings


@pytest.fixture
def db(start_proxy, mock_url, tmp_path):
    return make_training_db(start_proxy, mock_url, tmp_path / "captures.db")


def invoke(args, env=None):
    result = CliRunner().invoke(cli, args, env=env or {}, prog_name="stillroom")
    assert PROVIDER_KEY not in result.output
    assert TOKEN not in result.output
    assert "Traceback" not in result.output
    return result


def ok_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_local_start_status_events_list(db, mock_url):
    env = {"STILLROOM_TRAIN_BASE_URL": mock_url + "/v1", "STILLROOM_TRAIN_API_KEY": PROVIDER_KEY}
    where = ["--database", str(db)]
    job = ok_json(
        invoke(["train", "start", "--dataset", "qa", "--backend", "openai", "--base-model",
                "gpt-4o-mini", "--epochs", "2", "--suffix", "cli", "--json", *where], env)
    )  # fmt: skip
    assert job["id"].startswith("ftjob-") and job["provider"]["job_id"]
    assert job["status"] == "validating_files" and job["hyperparameters"] == {"n_epochs": 2}
    statuses = [
        ok_json(invoke(["train", "status", job["id"], "--json", *where], env))["status"]
        for _ in range(3)
    ]
    assert statuses == ["queued", "running", "succeeded"]
    text = invoke(["train", "status", job["id"], *where], env)
    assert "succeeded" in text.output and "ft:gpt-4o-mini:stillroom-mock:cli:" in text.output
    events = invoke(["train", "events", job["id"], *where], env)
    assert "status running → succeeded" in events.output
    page = ok_json(invoke(["train", "events", job["id"], "--json", "--limit", "1", *where], env))
    assert page["has_more"] and len(page["data"]) == 1
    listed = invoke(["train", "list", *where])
    assert job["id"] in listed.output and "succeeded" in listed.output
    assert PROVIDER_KEY.encode() not in db.read_bytes()


def test_local_flags_failure_and_cancel(db, mock_url):
    flags = ["--provider-url", mock_url + "/v1", "--provider-key", PROVIDER_KEY]
    where = ["--database", str(db)]
    tiny = ok_json(
        invoke(["train", "start", "--dataset", "tiny", "--backend", "openai",
                "--base-model", "gpt-4o-mini", "--json", *flags, *where])
    )  # fmt: skip
    failed = ok_json(invoke(["train", "status", tiny["id"], "--json", *flags, *where]))
    assert failed["status"] == "failed" and "at least 10 lines" in failed["error"]["message"]
    job = ok_json(invoke(["train", "start", "--dataset", "qa", "--backend", "openai",
                          "--base-model", "gpt-4o-mini", "--json", *flags, *where]))  # fmt: skip
    cancelled = invoke(["train", "cancel", job["id"], *flags, *where])
    assert cancelled.exit_code == 0 and f"cancelled {job['id']}" in cancelled.output
    again = invoke(["train", "cancel", job["id"], *flags, *where])
    assert again.exit_code == 1 and "nothing to cancel" in again.output
    # without the key the job is shown as stored, not polled
    shown = ok_json(invoke(["train", "status", tiny["id"], "--json", *where]))
    assert shown["status"] == "failed"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["start", "--dataset", "qa", "--backend", "local"], 2, "--base-model is required"),
        (["start", "--dataset", "qa", "--backend", "openai"], 1, "no fine-tuning provider"),
        (["start", "--dataset", "nope", "--backend", "openai", "--provider-url",
          "http://127.0.0.1:9/v1", "--provider-key", PROVIDER_KEY], 1, "no dataset named nope"),
        (["status", "not-a-job"], 2, "is not a job id"),
        (["status", "ftjob-" + "0" * 32], 1, "no training job"),
        (["start", "--dataset", "qa", "--backend", "openai", "--provider-url", "ftp://x"], 2,
         "--provider-url"),
    ],
)  # fmt: skip
def test_errors_are_one_line(db, args, code, message):
    result = invoke(["train", *args, "--database", str(db)])
    assert result.exit_code == code, result.output
    assert message in result.output and result.output.count("\n") == 1


def test_through_a_running_server(db, start_proxy, mock_url):
    settings = training_settings(mock_url, db)
    with start_proxy(**settings) as base:
        env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
        start = ["train", "start", "--dataset", "qa", "--backend", "openai", "--json"]
        job = ok_json(invoke([*start, "--base-model", "gpt-4o-mini", "--url", base], env))
        deadline = time.monotonic() + 10
        while (
            status := ok_json(invoke(["train", "status", job["id"], "--json", "--url", base], env))
        )["status"] != "succeeded":
            assert time.monotonic() < deadline, status
            time.sleep(0.02)
        assert job["id"] in invoke(["train", "list", "--url", base], env).output
        events = ok_json(invoke(["train", "events", job["id"], "--json", "--url", base], env))
        assert events["data"][0]["message"].startswith("created: sft of gpt-4o-mini")
        refused = invoke(["train", "status", job["id"], "--url", base, "--provider-key", "x"], env)
        assert refused.exit_code == 2 and "for --database" in refused.output
        missing = invoke(["train", "status", "ftjob-" + "0" * 32, "--url", base], env)
        assert missing.exit_code == 1 and "no training job" in missing.output
