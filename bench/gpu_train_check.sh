#!/usr/bin/env bash
# The local training path timed on the lent GPU machine (bench/gpu_train_check.py, issue #6):
# LoRA r16 and full fine-tuning of a random-weight Qwen2.5-0.5B-shaped model on 1,000 tool-task
# captures, one epoch, batch 8 x grad-accum 2, like shared/reference/training.md §b.6.
#
# 1. HERE, once (PyPI is reachable here, nothing is there):   bench/gpu_wheels.sh
# 2. From a session whose task is lent a GPU, the device tool's `run`:
#      command:   bash bench/gpu_train_check.sh
#      carry:     ["build/gpu-wheels"]
#      timeout_s: 480
#    About 3-4 minutes expected (each run is a fresh worker: imports, CUDA start-up, model load,
#    train, eval, merge and save); the check itself is cut at CHECK_TIMEOUT (400 s) so the logs
#    still come back. $OUT gets gpu_train_check.json (the summary), console.log, nvidia-smi.txt
#    and worker-<run>.log per run (at most 8 files come back: keep RUNS to 5 or fewer).
#
# Environment: RUNS (default lora16,full), CHECK_TIMEOUT (default 400), PYTHON (default
# python3, the image's, which holds CUDA torch); extra arguments go to gpu_train_check.py
# (e.g. --examples 500 --epochs 3).
#
# The carried wheels go to a --target folder on PYTHONPATH, not a venv: the image's python3 is
# itself a venv (/opt/torch/.venv), so `venv --system-site-packages` would not see its torch.
# They shadow the image's older transformers (5.17) and add trl, datasets and the rest.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

OUT=${OUT:-build/gpu-check-out}
PY=${PYTHON:-python3}
RUNS=${RUNS:-lora16,full}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-400}
WHEELS=build/gpu-wheels
SITE=/tmp/stillroom-site
mkdir -p "$OUT"

die() {
  echo "gpu_train_check: FAIL: $*"
  exit 2
}

main() {
  echo "== GPU"
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not the GPU machine"
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 ||
    die "nvidia-smi failed: $(tail -1 "$OUT/nvidia-smi.txt")"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader ||
    die "nvidia-smi sees no GPU"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
    "cuda", torch.version.cuda); sys.exit(0 if torch.cuda.is_available() else 1)' ||
    die "$PY's torch sees no CUDA device"

  echo "== wheels"
  [[ -f $WHEELS/requirements.txt ]] ||
    die "$WHEELS is missing: run bench/gpu_wheels.sh on the dev machine and carry build/gpu-wheels"
  started=$SECONDS
  if [[ ${BENCH_SITE_READY:-} != 1 ]]; then  # bench/device_check.sh installed them already
    rm -rf "$SITE"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --target "$SITE" --find-links "$WHEELS" -r "$WHEELS/requirements.txt" ||
      die "pip could not install the carried wheels"
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  echo "installed in $((SECONDS - started))s"
  "$PY" - <<'EOF' || die "the training stack does not import"
import importlib
for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers",
             "huggingface_hub", "pyarrow", "orjson", "aiosqlite", "tiktoken"):
    module = importlib.import_module(name)
    print(f"{name:16} {getattr(module, '__version__', '?'):24} {module.__file__}")
EOF

  echo "== check (runs $RUNS, cut at ${CHECK_TIMEOUT}s)"
  timeout -k 10 "$CHECK_TIMEOUT" "$PY" bench/gpu_train_check.py --require-cuda --runs "$RUNS" \
    --run-timeout 240 --out "$OUT/gpu_train_check.json" --logs "$OUT" "$@"
  rc=$?
  if ((rc == 124 || rc == 137)); then
    echo "gpu_train_check: FAIL: cut at ${CHECK_TIMEOUT}s; the runs finished before are in the JSON"
  fi
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader || true
  ls -l "$OUT"
  echo "gpu_train_check: exit $rc"
  return "$rc"
}

main "$@" 2>&1 | tee "$OUT/console.log"
exit "${PIPESTATUS[0]}"
