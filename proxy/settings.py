"""One frozen ``Settings``, built by a pure function from a mapping, then overridden by CLI flags.

Every field carries its environment name, help text and parser in ``field(metadata=...)``; that
registry drives env loading, the CLI flags of ``stillroom serve``, ``deploy/.env.example`` and the
README settings table. ``load_settings`` is the only place that interprets configuration, and it
reports every bad value at once, one line per key.
"""

from __future__ import annotations

import dataclasses
import math
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "STILLROOM_"


class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks, error pages)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(Exception):
    """Configuration is invalid; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- parsers: str -> value, raising ValueError with a short reason ----------------------------


def _parse_host(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _parse_port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("must be between 0 and 65535")
    return port


def _parse_upstream(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; use STILLROOM_UPSTREAM_API_KEY")
    # Clients call /v1/...; a base URL that already ends in /v1 would double it.
    path = parts.path
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _parse_secret(raw: str) -> Secret | None:
    value = raw.strip()
    return Secret(value) if value else None


def _parse_admin_token(raw: str) -> Secret | None:
    value = raw.strip()
    if not value:
        return None
    if len(value) < 32:
        raise ValueError("must be at least 32 characters (use e.g. `openssl rand -hex 32`)")
    return Secret(value)


def _parse_positive_int(raw: str) -> int:
    value = int(raw.replace("_", ""))
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _parse_positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be one of on/off, true/false, 1/0")


def _parse_log_level(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("critical", "error", "warning", "info", "debug"):
        raise ValueError("must be one of critical, error, warning, info, debug")
    return value


def _parse_retention_days(raw: str) -> float | None:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of days, 0 or more (0: keep captures forever)")
    return value or None


def _parse_stored_completions(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("local", "upstream"):
        raise ValueError("must be local or upstream")
    return value


def _parse_capture_index(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("deferred", "inline"):
        raise ValueError("must be deferred or inline")
    return value


def _parse_train_base_url(raw: str) -> str | None:
    value = raw.strip().rstrip("/")
    if not value:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL (including /v1)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    return value


def _parse_models_dir(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must be a directory path")
    return value


def _parse_database(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must be a SQLite file path or a postgresql:// URL")
    return value


def _setting(
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    *,
    metavar: str = "TEXT",
    secret: bool = False,
) -> Any:
    return field(
        default=default,
        metadata={"parse": parse, "help": help, "metavar": metavar, "secret": secret},
    )


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _setting("127.0.0.1", _parse_host, "Address to listen on.", metavar="HOST")
    port: int = _setting(8080, _parse_port, "Port to listen on.", metavar="PORT")
    upstream: str = _setting(
        "https://api.openai.com",
        _parse_upstream,
        "Base URL of the real OpenAI-compatible API; /v1/... is appended. A path prefix "
        "(e.g. https://host/openai) is kept; a trailing /v1 is accepted and not doubled.",
        metavar="URL",
    )
    upstream_api_key: Secret | None = _setting(
        None,
        _parse_secret,
        "API key the proxy sends upstream when a client sends no Authorization header.",
        metavar="KEY",
        secret=True,
    )
    database: str = _setting(
        "./stillroom.db",
        _parse_database,
        "Where captures are stored: a SQLite file path or a postgresql:// URL.",
        metavar="PATH|URL",
    )
    admin_token: Secret | None = _setting(
        None,
        _parse_admin_token,
        "Bearer token for the admin API (at least 32 characters). Unset: /admin answers 404.",
        metavar="TOKEN",
        secret=True,
    )
    retention_days: float | None = _setting(
        None,
        _parse_retention_days,
        "Delete captures older than this many days, in the background (hard delete). "
        "Unset or 0: keep them forever.",
        metavar="DAYS",
    )
    stored_completions: str = _setting(
        "local",
        _parse_stored_completions,
        "Who answers OpenAI's Stored Completions API (GET/POST/DELETE /v1/chat/completions...): "
        "local serves the captures in this store, upstream forwards the calls.",
        metavar="local|upstream",
    )
    max_request_bytes: int = _setting(
        32 * 1024 * 1024,
        _parse_positive_int,
        "Largest request body forwarded; larger ones get 413 before anything goes upstream.",
        metavar="BYTES",
    )
    max_buffered_bytes: int = _setting(
        256 * 1024 * 1024,
        _parse_positive_int,
        "Request-body bytes all requests in progress may hold together; past it new uploads "
        "get a retryable 503 instead of growing memory.",
        metavar="BYTES",
    )
    connect_timeout: float = _setting(
        10.0, _parse_positive_float, "Seconds to open a connection upstream.", metavar="SECONDS"
    )
    first_byte_timeout: float = _setting(
        600.0,
        _parse_positive_float,
        "Seconds to wait for the upstream's first response byte (reasoning models think long).",
        metavar="SECONDS",
    )
    idle_timeout: float = _setting(
        300.0,
        _parse_positive_float,
        "Seconds of silence allowed between two bytes of an upstream response body.",
        metavar="SECONDS",
    )
    max_connections: int = _setting(
        1024,
        _parse_positive_int,
        "Most connections the pool keeps open to the upstream at once.",
        metavar="N",
    )
    drain_seconds: float = _setting(
        30.0,
        _parse_positive_float,
        "On SIGTERM, how long in-flight requests may run before they are cut.",
        metavar="SECONDS",
    )
    capture: bool = _setting(
        True,
        _parse_bool,
        "Record chat, Responses, completions and embeddings exchanges (off: forward only).",
        metavar="on|off",
    )
    capture_max_bytes: int = _setting(
        4 * 1024 * 1024,
        _parse_positive_int,
        "Most response bytes kept per capture; longer ones are stored cut, marked truncated.",
        metavar="BYTES",
    )
    queue_max_records: int = _setting(
        10_000,
        _parse_positive_int,
        "Captures the writer queue holds before new ones are dropped (and counted).",
        metavar="N",
    )
    queue_max_bytes: int = _setting(
        64 * 1024 * 1024,
        _parse_positive_int,
        "Bytes the writer queue holds before new captures are dropped (and counted).",
        metavar="BYTES",
    )
    batch_size: int = _setting(
        200, _parse_positive_int, "Captures written per database transaction.", metavar="N"
    )
    flush_interval: float = _setting(
        0.1,
        _parse_positive_float,
        "Seconds a capture may wait in the queue before a smaller batch is written.",
        metavar="SECONDS",
    )
    capture_index: str = _setting(
        "deferred",
        _parse_capture_index,
        "How captures reach a SQLite store. deferred: the proxy only appends each raw "
        "exchange to a spool beside the database (NAME.spool), and an indexer process at idle "
        "priority builds the records (readable a moment later, when there is CPU to spare). "
        "inline: the proxy builds and indexes each record itself (readable once written, more "
        "CPU per request). Postgres stores are always inline.",
        metavar="deferred|inline",
    )
    capture_index_max_lag: float = _setting(
        60.0,
        _parse_positive_float,
        "Deferred indexing: when the oldest unindexed capture is older than this, the indexer "
        "stops waiting for idle CPU and runs at normal priority until it has caught up by half.",
        metavar="SECONDS",
    )
    capture_index_max_backlog: int = _setting(
        1024 * 1024 * 1024,
        _parse_positive_int,
        "Deferred indexing: when more bytes of captures than this wait in the spool, the "
        "indexer runs at normal priority until half of them are indexed.",
        metavar="BYTES",
    )
    migrate_on_start: bool = _setting(
        True,
        _parse_bool,
        "Apply pending database migrations when serve starts (off: refuse to start if any).",
        metavar="on|off",
    )
    train_base_url: str | None = _setting(
        None,
        _parse_train_base_url,
        "Base URL (including /v1) of the OpenAI-compatible fine-tuning provider training jobs "
        "run on, e.g. https://api.openai.com/v1. Unset: `train start --backend openai` is off.",
        metavar="URL",
    )
    train_api_key: Secret | None = _setting(
        None,
        _parse_secret,
        "API key for the fine-tuning provider (never stored: jobs keep only the base URL).",
        metavar="KEY",
        secret=True,
    )
    models_dir: str = _setting(
        "./stillroom-models",
        _parse_models_dir,
        "Directory where local training jobs write their data, adapter, merged model, metrics "
        "and model card (one subdirectory per job).",
        metavar="DIR",
    )
    routes_refresh: float = _setting(
        0.5,
        _parse_positive_float,
        "Seconds between two checks of the store for route changes made by other replicas.",
        metavar="SECONDS",
    )
    train_poll_interval: float = _setting(
        5.0,
        _parse_positive_float,
        "Seconds between two polls of the training jobs in progress.",
        metavar="SECONDS",
    )
    metrics_refresh: float = _setting(
        15.0,
        _parse_positive_float,
        "Seconds between two reads of the training job counts /metrics shows "
        "(stillroom_training_jobs).",
        metavar="SECONDS",
    )
    log_level: str = _setting(
        "info", _parse_log_level, "Log level: debug, info, warning, error.", metavar="LEVEL"
    )
    access_log: bool = _setting(
        False,
        _parse_bool,
        "Log one line per request (method, path, status). Query strings are never logged.",
        metavar="on|off",
    )


def settings_fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Settings)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def load_settings(environ: Mapping[str, str], **overrides: str) -> Settings:
    """Build Settings from ``STILLROOM_*`` variables, then raw flag values in ``overrides``.

    Both sources are strings and go through the same parser. Raises ``SettingsError`` listing
    every problem, one line each.
    """
    known = {f.name for f in settings_fields()}
    problems = [f"unknown setting {name!r}" for name in overrides if name not in known]
    values: dict[str, Any] = {}
    for f in settings_fields():
        source, raw = "", None
        if f.name in overrides:
            source, raw = "--" + f.name.replace("_", "-"), overrides[f.name]
        elif env_name(f.name) in environ:
            source, raw = env_name(f.name), environ[env_name(f.name)]
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            reason = str(exc) if not str(exc).startswith(("invalid literal", "could not")) else ""
            shown = "(hidden)" if f.metadata["secret"] else repr(raw)
            problems.append(f"{source}={shown} is invalid: {reason or 'not a valid value'}")
    if not problems:
        settings = Settings(**values)
        if settings.max_buffered_bytes < settings.max_request_bytes:
            problems.append(
                f"STILLROOM_MAX_BUFFERED_BYTES={settings.max_buffered_bytes} is invalid: must be "
                f"at least STILLROOM_MAX_REQUEST_BYTES ({settings.max_request_bytes})"
            )
    if problems:
        raise SettingsError(problems)
    return Settings(**values)
