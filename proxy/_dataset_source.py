"""Where ``stillroom datasets …`` gets its data: the database file, or a running server.

``LocalDatasets`` works on the ``Store`` through ``storage.datasets`` and ``storage.export``;
``RemoteDatasets`` calls the admin API's ``/admin/datasets`` routes (``proxy.admin.datasets``).
Both extend the captures' sources (``proxy._capture_source``: opening, migrations, errors, the
admin token) and answer in the admin API's JSON, so a command prints the same either way, and
both write the same export file and manifest, byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from proxy._capture_source import (
    JSON,
    BadUsage,
    CaptureSource,
    CommandFailed,
    LocalSource,
    RemoteSource,
)

if TYPE_CHECKING:
    import httpx

Progress = Callable[[int, int], None]  # (done, to do)


class DatasetNotFound(CommandFailed):
    def __init__(self, name: str) -> None:
        super().__init__(f"no dataset {name}")


class DatasetSource(CaptureSource, Protocol):
    async def create_dataset(
        self, spec: JSON, progress: Progress | None, workers: int | None = None
    ) -> JSON:
        """Build a dataset from ``POST /admin/datasets``' body; its JSON (``Dataset.to_json``)."""
        ...

    async def list_datasets(self) -> JSON:
        """``{"object": "list", "data": [dataset…]}``, newest first."""
        ...

    async def get_dataset(self, name: str) -> JSON:
        """The dataset's JSON; raises ``DatasetNotFound``."""
        ...

    async def delete_dataset(self, name: str) -> JSON:
        """``{"object": "dataset.deleted", "name", "deleted": true}``; or ``DatasetNotFound``."""
        ...

    async def export_dataset(
        self,
        name: str,
        fmt: str,
        split: str,
        out: Path,
        progress: Progress | None,
        workers: int | None = None,
    ) -> JSON:
        """Write the split to ``out`` and its manifest beside it; the manifest."""
        ...


class LocalDatasets(LocalSource):
    """Datasets in the database file itself."""

    async def create_dataset(
        self, spec: JSON, progress: Progress | None, workers: int | None = None
    ) -> JSON:
        from proxy.admin.params import parse_body_spec
        from storage.datasets import DatasetExists, create_dataset

        checked = parse_body_spec(spec)
        try:
            dataset = await create_dataset(self._store, checked, progress=progress, workers=workers)
        except DatasetExists:
            raise CommandFailed(
                f"a dataset named {checked.name} exists already (datasets are immutable: pick "
                "another name, or delete that one first)"
            ) from None
        return dataset.to_json()

    async def list_datasets(self) -> JSON:
        datasets = await self._store.list_datasets()
        return {"object": "list", "data": [dataset.to_json() for dataset in datasets]}

    async def get_dataset(self, name: str) -> JSON:
        dataset = await self._store.get_dataset(name)
        if dataset is None:
            raise DatasetNotFound(name)
        return dataset.to_json()

    async def delete_dataset(self, name: str) -> JSON:
        if not await self._store.delete_dataset(name):
            raise DatasetNotFound(name)
        return {"object": "dataset.deleted", "name": name, "deleted": True}

    async def export_dataset(
        self,
        name: str,
        fmt: str,
        split: str,
        out: Path,
        progress: Progress | None,
        workers: int | None = None,
    ) -> JSON:
        from storage.datasets import DatasetChanged
        from storage.export import DatasetNotFound as NoDataset
        from storage.export import ExportError, export_dataset

        try:
            return await export_dataset(
                self._store, name, fmt, split, out, progress=progress, workers=workers
            )
        except NoDataset:
            raise DatasetNotFound(name) from None
        except ExportError as exc:
            raise BadUsage(str(exc)) from None
        except DatasetChanged as exc:
            raise _changed(name, exc) from None
        except OSError as exc:
            raise CommandFailed(f"cannot write {out}: {exc.strerror or exc}") from None


def _local_only(workers: int | None) -> None:
    if workers is not None:
        raise BadUsage("--workers is for the database file (--database); a server picks its own")


def _changed(name: str, exc: Exception) -> CommandFailed:
    return CommandFailed(
        f"dataset {name} no longer matches its captures ({exc}); nothing was written: create "
        "a new dataset"
    )


