"""Query parameters and bodies of the Stored Completions API, validated (pure, no I/O).

Everything here raises ``storage.query.QueryError`` (a 400) naming the bad parameter. Limits
are OpenAI's: pages of 1-100 (default 20, oldest first), metadata of at most 16 pairs with keys
up to 64 and values up to 512 characters. Unknown parameters are refused rather than ignored.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

import orjson

from storage.query import Order, QueryError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_QUERY_FIELDS = 100
_LIST_PARAMS = ("model", "after", "limit", "order")
_PAGE_PARAMS = ("after", "limit", "order")
_METADATA_PREFIX = "metadata["

Params = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class PageQuery:
    after: str | None = None
    limit: int = DEFAULT_LIMIT
    order: Order = "asc"


@dataclass(frozen=True, slots=True)
class ListQuery:
    page: PageQuery
    tags: tuple[tuple[str, str], ...] = ()  # metadata[key]=value, all must match
    model: str | None = None


def query_params(raw: bytes) -> Params:
    """The query string as (name, value) pairs, in order."""
    try:
        return urllib.parse.parse_qsl(
            raw.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError:
        raise QueryError(f"at most {MAX_QUERY_FIELDS} query parameters") from None


def parse_list_query(params: Params) -> ListQuery:
    """``model``, ``metadata[key]=value`` (AND-ed), ``after``, ``limit``, ``order``."""
    tags: dict[str, str] = {}
    plain: Params = []
    for name, value in params:
        if name.startswith(_METADATA_PREFIX) and name.endswith("]"):
            key = name[len(_METADATA_PREFIX) : -1]
            _check_metadata_pair(key, value)
            if tags.get(key, value) != value:
                raise QueryError(
                    f"metadata[{key}] given twice with different values", param="metadata"
                )
            tags[key] = value
        else:
            plain.append((name, value))
    if len(tags) > MAX_METADATA_PAIRS:
        raise QueryError(f"at most {MAX_METADATA_PAIRS} metadata filters", param="metadata")
    values = _single_values(plain, _LIST_PARAMS)
    model = values.get("model")
    if model is not None and not 1 <= len(model) <= 256:
        raise QueryError("model must be 1-256 characters", param="model")
    return ListQuery(page=_page(values), tags=tuple(tags.items()), model=model)


def parse_page_query(params: Params) -> PageQuery:
    """``after``, ``limit``, ``order`` (the messages list)."""
    return _page(_single_values(params, _PAGE_PARAMS))


def refuse_params(params: Params) -> None:
    """Routes that take no query parameters."""
    _single_values(params, ())


def parse_update_body(body: bytes) -> dict[str, str]:
    """The update body ``{"metadata": {...} | null}`` as the new tag map (null clears it)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise QueryError("We could not parse the JSON body of your request.") from None
    if not isinstance(value, dict):
        raise QueryError("The request body must be a JSON object.")
    for name in value:
        if name != "metadata":
            raise QueryError(f"Unrecognized request argument supplied: {name:.80}", param=name)
    if "metadata" not in value:
        raise QueryError("Missing required parameter: 'metadata'.", param="metadata")
    metadata = value["metadata"]
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise QueryError("metadata must be an object of string values", param="metadata")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise QueryError(f"metadata holds at most {MAX_METADATA_PAIRS} pairs", param="metadata")
    for key, item in metadata.items():
        _check_metadata_pair(key, item)
    return dict(metadata)


def _check_metadata_pair(key: object, value: object) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
        raise QueryError(f"metadata keys must be 1-{MAX_METADATA_KEY} characters", param="metadata")
    if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
        raise QueryError(
            f"metadata[{key}] must be a string of at most {MAX_METADATA_VALUE} characters",
            param="metadata",
        )


def _single_values(params: Params, known: tuple[str, ...]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in params:
        if name not in known:
            raise QueryError(f"Unrecognized request argument supplied: {name:.80}", param=name)
        if name in values:
            raise QueryError(f"{name} given more than once", param=name)
        values[name] = value
    return values


def _page(values: dict[str, str]) -> PageQuery:
    after = values.get("after")
    if after is not None and not after:
        raise QueryError("after must be an id", param="after")
    raw_limit = values.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise QueryError(
                f"limit must be an integer 1-{MAX_LIMIT}, got {raw_limit!r:.80}", param="limit"
            )
        limit = int(raw_limit)
    order = values.get("order", "asc")
    if order not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, got {order!r:.80}", param="order")
    return PageQuery(after=after, limit=limit, order="asc" if order == "asc" else "desc")
