#!/usr/bin/env bash
# Download, HERE (where PyPI is reachable), the wheels that bench/gpu_train_check.sh installs on
# the lent GPU machine, which reaches no registry. Writes build/gpu-wheels/ (gitignored: carry it
# with the run tool, `carry: ["build/gpu-wheels"]`) and build/gpu-wheels/requirements.txt, the
# pins the GPU script installs.
#
#   bench/gpu_wheels.sh            # from the repo root; about 20 MiB, well under the 64 MiB carry
#
# Only what the GPU image lacks or holds too old for the local training path (see
# /work/.library/device/KINDS.md and shared/reference/training.md §c.4): the image has torch
# (CUDA), accelerate 1.15, tokenizers, safetensors, huggingface-hub 1.33, pyarrow, fsspec,
# pandas, xxhash, tiktoken, click, numpy, but no trl, datasets, dill, multiprocess, orjson or
# aiosqlite, and transformers 5.17 (Stillroom pins 5.23). regex and peft are carried too: the
# image's versions are unknown and transformers checks regex>=2025.10.22 at import.
# Versions are the pins of requirements/dev.txt. Wheels for CPython 3.12 (the image's python3)
# and 3.11 (this machine's, so the install can be dry-run here); pip picks the one that fits.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=build/gpu-wheels
PY=${PYTHON:-.venv/bin/python}
LOCK=requirements/dev.txt
PACKAGES=(trl datasets transformers peft dill multiprocess regex orjson aiosqlite)
# The proxy's own runtime, at the lock's versions, for the CPU benchmarks run on that machine's
# 16 cores (bench/device_check.sh: bench/shadow_overhead.py --spread).
PACKAGES+=(starlette uvicorn httptools httpx httpcore h11 anyio sniffio idna certifi
  prometheus-client click jsonschema-rs tiktoken uvloop typing-extensions)
LIMIT_MIB=60

pins=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -oiE "^${name}==[^ ]+" "$LOCK" || true)
  if [[ -z $pin ]]; then
    echo "error: $name is not pinned in $LOCK" >&2
    exit 1
  fi
  pins+=("$pin")
done

rm -rf "$DEST"
mkdir -p "$DEST"
printf '%s\n' "${pins[@]}" >"$DEST/requirements.txt"

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for version in 3.12 3.11; do
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    --python-version "$version" --implementation cp "${platforms[@]}" \
    -d "$DEST" "${pins[@]}"
done

ls -l "$DEST"
bytes=$(du -sb "$DEST" | cut -f1)
mib=$((bytes / 1024 / 1024))
echo "$DEST: $(find "$DEST" -name '*.whl' | wc -l) wheels, ${mib} MiB ($(du -sh "$DEST" | cut -f1))"
if ((mib >= LIMIT_MIB)); then
  echo "error: ${mib} MiB is over the ${LIMIT_MIB} MiB budget (the run tool carries 64 MiB in all)" >&2
  exit 1
fi
