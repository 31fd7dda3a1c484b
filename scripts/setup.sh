#!/usr/bin/env bash
# Create .venv and install the project with its dev tools. Idempotent; safe to run again.
# torch is pinned to the CPU build first so pip never pulls a multi-GB CUDA build on a CPU box;
# on a GPU node set SWARM_TORCH_SPEC (e.g. "torch==2.9.1") or preinstall torch before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${SWARM_TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e '.[dev]'
