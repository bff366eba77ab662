#!/usr/bin/env bash
# GPU engine check (issue 4): run on a lent H100/H200 from the repository root.
#   bash bench/gpu_check.sh            # results: $OUT/gpu_results.json and a table on stdout
#   bash bench/gpu_check.sh --dry-run  # CPU-only self-check of the script (tiny, 2 steps)
# Needs torch + this package's dependencies importable by $PYTHON. On a bare GPU host (no repo
# venv) it first installs wheels/*.whl, made here by `bash bench/gpu_wheels.sh` and carried:
# DeepSpeed, webdataset, open_clip and their dependencies; without them those runs are skipped.
# Time box: runs start only while under --budget-s (default 450 s), so the whole check < 8 min.
set -euo pipefail
cd "$(dirname "$0")/.."
# The repo venv when there is one (dev machines), else the machine's python3 (the GPU host).
if [ -z "${PYTHON:-}" ]; then [ -x .venv/bin/python ] && PYTHON=.venv/bin/python || PYTHON=python3; fi
if [ "$PYTHON" = python3 ] && ls wheels/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-deps --no-index wheels/*.whl || echo "wheels/ did not install: runs needing them are skipped" >&2
fi
export OUT="${OUT:-$PWD/gpu_check_out}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DS_BUILD_OPS="${DS_BUILD_OPS:-0}"
mkdir -p "$OUT"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
"$PYTHON" bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
