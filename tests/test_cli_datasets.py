"""`stillroom datasets create|list|show|export|validate|delete` on a database of real captures
(made through the proxy with the official SDK) and against a live server's admin API: the same
output and the same export files either way, one-line errors, the admin token never printed."""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest
from click.testing import CliRunner

import proxy.admin.datasets
import proxy.cli_datasets
from proxy.cli import cli
from tests._admin import make_captures

TOKEN = "cli-datasets-admin-token-0123456789abcdef"
QUESTIONS = [f"Question {word}: what is a {word}?" for word in "abcdefghijkl"]


@pytest.fixture
def db(start_proxy, mock_url, tmp_path):
    """A database of real captures: ``make_captures``' eight, and twelve ``task=qa`` chats."""
    path = tmp_path / "captures.db"
    settings = {"database": str(path), "admin_token": TOKEN, "flush_interval": 0.02}
    with start_proxy(upstream=mock_url, **settings) as base:
        make_captures(base)
        tags = {"X-Stillroom-Tags": "task=qa"}
        with openai.OpenAI(
            base_url=base + "/v1", api_key="sk-cli", max_retries=0, default_headers=tags
        ) as client:
            for question in QUESTIONS:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
                )
    return path  # the proxy has stopped: every capture is written


@pytest.fixture
def served(db, start_proxy, mock_url):
    with start_proxy(upstream=mock_url, database=str(db), admin_token=TOKEN) as base:
        yield base


def invoke(args, env=None, input=None):
    result = CliRunner().invoke(cli, args, env=env or {}, input=input, prog_name="stillroom")
    assert TOKEN not in result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture(params=["local", "remote"])
def run(request, db):
    if request.param == "local":
        extra, env = ["--database", str(db)], {}
    else:
        extra, env = ["--url", request.getfixturevalue("served")], {"STILLROOM_ADMIN_TOKEN": TOKEN}

    def go(*args, input=None):
        return invoke([*args, *extra], env=env, input=input)

    go.mode = request.param
    return go


def ok_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- create, list, show --------------------------------------------------------------------------


def test_create_list_show(run):
    created = ok_json(run("datasets", "create", "qa-v1", "--tag", "task=qa", "--json"))
    assert created["object"] == "dataset" and created["name"] == "qa-v1"
    assert created["spec"]["filter"] == {"tag": ["task:qa"]}
    assert created["considered"] == 12 and sum(created["counts"].values()) == 12
    assert ok_json(run("datasets", "show", "qa-v1", "--json")) == created
    listed = ok_json(run("datasets", "list", "--json"))
    assert listed == {"object": "list", "data": [created]}

    text = run("datasets", "show", "qa-v1")
    assert text.exit_code == 0, text.output
    out = text.stdout
    assert out.startswith("dataset qa-v1")
    assert "filter        tag=task:qa" in out
    assert "SPLIT" in out and "COST/EPOCH" in out and "train" in out and "holdout" in out
    assert "left out      0 captures" in out and "leakage" in out
    table = run("datasets", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "CREATED", "(UTC)"]
    assert table[1].startswith("qa-v1 ")


