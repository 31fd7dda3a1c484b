#!/usr/bin/env bash
# Create .venv and install the project with its dev tools. Idempotent; safe to run again; quiet unless
# something fails (pip's own output goes to .venv/setup.log and is shown when a step fails).
# torch is pinned to the CPU build first so pip never pulls a multi-GB CUDA build on a CPU box;
# on a GPU node set SWARM_TORCH_SPEC (e.g. "torch==2.9.1") or preinstall torch before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=.venv/setup.log

step() { printf 'setup: %s\n' "$*"; }
run() {  # run a command with its output in the log; show the log's end if it fails
  if ! "$@" >>"$LOG" 2>&1; then
    printf 'setup: FAILED: %s\n' "$*" >&2
    tail -40 "$LOG" >&2
    exit 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  step "creating the virtualenv .venv ($("$PY" --version 2>&1))"
  "$PY" -m venv .venv
fi
: >"$LOG"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  step "installing torch (${SWARM_TORCH_SPEC:-torch==2.13.0}; the first time takes a minute or two)"
  # shellcheck disable=SC2086 (a spec may carry pip options, e.g. "torch==2.13.0 --index-url URL")
  run .venv/bin/python -m pip install -q ${SWARM_TORCH_SPEC:-torch==2.13.0}
fi
if ! .venv/bin/python -c "import swarmcli, pytest" 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
  step "installing the project and its tools into .venv"
  run .venv/bin/python -m pip install -q -e '.[dev]'
  touch .venv/.installed
fi
step "ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
