#!/usr/bin/env bash
# The wheels a lent GPU host lacks, into wheels/ (git-ignored), for `bash bench/gpu_check.sh`.
# The host has torch, timm, tokenizers and tensorboard on Python 3.12; it cannot reach PyPI.
#   bash bench/gpu_wheels.sh        # here, once; then carry `wheels` in the device run
# Versions follow this machine's venv, so both sides run the same code. gpu_check.sh installs
# wheels/*.whl on the host (never into a dev venv: these are built for the host's Python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PYV="${GPU_PYTHON_VERSION:-3.12}"
mkdir -p wheels
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# open_clip (ours vs open_clip), webdataset (the loader bench), DeepSpeed's dependencies.
"$PY" -m pip download -q --only-binary=:all: --no-deps -d wheels --python-version "$PYV" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  "open_clip_torch==$(ver open_clip_torch)" ftfy regex wcwidth "webdataset==$(ver webdataset)" braceexpand \
  hjson "pydantic==$(ver pydantic)" "pydantic-core==$(ver pydantic_core)" annotated-types typing-inspection \
  msgpack ninja psutil py-cpuinfo einops
# DeepSpeed: PyPI's only binary wheel is ancient (0.3.1); build the pure-Python wheel of ours.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w wheels "deepspeed==$(ver deepspeed)"
ls wheels
du -sh wheels
