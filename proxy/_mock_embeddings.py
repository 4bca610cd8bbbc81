"""Embeddings for the mock upstream: `POST /v1/embeddings`, float or base64, deterministic.

Each input's vector is a window of a fixed pseudo-random table (start picked by the sha256 of the
input), scaled to unit length and rounded to float32. `encoding_format: "base64"` sends the same
float32 values as little-endian bytes, so a client that decodes base64 gets exactly the numbers
that `"float"` would have sent.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import sys
from typing import Any

import orjson

from proxy._mock_payloads import InvalidRequest, model_of, text_chars

_TABLE_SIZE = 16_384
MAX_DIMENSIONS = 8_192


class EmbeddingTable:
    """The shared random table with prefix sums of squares, so a window's norm is O(1)."""

    def __init__(self) -> None:
        raw = array.array(
            "H", hashlib.shake_128(b"stillroom-mock-embeddings").digest(2 * _TABLE_SIZE)
        )
        self.values = [(u - 32768) / 32768 for u in raw]
        self.squares = [0.0]
        for value in self.values:
            self.squares.append(self.squares[-1] + value * value)

    def vector(self, item: Any, dimensions: int) -> array.array[float]:
        seed = hashlib.sha256(orjson.dumps(item)).digest()
        start = int.from_bytes(seed[:4], "big") % (_TABLE_SIZE - dimensions + 1)
        norm = math.sqrt(self.squares[start + dimensions] - self.squares[start]) or 1.0
        return array.array("f", [v / norm for v in self.values[start : start + dimensions]])


def _inputs(body: dict[str, Any]) -> list[Any]:
    value = body.get("input")
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]
        if all((isinstance(v, str) and v) or (isinstance(v, list) and v) for v in value):
            return value
    raise InvalidRequest("'input' must be a non-empty string or array.", "input")


def _dimensions(body: dict[str, Any], model: str) -> int:
    value = body.get("dimensions")
    if value is None:
        return 3072 if "large" in model else 1536
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIMENSIONS:
        raise InvalidRequest(
            f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}.", "dimensions"
        )
    return value


def embeddings(body: dict[str, Any], table: EmbeddingTable) -> bytes:
    model = model_of(body)
    inputs = _inputs(body)
    dimensions = _dimensions(body, model)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector = table.vector(item, dimensions)
        if encoding == "base64":
            if sys.byteorder == "big":
                vector.byteswap()
            embedding: Any = base64.b64encode(vector.tobytes()).decode()
        else:
            embedding = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(i) if isinstance(i, list) else max(1, text_chars(i) // 4) for i in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})
