#!/usr/bin/env bash
# Create .venv and install the project with its dev tools. Idempotent; safe to run again; quiet unless
# something fails (pip's own output goes to .venv/setup.log and is shown when a step fails).
# On a machine without an NVIDIA GPU, PyTorch's CPU index is offered next to the default one, so pip takes the
# small CPU build (2.13.0+cpu sorts above 2.13.0) instead of a multi-GB CUDA build where that index is
# reachable, and the default build where it is not. On a GPU node the default (CUDA) build is taken; set
# SWARM_TORCH_SPEC (e.g. "torch==2.9.1 --index-url URL") or preinstall torch to choose another.
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
  spec=${SWARM_TORCH_SPEC:-torch==2.13.0}
  cpu_index=${SWARM_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
  if [ -z "${SWARM_TORCH_SPEC:-}" ] && ! nvidia-smi -L >/dev/null 2>&1 && .venv/bin/python -c \
      'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)' \
      "$cpu_index" 2>/dev/null; then
    step "installing torch ($spec, the CPU build: no NVIDIA GPU here; the first time takes a minute or two)"
    spec="$spec --extra-index-url $cpu_index"
  else
    step "installing torch ($spec; the first time takes a minute or two)"
  fi
  # shellcheck disable=SC2086 (a spec may carry pip options, e.g. "torch==2.13.0 --index-url URL")
  run .venv/bin/python -m pip install -q $spec
fi
if ! .venv/bin/python -c "import swarmcli, pytest" 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
  step "installing the project and its tools into .venv"
  run .venv/bin/python -m pip install -q -e '.[dev]'
  touch .venv/.installed
fi
step "ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
