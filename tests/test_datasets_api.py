"""``/admin/datasets`` end to end: a real proxy in front of `stillroom mock`, captures made with
the official SDK, datasets created, listed, shown, exported (streamed) and deleted over HTTP,
and the streamed export compared with the file `stillroom datasets export` writes locally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from proxy.admin.openapi import openapi_document
from proxy.cli import cli
from storage.export import FORMATS
from tests._admin import AUTH, TOKEN, UNKNOWN_ID, Admin, Seeded, make_captures, wait_for_captures


@pytest.fixture
def admin(start_proxy, mock_url, tmp_path):
    db = tmp_path / "datasets.db"
    with (
        start_proxy(
            upstream=mock_url, database=str(db), admin_token=TOKEN, flush_interval=0.02
        ) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=30) as http,
    ):
        yield Admin(base, http, db)


@pytest.fixture
def seeded(admin) -> Seeded:
    ids = make_captures(admin.base)
    wait_for_captures(admin, 8)
    return ids


def assert_error(response: httpx.Response, status: int, param: str | None = "-") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param != "-":
        assert error["param"] == param, error
    return error


def create(admin: Admin, **body: Any) -> dict[str, Any]:
    response = admin.http.post("/admin/datasets", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def local_export(admin: Admin, tmp_path: Path, name: str, fmt: str, split: str) -> Path:
    """The file `stillroom datasets export` writes from the same database file."""
    out = tmp_path / f"local-{name}-{fmt}-{split}.jsonl"
    args = ["datasets", "export", name, "--format", fmt, "--split", split, "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--database", str(admin.db)], prog_name="stillroom")
    assert result.exit_code == 0, result.output
    return out


# -- create, list, show, delete ------------------------------------------------------------------


def test_create_list_show_delete(admin, seeded):
    body = {"name": "summaries-v1", "filter": {"tag": "task:summarize"}, "validation": 0}
    dataset = create(admin, **body)
    assert dataset["object"] == "dataset" and dataset["name"] == "summaries-v1"
    assert dataset["spec"]["filter"] == {"tag": ["task:summarize"]}
    assert dataset["considered"] == 3  # news, the tool call, the failed one
    assert dataset["rejected"] == {"not_completed": 1}
    assert dataset["counts"] == {"train": 2, "validation": 0, "holdout": 0}
    assert dataset["tokens"]["train"]["examples"] == 2
    assert len(dataset["content_hash"]) >= 32
    everything = create(admin, name="everything", holdout=0.2, dedupe="near", max_tokens=4096.0)
    assert everything["spec"]["max_tokens"] == 4096 and everything["spec"]["dedupe"] == "near"

    listed = admin.ok("GET", "/admin/datasets")
    assert listed["object"] == "list"
    assert [d["name"] for d in listed["data"]] == ["everything", "summaries-v1"]  # newest first
    assert listed["data"][1] == dataset
    assert admin.ok("GET", "/admin/datasets/summaries-v1") == dataset

    deleted = admin.ok("DELETE", "/admin/datasets/summaries-v1")
    assert deleted == {"object": "dataset.deleted", "name": "summaries-v1", "deleted": True}
    assert_error(admin.http.get("/admin/datasets/summaries-v1"), 404, "name")
    assert_error(admin.http.delete("/admin/datasets/summaries-v1"), 404, "name")
    assert [d["name"] for d in admin.ok("GET", "/admin/datasets")["data"]] == ["everything"]
    assert len(admin.captures()) == 8  # deleting a dataset never touches captures
    again = create(admin, **body)  # the name is free again; same inputs, same snapshot
    assert again["content_hash"] == dataset["content_hash"]


def test_a_taken_name_is_409(admin, seeded):
    create(admin, name="taken")
    error = assert_error(admin.http.post("/admin/datasets", json={"name": "taken"}), 409, "name")
    assert error["code"] == "dataset_exists" and error["type"] == "invalid_request_error"
    assert len(admin.ok("GET", "/admin/datasets")["data"]) == 1


BAD_SPECS = [
    (b"{not json", None),
    (b"[]", None),
    (b"{}", "name"),
    (b'{"name": ""}', "name"),
    (b'{"name": "Capitals"}', "name"),
    (b'{"name": "-dash-first"}', "name"),
    (b'{"name": 7}', "name"),
    (b'{"name": "x", "colour": "red"}', "colour"),
    (b'{"name": "x", "filter": []}', "filter"),
    (b'{"name": "x", "filter": {"colour": "red"}}', "filter.colour"),
    (b'{"name": "x", "filter": {"status": "200"}}', "filter.status"),
    (b'{"name": "x", "filter": {"has_tool_calls": "true"}}', "filter.has_tool_calls"),
    (b'{"name": "x", "filter": {"tag": "nocolon"}}', "filter.tag"),
    (b'{"name": "x", "filter": {"since": "yesterday"}}', "filter.since"),
    (b'{"name": "x", "filter": {"search": "\\"unbalanced"}}', "filter.search"),
    (b'{"name": "x", "validation": 1}', "validation"),
    (b'{"name": "x", "validation": -0.1}', "validation"),
    (b'{"name": "x", "validation": "0.1"}', "validation"),
    (b'{"name": "x", "holdout": true}', "holdout"),
    (b'{"name": "x", "validation": 0.5, "holdout": 0.5}', "holdout"),
    (b'{"name": "x", "holdout_by": "random"}', "holdout_by"),
    (b'{"name": "x", "dedupe": "fuzzy"}', "dedupe"),
    (b'{"name": "x", "max_tokens": 0}', "max_tokens"),
    (b'{"name": "x", "max_tokens": 10.5}', "max_tokens"),
    (b'{"name": "x", "price_per_million": -1}', "price_per_million"),
]


@pytest.mark.parametrize(("body", "param"), BAD_SPECS)
def test_bad_specs_are_400_naming_the_field(admin, seeded, body, param):
    headers = {"content-type": "application/json"}
    response = admin.http.post("/admin/datasets", content=body, headers=headers)
    error = assert_error(response, 400, param)
    assert error["type"] == "invalid_request_error"
    assert admin.ok("GET", "/admin/datasets")["data"] == []  # nothing half-made


def test_a_spec_over_the_cap_is_413(admin):
    body = {"name": "big", "filter": {"search": "x" * (1024 * 1024)}}
    assert_error(admin.http.post("/admin/datasets", json=body), 413)


def test_unknown_and_malformed_names_are_404(admin):
    for name in ("nothing-here", "Capitals", "a" * 65, "-x"):
        for method, path in (
            ("GET", f"/admin/datasets/{name}"),
            ("DELETE", f"/admin/datasets/{name}"),
            ("GET", f"/admin/datasets/{name}/export"),
            ("GET", f"/admin/datasets/{name}/export/manifest"),
        ):
            error = assert_error(admin.http.request(method, path), 404, "name")
            assert error["code"] == "not_found"


def test_unknown_query_parameters_are_400(admin, seeded):
    create(admin, name="d")
    assert_error(admin.http.get("/admin/datasets", params={"limit": 3}), 400, "limit")
    assert_error(admin.http.get("/admin/datasets/d", params={"x": 1}), 400, "x")
    export = "/admin/datasets/d/export"
    assert_error(admin.http.get(export, params={"format": "csv"}), 400, "format")
    assert_error(admin.http.get(export, params={"split": "test"}), 400, "split")
    assert_error(admin.http.get(export, params={"tag": "a:b"}), 400, "tag")
    twice = [("split", "train"), ("split", "validation")]
    assert_error(admin.http.get(export + "/manifest", params=twice), 400, "split")


# -- export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_stream_is_the_cli_file_byte_for_byte(admin, seeded, tmp_path, fmt):
    dataset = create(admin, name="all", validation=0.25)
    for split in ("train", "validation"):
        params = {"format": fmt, "split": split}
        with admin.http.stream("GET", "/admin/datasets/all/export", params=params) as response:
            assert response.status_code == 200
            streamed = response.read()
            headers = response.headers
        assert headers["content-type"] == "application/jsonl"
        assert headers["transfer-encoding"] == "chunked"
        assert headers["x-stillroom-content-hash"] == dataset["content_hash"]
        assert headers["x-stillroom-examples"] == str(dataset["counts"][split])
        assert f'filename="all.{split}.{fmt}.jsonl"' in headers["content-disposition"]
        assert 'rel="describedby"' in headers["link"]
        assert streamed == local_export(admin, tmp_path, "all", fmt, split).read_bytes()
        if fmt != "openai-dpo":
            assert streamed.count(b"\n") == dataset["counts"][split]
        for line in streamed.splitlines():
            assert isinstance(json.loads(line), dict)


def test_the_default_is_openai_chat_train(admin, seeded, tmp_path):
    create(admin, name="all")
    streamed = admin.http.get("/admin/datasets/all/export").content
    assert streamed == local_export(admin, tmp_path, "all", "openai-chat", "train").read_bytes()
    assert b'"weight":1' in streamed


def test_the_manifest_is_the_one_the_cli_writes(admin, seeded, tmp_path):
    create(admin, name="all", validation=0)
    params = {"format": "openai-chat", "split": "train"}
    manifest = admin.ok("GET", "/admin/datasets/all/export/manifest", params=params)
    out = local_export(admin, tmp_path, "all", "openai-chat", "train")
    written = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["file"]["name"] == "all.train.openai-chat.jsonl"
    assert written["file"]["name"] == out.name
    for field in ("created_at", "file"):
        manifest.pop(field), written.pop(field)
    assert manifest == written
    local_file = json.loads(Path(str(out) + ".manifest.json").read_text())["file"]
    served = admin.ok("GET", "/admin/datasets/all/export/manifest", params=params)["file"]
    assert {**served, "name": None} == {**local_file, "name": None}  # bytes, sha256, encoding


def test_a_changed_dataset_is_409(admin, seeded, tmp_path):
    create(admin, name="all", validation=0)
    admin.ok("DELETE", f"/admin/captures/{seeded.translate}")
    for path in ("/admin/datasets/all/export", "/admin/datasets/all/export/manifest"):
        error = assert_error(admin.http.get(path), 409)
        assert error["code"] == "dataset_changed"
    assert admin.ok("GET", "/admin/datasets/all")["name"] == "all"  # still listed
    edited = create(admin, name="edited", validation=0)
    corrected = {"choices": [{"message": {"role": "assistant", "content": "Otters!"}}]}
    admin.ok(
        "PATCH",
        f"/admin/captures/{seeded.summarize_news}",
        json={"corrected_response": corrected},
    )
    assert edited["name"] == "edited"
    assert assert_error(admin.http.get("/admin/datasets/edited/export"), 409)["code"] == (
        "dataset_changed"
    )


def test_a_change_found_after_the_first_bytes_cuts_the_stream(admin, seeded, monkeypatch):
    import proxy.admin.datasets

    create(admin, name="all", validation=0)
    admin.ok("DELETE", f"/admin/captures/{seeded.other_model}")
    monkeypatch.setattr(proxy.admin.datasets, "PREFETCH_BYTES", 1)  # send headers at once
    with admin.http.stream("GET", "/admin/datasets/all/export") as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_an_empty_split_is_an_empty_stream(admin, seeded):
    create(admin, name="all", validation=0)
    response = admin.http.get("/admin/datasets/all/export", params={"split": "holdout"})
    assert response.status_code == 200 and response.content == b""
    assert response.headers["x-stillroom-examples"] == "0"


# -- the document --------------------------------------------------------------------------------


def test_the_dataset_routes_are_documented():
    paths = openapi_document()["paths"]
    assert set(paths["/admin/datasets"]) == {"get", "post"}
    assert "201" in paths["/admin/datasets"]["post"]["responses"]
    assert "409" in paths["/admin/datasets"]["post"]["responses"]
    assert set(paths["/admin/datasets/{name}"]) == {"parameters", "get", "delete"}
    export = paths["/admin/datasets/{name}/export"]["get"]
    assert "application/jsonl" in export["responses"]["200"]["content"]
    assert {p["name"] for p in export["parameters"]} == {"format", "split"}
    assert "/admin/datasets/{name}/export/manifest" in paths


# -- store trouble (the admin app alone, over ASGI) ----------------------------------------------


class BrokenStore:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise self.exc

        return fail


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["unavailable", "closed"])
async def test_store_trouble_is_an_openai_shaped_503(store):
    from proxy.admin.api import create_admin_app
    from proxy.settings import Secret
    from storage.errors import StoreUnavailable

    broken = BrokenStore(StoreUnavailable("database disk image is malformed"))
    app = create_admin_app(Secret(TOKEN), lambda: broken if store == "unavailable" else None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin", headers=AUTH) as c:
        for method, path, body in [
            ("GET", "/admin/datasets", None),
            ("POST", "/admin/datasets", {"name": "x"}),
            ("GET", "/admin/datasets/x", None),
            ("DELETE", "/admin/datasets/x", None),
            ("GET", "/admin/datasets/x/export", None),
            ("GET", "/admin/datasets/x/export/manifest", None),
        ]:
            response = await c.request(method, path, json=body)
            error = assert_error(response, 503)
            assert error["code"] == "store_unavailable" and "malformed" not in error["message"]


def test_every_dataset_route_needs_the_token(admin):
    with httpx.Client(base_url=admin.base) as http:
        for method, path in [
            ("GET", "/admin/datasets"),
            ("POST", "/admin/datasets"),
            ("GET", "/admin/datasets/x"),
            ("DELETE", "/admin/datasets/x"),
            ("GET", "/admin/datasets/x/export"),
            ("GET", "/admin/datasets/x/export/manifest"),
            ("GET", f"/admin/datasets/{UNKNOWN_ID}/export/"),
        ]:
            response = http.request(method, path, json={"name": "x"})
            assert response.status_code == 401, (method, path)
            assert TOKEN not in response.text
