"""Files for the mock upstream: ``POST /v1/files`` (multipart), ``GET /v1/files[/{id}]``.

Uploaded content is kept in memory (at most ``MAX_FILES`` files, the oldest dropped first) so the
fine-tuning jobs (``proxy._mock_fine_tuning``) can read it. File objects are OpenAI's
(``{"id": "file-…", "object": "file", "bytes", "created_at", "filename", "purpose", "status"}``).
The multipart body is parsed with the standard library's ``email`` parser: the mock has no web
framework and needs no extra dependency.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from proxy._mock_payloads import InvalidRequest

MAX_FILES = 1_000
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "expires_at": None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


def _form_fields(content_type: bytes, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a multipart/form-data body."""
    if not content_type.lower().startswith(b"multipart/form-data"):
        raise InvalidRequest("The request must be multipart/form-data.")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise InvalidRequest("The multipart body could not be parsed.")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields


class FileStore:
    def __init__(self) -> None:
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._seq = 0

    def get(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def upload(self, content_type: bytes, body: bytes) -> dict[str, Any]:
        fields = _form_fields(content_type, body)
        if "file" not in fields or fields["file"][0] is None:
            raise InvalidRequest("Missing required parameter: 'file'.", "file")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"'{purpose}' is not one of {list(PURPOSES)} - 'purpose'", "purpose"
            )
        filename, content = fields["file"]
        assert filename is not None
        if purpose == "fine-tune" and not filename.endswith(".jsonl"):
            raise InvalidRequest("Invalid file format for Fine-Tuning API. Must be .jsonl", "file")
        self._seq += 1
        digest = hashlib.sha256(b"file%d" % self._seq).hexdigest()[:24]
        stored = StoredFile(f"file-{digest}", filename, purpose, content, int(time.time()))
        self._files[stored.id] = stored
        while len(self._files) > MAX_FILES:
            self._files.popitem(last=False)
        return stored.as_json()

    def listing(self) -> dict[str, Any]:
        data = [f.as_json() for f in reversed(self._files.values())]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }
