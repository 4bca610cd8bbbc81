"""Capture tags and switches from the request: the ``X-Stillroom-*`` headers, a base-URL prefix
(``/t/task=summarize/v1/...``) and the body's own ``metadata`` object.

Header and prefix syntax: ``key=value`` entries separated by commas, whitespace around them
ignored. An entry without ``=`` or with an empty key is refused (400, before anything goes
upstream). The prefix form also accepts ``capture=off``, the same switch as the
``X-Stillroom-Capture: off`` header, for apps that cannot set headers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from proxy.errors import InvalidRequest

MAX_TAGS = 64
MAX_TAG_LENGTH = 256
PREFIX = "/t/"
RESERVED = "stillroom."  # keys the proxy sets itself (storage.examples: SOURCE_TAG…)
SOURCES = ("eval", "judge", "shadow")  # X-Stillroom-Source: the proxy's own traffic
SOURCE_TAG = RESERVED + "source"  # storage.examples.SOURCE_TAG: never trained on
SERVED_BY_TAG = RESERVED + "served_by"  # storage.examples.SERVED_BY_TAG
ROUTE_TAG = RESERVED + "route"
ROUTE_DECISION_TAG = RESERVED + "route_decision"


def parse_tags(raw: str, source: str) -> dict[str, str]:
    """``"k=v, k2=v2"`` as a dict; ``InvalidRequest`` naming ``source`` when malformed."""
    tags: dict[str, str] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise InvalidRequest(
                f"Invalid tag {entry!r} in {source}: expected comma-separated key=value entries.",
                param=source,
            )
        if key.startswith(RESERVED):
            raise InvalidRequest(
                f"Tag key {key[:40]!r} in {source}: keys starting with {RESERVED!r} are the "
                "proxy's own.",
                param=source,
            )
        if len(key) > MAX_TAG_LENGTH or len(value) > MAX_TAG_LENGTH:
            raise InvalidRequest(
                f"Tag in {source} is longer than {MAX_TAG_LENGTH} characters.", param=source
            )
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"More than {MAX_TAGS} tags in {source}.", param=source)
    return tags


def parse_source(raw: str) -> str:
    """``X-Stillroom-Source``: which of the proxy's own kinds of traffic this is."""
    value = raw.strip().lower()
    if value not in SOURCES:
        raise InvalidRequest(
            f"X-Stillroom-Source must be one of {', '.join(SOURCES)}, not {raw[:40]!r}.",
            param="X-Stillroom-Source",
        )
    return value


def parse_capture_switch(raw: str, source: str) -> bool:
    """``on``/``off`` (case-insensitive) as a bool; anything else is refused."""
    value = raw.strip().lower()
    if value in ("on", "true", "1"):
        return True
    if value in ("off", "false", "0"):
        return False
    raise InvalidRequest(f"{source} must be 'on' or 'off', not {raw!r}.", param=source)


def split_prefix(path: str) -> tuple[str, str] | None:
    """``/t/<tags>/v1/rest`` → (``<tags>`` decoded, ``/v1/rest``); None if not that form."""
    if not path.startswith(PREFIX):
        return None
    rest = path[len(PREFIX) :]
    cut = rest.find("/v1/")
    if cut < 0:
        return None
    return unquote(rest[:cut]).replace("/", ","), rest[cut:]


def metadata_tags(body: Any) -> dict[str, str]:
    """The request body's ``metadata`` object as tags (values as strings); keys starting with
    ``stillroom.`` are left out (the proxy's own)."""
    if not isinstance(body, dict):
        return {}
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return {}
    tags: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(key, str) and key and not key.startswith(RESERVED):
            tags[key] = value if isinstance(value, str) else str(value)
    return tags
