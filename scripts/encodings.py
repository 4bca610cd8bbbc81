"""Rebuild storage/encodings/*.tiktoken.gz from the npm package `tiktoken` and check their hashes.

Stillroom counts tokens offline, so the BPE rank files of the encodings it uses ship in the repo
instead of being downloaded from openaipublic.blob.core.windows.net at run time (tiktoken's
default). They are rebuilt here from the npm package ``tiktoken`` (dqbd's WASM port), whose
``encoders/<name>.json`` holds the same ranks in a compact form: a ``bpe_ranks`` string of
lines ``"! <first rank> <base64 token> <base64 token> ..."``, the tokens taking consecutive ranks.
They are written back in tiktoken's native format (one ``<base64 token> <rank>`` line per token,
in rank order) and the sha256 of the result must equal both the ``expected_hash`` that the
installed Python tiktoken publishes in ``tiktoken_ext/openai_public.py`` and the hash pinned in
``storage/tokens.py`` (which checks it again every time it loads a file). Nothing is written
unless every hash matches.

Usage (not run in CI; needs ``npm`` and the dev venv):

    .venv/bin/python scripts/encodings.py            # npm pack tiktoken@NPM_VERSION, rebuild
    .venv/bin/python scripts/encodings.py --from DIR # an unpacked or packed (.tgz) npm package
    .venv/bin/python scripts/encodings.py --check    # verify the shipped files, write nothing
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from tiktoken_ext import openai_public

from storage.tokens import SPECS, load_encoding

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "storage" / "encodings"
NPM_VERSION = "1.0.22"


def published_hash(name: str) -> str:
    """The ``expected_hash`` tiktoken's own constructor passes for ``name`` (no download)."""
    seen: list[str] = []

    def capture(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.append(expected_hash or "")
        return {}

    with mock.patch.object(openai_public, "load_tiktoken_bpe", capture):
        openai_public.ENCODING_CONSTRUCTORS[name]()
    return seen[0]


def ranks_file(encoder_json: dict[str, Any]) -> bytes:
    """tiktoken's ``.tiktoken`` bytes from an npm ``encoders/<name>.json`` object."""
    ranks: dict[str, int] = {}
    for line in encoder_json["bpe_ranks"].split("\n"):
        if not line:
            continue
        _, first, *tokens = line.split(" ")
        for offset, token in enumerate(tokens):
            ranks[token] = int(first) + offset
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    return b"".join(
        base64.b64encode(base64.b64decode(token)) + b" %d\n" % rank for token, rank in ordered
    )


def npm_package(source: Path | None, workdir: Path) -> Path:
    """The unpacked ``package/`` folder of the npm package (packing it with npm if needed)."""
    if source is None:
        subprocess.run(
            ["npm", "pack", f"tiktoken@{NPM_VERSION}", "--pack-destination", str(workdir)],
            check=True,
            cwd=workdir,
        )
        source = workdir / f"tiktoken-{NPM_VERSION}.tgz"
    if source.is_dir():
        return source / "package" if (source / "package").is_dir() else source
    with tarfile.open(source) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="npm package folder or .tgz")
    parser.add_argument("--check", action="store_true", help="only verify the shipped files")
    args = parser.parse_args(argv)

    for name, spec in SPECS.items():
        published = published_hash(name)
        if published != spec.sha256:
            print(f"{name}: storage/tokens.py pins {spec.sha256}, tiktoken publishes {published}")
            return 1
    if args.check:
        for name in SPECS:
            load_encoding(name)  # raises EncodingFileError on a hash mismatch
            print(f"{name}: ok ({(OUT / f'{name}.tiktoken.gz').stat().st_size} bytes)")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        package = npm_package(args.source, Path(tmp))
        built: dict[str, bytes] = {}
        for name, spec in SPECS.items():
            encoder = json.loads((package / "encoders" / f"{name}.json").read_text())
            data = ranks_file(encoder)
            digest = hashlib.sha256(data).hexdigest()
            if digest != spec.sha256:
                print(f"{name}: built sha256 {digest}, expected {spec.sha256}; nothing written")
                return 1
            if encoder["special_tokens"] != spec.special_tokens:
                print(f"{name}: special tokens differ: {encoder['special_tokens']}")
                return 1
            built[name] = data
    OUT.mkdir(exist_ok=True)
    for name, data in built.items():
        target = OUT / f"{name}.tiktoken.gz"
        target.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        print(f"{name}: sha256 ok, {len(data)} bytes -> {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
