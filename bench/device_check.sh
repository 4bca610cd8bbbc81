#!/usr/bin/env bash
# Everything Stillroom measures on the lent GPU machine, in one device-tool call:
#   1. bench/shadow_overhead.py --spread on its 16 cores (issue #8: what shadow mode adds to the
#      client's p50 at c=16, with the load generator, the proxy and each mock on a core of
#      their own, so the 2-vCPU VM's sharing of CPU 0 is out of the figure);
#   2. bench/gpu_train_check.sh (issue #6: the local training path on CUDA).
#
# 1. HERE, once (PyPI is reachable here, nothing is there):   bench/gpu_wheels.sh
# 2. From a session whose task is lent a GPU, the device tool's `run`:
#      command:   bash bench/device_check.sh
#      carry:     ["build/gpu-wheels"]
#      timeout_s: 560
#    $OUT gets shadow.json and shadow.log, then gpu_train_check's files (7 files in all; the
#    tool brings back at most 8).
#
# Environment: SHADOW_ROUNDS (default 3), SHADOW_DURATION (default 6 s a cell),
# SHADOW_TIMEOUT (default 170 s), SHADOW_FLAGS (default --spread), SKIP_SHADOW=1 / SKIP_TRAIN=1 to run one part only;
# CHECK_TIMEOUT and RUNS go on to gpu_train_check.sh.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

OUT=${OUT:-build/device-out}
PY=${PYTHON:-python3}
WHEELS=build/gpu-wheels
SITE=/tmp/stillroom-site
mkdir -p "$OUT"
export OUT

echo "== machine: $(nproc) CPUs, $("$PY" -c 'import sys; print(sys.version.split()[0])')"
[[ -f $WHEELS/requirements.txt ]] ||
  { echo "device_check: FAIL: $WHEELS is missing: run bench/gpu_wheels.sh here first"; exit 2; }
rm -rf "$SITE"
"$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
  --no-cache-dir --target "$SITE" --find-links "$WHEELS" -r "$WHEELS/requirements.txt" ||
  { echo "device_check: FAIL: pip could not install the carried wheels"; exit 2; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BENCH_SITE_READY=1  # gpu_train_check.sh: the wheels are in $SITE already

status=0
if [[ ${SKIP_SHADOW:-} != 1 ]]; then
  # The benchmarks call .venv/bin/stillroom; there is no venv there, so a stand-in runs the
  # same entry point with the carried packages.
  if [[ ! -x .venv/bin/stillroom ]]; then
    mkdir -p .venv/bin
    printf '#!/bin/sh\nexec %s -m proxy "$@"\n' "$(command -v "$PY")" >.venv/bin/stillroom
    chmod +x .venv/bin/stillroom
  fi
  .venv/bin/stillroom --help >/dev/null || { echo "device_check: FAIL: stillroom does not start"; exit 2; }
  echo "== shadow overhead (--spread)"
  timeout -k 10 "${SHADOW_TIMEOUT:-170}" "$PY" bench/shadow_overhead.py ${SHADOW_FLAGS---spread} \
    --rounds "${SHADOW_ROUNDS:-3}" --duration "${SHADOW_DURATION:-6}" \
    --out "$OUT/shadow.json" 2>&1 | tee "$OUT/shadow.log"
  rc=${PIPESTATUS[0]}
  echo "shadow_overhead: exit $rc"
  ((rc == 0)) || status=$rc
fi
if [[ ${SKIP_TRAIN:-} != 1 ]]; then
  echo "== gpu train check"
  bash bench/gpu_train_check.sh
  rc=$?
  ((rc == 0)) || status=$rc
fi
exit "$status"