class RemoteDatasets(RemoteSource):
    """Datasets through a running server's admin API."""

    async def create_dataset(
        self, spec: JSON, progress: Progress | None, workers: int | None = None
    ) -> JSON:
        _local_only(workers)
        return await self._call("POST", "/admin/datasets", body=spec)

    async def list_datasets(self) -> JSON:
        return await self._call("GET", "/admin/datasets")

    async def get_dataset(self, name: str) -> JSON:
        return await self._call("GET", f"/admin/datasets/{name}", missing=DatasetNotFound(name))

    async def delete_dataset(self, name: str) -> JSON:
        path = f"/admin/datasets/{name}"
        return await self._call("DELETE", path, missing=DatasetNotFound(name))

    async def export_dataset(
        self,
        name: str,
        fmt: str,
        split: str,
        out: Path,
        progress: Progress | None,
        workers: int | None = None,
    ) -> JSON:
        """Stream the export into ``out`` (through a temporary file: a cut stream leaves
        nothing), check it against the server's manifest, and write that manifest beside it."""
        import httpx

        _local_only(workers)
        if out.suffix.lower() == ".parquet":
            raise BadUsage(
                "over --url the export is JSONL; Parquet is written by a local export "
                "(--database) with the stillroom[hf] extra"
            )
        path = f"/admin/datasets/{name}/export"
        params = httpx.QueryParams({"format": fmt, "split": split})
        partial = out.with_name(f".{out.name}.part")
        try:
            with self.transport_errors():
                async with self._client.stream("GET", path, params=params) as response:
                    if not response.is_success:
                        await response.aread()
                        self.answer(response, path, DatasetNotFound(name))
                    total = _count_header(response.headers.get("x-stillroom-examples"))
                    with open(partial, "wb") as file:
                        received = await self._receive(response, file, total, progress)
            manifest = await self._call(
                "GET", f"{path}/manifest", params=params, missing=DatasetNotFound(name)
            )
            file_info = manifest.get("file")
            if not isinstance(file_info, dict) or file_info.get("sha256") != received:
                raise CommandFailed(
                    f"the export from {self.url} does not match its manifest (the dataset "
                    "changed while it was read?); nothing was written"
                )
            manifest["file"] = {**file_info, "name": out.name}
            os.replace(partial, out)
            write_manifest(manifest_path(out), manifest)
        except OSError as exc:
            raise CommandFailed(f"cannot write {out}: {exc.strerror or exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        return manifest

    async def _receive(
        self, response: httpx.Response, file: BinaryIO, total: int, progress: Progress | None
    ) -> str:
        """Write the body to ``file``; its sha256."""
        import hashlib

        import httpx

        digest = hashlib.sha256()
        lines = 0
        try:
            async for chunk in response.aiter_bytes():
                file.write(chunk)
                digest.update(chunk)
                if progress is not None:
                    lines += chunk.count(b"\n")
                    progress(lines, max(total, lines))
        except (httpx.RemoteProtocolError, httpx.ReadError):
            raise CommandFailed(
                f"the export from {self.url} was cut short (the dataset changed while it was "
                "read, or the server stopped); nothing was written"
            ) from None
        return digest.hexdigest()


def _count_header(value: str | None) -> int:
    return int(value) if value is not None and value.isascii() and value.isdigit() else 0


def manifest_path(out: Path) -> Path:
    """Where an export to ``out`` puts its manifest: ``out`` + ``.manifest.json``."""
    from storage.export import MANIFEST_SUFFIX

    return out.with_name(out.name + MANIFEST_SUFFIX)


def write_manifest(path: Path, manifest: JSON) -> None:
    """The manifest as ``storage.export.export_dataset`` writes it (orjson, indented)."""
    import orjson

    partial = path.with_name(path.name + ".part")
    try:
        partial.write_bytes(
            orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def check_out(out: str) -> Path:
    """``--out FILE``: a file in a folder that exists (the manifest goes beside it)."""
    path = Path(out)
    if path.is_dir():
        raise BadUsage(f"--out {out} is a folder: give a file name")
    if not path.parent.is_dir():
        raise BadUsage(f"--out {out}: no folder {path.parent}")
    return path