def test_create_prints_what_was_left_out_and_why(run):
    result = run(
        "datasets", "create", "summaries", "--tag", "task:summarize", "--validation", "0",
        "--holdout", "0", "--dedupe", "near", "--max-tokens", "4096",
        "--price-per-million", "25",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "left out      1 captures" in out and "not_completed" in out
    assert "dedupe near" in out and "$25.00 per 1M tokens" in out and "4,096 tokens" in out
    assert ok_json(run("datasets", "show", "summaries", "--json"))["counts"]["train"] == 2


def test_same_inputs_same_snapshot_and_a_taken_name(run):
    first = ok_json(run("datasets", "create", "one", "--where", "tag=task:qa", "--json"))
    second = ok_json(run("datasets", "create", "two", "--tag", "task:qa", "--json"))
    assert first["content_hash"] == second["content_hash"]
    assert first["counts"] == second["counts"]
    taken = run("datasets", "create", "one", "--tag", "task:qa")
    assert "a dataset named one exists already" in one_error_line(taken, 1)


def test_nothing_yet(run):
    assert run("datasets", "list").stdout.strip() == "no datasets"
    missing = run("datasets", "show", "nope")
    assert one_error_line(missing, 1) == "Error: no dataset nope"
    gone = run("datasets", "export", "nope", "--out", "x.jsonl")
    assert one_error_line(gone, 1) == "Error: no dataset nope"


# -- export --------------------------------------------------------------------------------------


def test_local_and_remote_exports_are_the_same_files(db, served, tmp_path):
    env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
    local, remote = ["--database", str(db)], ["--url", served]
    invoke(["datasets", "create", "all", "--validation", "0.2", *local])
    for fmt in ("openai-chat", "openai-dpo", "hf", "hf-prompt-completion"):
        for split in ("train", "validation"):
            files = []
            for where in (local, remote):
                out = tmp_path / f"{where[0][2:]}-{fmt}-{split}.jsonl"
                args = ["datasets", "export", "all", "--format", fmt, "--split", split]
                result = invoke([*args, "--out", str(out), *where], env)
                assert result.exit_code == 0, result.output
                assert result.stdout == f"wrote {out}\nmanifest: {out}.manifest.json\n"
                manifest = json.loads((tmp_path / f"{out.name}.manifest.json").read_text())
                files.append((out.read_bytes(), manifest))
            (local_bytes, local_manifest), (remote_bytes, remote_manifest) = files
            assert local_bytes == remote_bytes
            for manifest in (local_manifest, remote_manifest):
                assert manifest["file"]["name"].endswith(f"-{fmt}-{split}.jsonl")
                manifest.pop("created_at"), manifest["file"].pop("name")
            assert local_manifest == remote_manifest
            assert local_manifest["format"] == fmt and local_manifest["split"] == split
    assert not list(tmp_path.glob(".*part"))


def test_export_json_names_the_files(run, tmp_path):
    run("datasets", "create", "qa", "--tag", "task=qa")
    out = tmp_path / "qa.jsonl"
    result = ok_json(run("datasets", "export", "qa", "--out", str(out), "--json"))
    assert result["object"] == "dataset.export" and result["name"] == "qa"
    assert (result["format"], result["split"]) == ("openai-chat", "train")
    assert result["path"] == str(out) and result["manifest_path"] == f"{out}.manifest.json"
    assert result["manifest"]["lines"] == len(out.read_bytes().splitlines())
    assert result["manifest"]["dataset"] == "qa"


def test_a_changed_dataset_is_not_exported(run, db, tmp_path):
    run("datasets", "create", "all", "--validation", "0")
    capture = ok_json(invoke(["captures", "list", "--json", "--database", str(db)]))["data"][0]
    assert (
        invoke(["captures", "delete", capture["id"], "--yes", "--database", str(db)]).exit_code == 0
    )
    out = tmp_path / "all.jsonl"
    result = run("datasets", "export", "all", "--out", str(out))
    assert "no longer matches its captures" in one_error_line(result, 1)
    assert not out.exists() and not list(tmp_path.glob("*all.jsonl*"))


def test_a_stream_cut_short_writes_nothing(db, served, tmp_path, monkeypatch):
    env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
    invoke(["datasets", "create", "all", "--validation", "0", "--database", str(db)])
    first = ok_json(invoke(["captures", "list", "--json", "--database", str(db)]))["data"][0]
    invoke(["captures", "delete", first["id"], "--yes", "--database", str(db)])
    monkeypatch.setattr(proxy.admin.datasets, "PREFETCH_BYTES", 1)
    out = tmp_path / "all.jsonl"
    result = invoke(["datasets", "export", "all", "--out", str(out), "--url", served], env)
    assert "was cut short" in one_error_line(result, 1)
    assert not list(tmp_path.glob("*all.jsonl*"))


def test_parquet_is_local_only(db, served, tmp_path):
    invoke(["datasets", "create", "qa", "--tag", "task=qa", "--database", str(db)])
    out = tmp_path / "qa.parquet"
    args = ["datasets", "export", "qa", "--format", "hf", "--out", str(out)]
    local = invoke([*args, "--database", str(db)])
    assert local.exit_code == 0, local.output
    assert out.read_bytes()[:4] == b"PAR1"
    assert (
        json.loads(out.with_name("qa.parquet.manifest.json").read_text())["file"]["encoding"]
        == "parquet"
    )
    remote = invoke([*args, "--url", served], {"STILLROOM_ADMIN_TOKEN": TOKEN})
    assert "Parquet is written by a local export" in one_error_line(remote, 2)
    chat = invoke(
        ["datasets", "export", "qa", "--format", "openai-chat", "--out", str(out)]
        + ["--database", str(db)]
    )
    assert "JSONL only" in one_error_line(chat, 2)


def test_worker_processes_on_the_database_file(db, served, tmp_path):
    local = ["--database", str(db)]
    for name, workers in (("one", []), ("two", ["--workers", "2"])):
        result = invoke(["datasets", "create", name, "--validation", "0.3", *local, *workers])
        assert result.exit_code == 0, result.output
    files = []
    for name, workers in (("one", ["--workers", "1"]), ("two", ["--workers", "3"])):
        out = tmp_path / f"{name}.jsonl"
        result = invoke(["datasets", "export", name, "--out", str(out), *local, *workers])
        assert result.exit_code == 0, result.output
        files.append(out.read_bytes())
    assert files[0] == files[1] != b""
    env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
    remote = ["--url", served, "--workers", "2"]
    for args in (["datasets", "create", "three"], ["datasets", "export", "one", "--out", "x"]):
        result = invoke([*args, *remote], env)
        assert "--workers is for the database file" in one_error_line(result, 2)


def test_progress_bars_stay_off_stdout(run, tmp_path, monkeypatch):
    monkeypatch.setattr(proxy.cli_datasets, "_shows_progress", lambda: True)
    created = run("datasets", "create", "qa", "--tag", "task=qa", "--json")
    assert json.loads(created.stdout)["name"] == "qa"
    out = tmp_path / "qa.jsonl"
    exported = run("datasets", "export", "qa", "--out", str(out), "--json")
    assert json.loads(exported.stdout)["manifest"]["dataset"] == "qa"
    if run.mode == "local":
        assert "creating qa" in created.stderr
    assert "exporting qa (train)" in exported.stderr


# -- validate ------------------------------------------------------------------------------------


def test_validate_an_export_and_a_broken_file(run, tmp_path):
    run("datasets", "create", "qa", "--tag", "task=qa", "--validation", "0")
    good = tmp_path / "qa.jsonl"
    assert run("datasets", "export", "qa", "--out", str(good)).exit_code == 0
    result = invoke(["datasets", "validate", str(good), "--max-tokens", "4096"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK: 12 examples (openai-chat), 0 with errors")
    assert "tokens:" in result.stdout
    report = ok_json(invoke(["datasets", "validate", str(good), "--json"]))
    assert report["ok"] is True and report["examples"] == 12 and report["file"] == str(good)

    lines = good.read_text().splitlines()
    lines[1] = "{not json"
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    lines[6] = json.dumps({"messages": [{"role": "wizard", "content": "x"}]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    failed = invoke(["datasets", "validate", str(bad)])
    assert failed.exit_code == 1
    out = failed.stdout
    assert f"{bad}: line 2: invalid_json:" in out
    assert f"{bad}: line 5: example_missing_assistant_message:" in out
    assert f"{bad}: line 7: unrecognized_role:" in out
    assert "FAILED: 12 examples (openai-chat), 3 with errors" in out
    as_json = invoke(["datasets", "validate", str(bad), "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["ok"] is False
    dpo = invoke(["datasets", "validate", str(good), "--format", "openai-dpo"])
    assert dpo.exit_code == 1 and "missing_input" in dpo.stdout


def test_validate_is_a_local_file_command(tmp_path):
    missing = invoke(["datasets", "validate", str(tmp_path / "none.jsonl")])
    assert "cannot read" in one_error_line(missing, 1)
    short = tmp_path / "short.jsonl"
    short.write_text("")
    few = invoke(["datasets", "validate", str(short)])
    assert few.exit_code == 1 and "file: too_few_examples" in few.stdout
    assert "--format must be one of" in one_error_line(
        invoke(["datasets", "validate", str(short), "--format", "hf"]), 2
    )
    assert "--max-tokens must be an integer" in one_error_line(
        invoke(["datasets", "validate", str(short), "--max-tokens", "lots"]), 2
    )
    refused = invoke(["datasets", "validate", str(short), "--database", "x.db"])
    assert refused.exit_code == 2  # click: no such option


# -- delete --------------------------------------------------------------------------------------


def test_delete(run, monkeypatch):
    run("datasets", "create", "qa", "--tag", "task=qa")
    refused = run("datasets", "delete", "qa")
    assert "pass --yes" in one_error_line(refused, 1)
    monkeypatch.setattr(proxy.cli_datasets, "_is_interactive", lambda: True)
    declined = run("datasets", "delete", "qa", input="n\n")
    assert declined.exit_code == 1 and "Delete dataset qa?" in declined.output
    assert run("datasets", "delete", "qa", input="y\n").stdout.strip() == "deleted dataset qa"
    run("datasets", "create", "qa", "--tag", "task=qa")
    deleted = ok_json(run("datasets", "delete", "qa", "--yes", "--json"))
    assert deleted == {"object": "dataset.deleted", "name": "qa", "deleted": True}
    assert one_error_line(run("datasets", "delete", "qa", "--yes"), 1) == "Error: no dataset qa"
    assert len(ok_json(run("captures", "list", "--json", "--limit", "100"))["data"]) == 20


# -- the admin API's JSON, either way ------------------------------------------------------------


def test_json_output_is_the_admin_apis(db, served):
    env = {"STILLROOM_ADMIN_TOKEN": TOKEN}
    invoke(["datasets", "create", "qa", "--tag", "task=qa", "--database", str(db)])
    with httpx.Client(base_url=served, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        api_show = admin.get("/admin/datasets/qa").json()
        api_list = admin.get("/admin/datasets").json()
    for extra in (["--database", str(db)], ["--url", served]):
        assert ok_json(invoke(["datasets", "show", "qa", "--json", *extra], env)) == api_show
        assert ok_json(invoke(["datasets", "list", "--json", *extra], env)) == api_list


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["datasets", "create", "Bad Name"], "dataset name 'Bad Name' must be"),
        (["datasets", "create", "x", "--tag", "nocolon"], "tag must look like key:value"),
        (["datasets", "create", "x", "--validation", "lots"], "--validation must be a number"),
        (["datasets", "create", "x", "--validation", "1"], "validation must be a number from"),
        (["datasets", "create", "x", "--holdout", "0.5", "--validation", "0.5"], "leave something"),
        (["datasets", "create", "x", "--holdout-by", "random"], "holdout_by must be hash or time"),
        (["datasets", "create", "x", "--dedupe", "fuzzy"], "dedupe must be exact or near"),
        (["datasets", "create", "x", "--max-tokens", "1.5"], "--max-tokens must be an integer"),
        (["datasets", "create", "x", "--max-tokens", "0"], "max_tokens must be an integer"),
        (["datasets", "create", "x", "--price-per-million", "-1"], "price_per_million must be"),
        (["datasets", "create", "x", "--where", "colour=red"], "unknown filter 'colour'"),
        (["datasets", "show", "UPPER"], "must be 1-64 characters"),
        (["datasets", "export", "x", "--out", "f", "--format", "csv"], "--format must be one of"),
        (["datasets", "export", "x", "--out", "f", "--split", "test"], "--split must be one of"),
        (["datasets", "export", "x", "--out", "/nonexistent/f.jsonl"], "no folder /nonexistent"),
        (["datasets", "export", "x", "--out", "/"], "is a folder"),
        (["datasets", "delete", "a/b", "--yes"], "must be 1-64 characters"),
        (["datasets", "create", "x", "--workers", "two"], "--workers must be an integer"),
        (["datasets", "create", "x", "--workers", "0"], "--workers must be 1-64, got 0"),
        (["datasets", "export", "x", "--out", "f", "--workers", "65"], "--workers must be 1-64"),
    ],
)
@pytest.mark.parametrize("where", ["local", "remote"])
def test_bad_input_is_one_line_and_exit_2(db, where, args, message):
    extra = ["--database", str(db)] if where == "local" else ["--url", closed_port_url()]
    result = invoke([*args, *extra], {"STILLROOM_ADMIN_TOKEN": TOKEN})
    assert message in one_error_line(result, 2)


def test_server_trouble_is_one_line(served, db):
    wrong = invoke(["datasets", "list", "--url", served, "--admin-token", "x" * 40])
    assert "refused the admin token (401)" in one_error_line(wrong, 1)
    url = closed_port_url()
    down = invoke(["datasets", "list", "--url", url, "--admin-token", TOKEN])
    assert f"cannot reach {url}" in one_error_line(down, 1)
    both = invoke(
        ["datasets", "list", "--url", served, "--database", str(db)],
        {"STILLROOM_ADMIN_TOKEN": TOKEN},
    )
    assert "not both" in one_error_line(both, 2)


def test_missing_database(tmp_path):
    path = tmp_path / "nowhere.db"
    result = invoke(["datasets", "list", "--database", str(path)])
    assert f"no database at {path}" in one_error_line(result, 1)
    assert not path.exists()
