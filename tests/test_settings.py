from __future__ import annotations

import dataclasses

import pytest

from proxy.settings import Secret, Settings, SettingsError, env_name, load_settings, settings_fields


def test_defaults_match_the_design_contract():
    s = load_settings({})
    assert (s.host, s.port, s.upstream, s.database) == (
        "127.0.0.1",
        8080,
        "https://api.openai.com",
        "./stillroom.db",
    )
    assert s.admin_token is None and s.upstream_api_key is None
    assert s.max_request_bytes == 32 * 1024 * 1024


def test_environment_then_flags_override():
    env = {"STILLROOM_PORT": "9000", "STILLROOM_HOST": "0.0.0.0"}
    s = load_settings(env, port="9100")
    assert s.port == 9100 and s.host == "0.0.0.0"


def test_settings_are_frozen():
    s = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_every_problem_is_reported_one_line_each():
    env = {
        "STILLROOM_PORT": "99999",
        "STILLROOM_UPSTREAM": "ftp://x",
        "STILLROOM_IDLE_TIMEOUT": "-1",
        "STILLROOM_ADMIN_TOKEN": "short-token-canary",
    }
    with pytest.raises(SettingsError) as info:
        load_settings(env, connect_timeout="soon")
    problems = info.value.problems
    assert len(problems) == 5
    assert all("\n" not in p for p in problems)
    joined = "\n".join(problems)
    for name in (
        "STILLROOM_PORT",
        "STILLROOM_UPSTREAM",
        "STILLROOM_IDLE_TIMEOUT",
        "--connect-timeout",
    ):
        assert name in joined
    assert "short-token-canary" not in joined  # secrets are never echoed


def test_unknown_override_is_refused():
    with pytest.raises(SettingsError, match="unknown setting"):
        load_settings({}, colour="blue")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://api.openai.com", "https://api.openai.com"),
        ("https://api.openai.com/", "https://api.openai.com"),
        ("https://api.openai.com/v1", "https://api.openai.com"),
        ("http://vllm:8000/openai/v1/", "http://vllm:8000/openai"),
        ("http://azure.example/openai", "http://azure.example/openai"),
    ],
)
def test_upstream_base_url_normalisation(raw, expected):
    assert load_settings({"STILLROOM_UPSTREAM": raw}).upstream == expected


@pytest.mark.parametrize(
    "raw", ["api.openai.com", "http://", "http://h/?q=1", "http://user:pw@h", "http://h/#f"]
)
def test_bad_upstreams(raw):
    with pytest.raises(SettingsError):
        load_settings({"STILLROOM_UPSTREAM": raw})


def test_secrets_are_masked():
    token = "t" * 40
    s = load_settings({"STILLROOM_ADMIN_TOKEN": token, "STILLROOM_UPSTREAM_API_KEY": "sk-canary"})
    assert isinstance(s.admin_token, Secret) and s.admin_token.reveal() == token
    assert token not in repr(s) and "sk-canary" not in repr(s) and "sk-canary" not in str(s)
    assert s.upstream_api_key == Secret("sk-canary") and hash(s.upstream_api_key)


def test_empty_secret_means_unset():
    s = load_settings({"STILLROOM_ADMIN_TOKEN": " ", "STILLROOM_UPSTREAM_API_KEY": ""})
    assert s.admin_token is None and s.upstream_api_key is None


@pytest.mark.parametrize(("raw", "value"), [("on", True), ("0", False), ("TRUE", True)])
def test_booleans(raw, value):
    assert load_settings({"STILLROOM_ACCESS_LOG": raw}).access_log is value


def test_bad_boolean_and_log_level():
    with pytest.raises(SettingsError) as info:
        load_settings({"STILLROOM_ACCESS_LOG": "maybe", "STILLROOM_LOG_LEVEL": "loud"})
    assert len(info.value.problems) == 2


def test_every_field_is_documented_with_env_name_and_help():
    for f in settings_fields():
        assert f.metadata["help"].endswith(".")
        assert env_name(f.name) == "STILLROOM_" + f.name.upper()
    assert {f.name for f in settings_fields()} == set(Settings.__slots__)


def test_body_budget_must_fit_one_request():
    with pytest.raises(SettingsError, match="MAX_BUFFERED_BYTES"):
        load_settings(
            {"STILLROOM_MAX_REQUEST_BYTES": "1000", "STILLROOM_MAX_BUFFERED_BYTES": "999"}
        )
